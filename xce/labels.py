"""Dense label helpers: ``one_hot`` and ``smooth_labels`` (both label-smoothing conventions)."""

from __future__ import annotations

from typing import Any

from ._engine import reads_values
from ._namespace import Array, Namespace, compute_dtype, device_of, index_dtype, namespace, on_input_device
from ._targets import class_ids
from ._validate import check_choice, check_floating, check_fraction, check_integer, check_values_in

__all__ = ["one_hot", "smooth_labels"]

SMOOTHING_MODES = ("uniform", "off_target")


@on_input_device
def one_hot(
    target: Array,
    num_classes: int,
    *,
    dtype: Any = None,
    axis: int = -1,
    xp: Namespace | None = None,
) -> Array:
    r"""Class indices to one-hot vectors: :math:`o_{\dots,c} = [\,y_\dots = c\,]`.

    The classes go on a new axis ``axis`` of the result (``-1``: last, as in
    ``torch.nn.functional.one_hot``; ``1`` gives PyTorch's ``(N, C, d1, ...)`` class layout).

    Parameters
    ----------
    target : array
        Integer class indices in ``[0, num_classes)``, any shape.
    num_classes : int >= 1
    dtype : dtype, optional
        Of the result. Default: the namespace's default floating dtype, so the result can be
        smoothed and passed as a probability target directly (PyTorch returns int64).
    axis : int, default -1
        Position of the class axis in the result, in ``[-(target.ndim + 1), target.ndim]``.
    xp : namespace, optional

    Returns
    -------
    array
        ``target``'s shape with a ``num_classes`` axis inserted at ``axis``.

    Raises
    ------
    IndexError
        An index outside ``[0, num_classes)`` (eager arrays). Under JAX and Dask that
        position's vector is all NaN for a floating ``dtype`` (all zeros for an integer one).

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.one_hot(np.asarray([0, 2]), 3)
    array([[1., 0., 0.],
           [0., 0., 1.]])
    """
    xp = namespace(("target",), target, xp=xp)
    num_classes = check_integer(num_classes, "num_classes")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1; got {num_classes}.")
    axis = check_integer(axis, "axis")
    ndim = target.ndim + 1
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis={axis} is out of range for a result with {ndim} dimensions (target shape {tuple(target.shape)})."
        )
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(f"target must hold integer class indices; got dtype {target.dtype}. Cast it first.")
    device = device_of(target)
    if dtype is None:
        dtype = xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]
    lazy = not reads_values(target)
    info = xp.iinfo(target.dtype)
    can_be_invalid = info.min < 0 or info.max >= num_classes  # skip comparisons a dtype cannot fail
    # Compare in the indexing dtype: int8 cannot hold num_classes=200 (torch and JAX would wrap it).
    wide = target if target.dtype == index_dtype(xp) else xp.astype(target, index_dtype(xp))
    if not lazy and can_be_invalid:
        check_values_in(wide, 0, num_classes - 1, "target", xp=xp, error=IndexError,
                        hint=f" one_hot needs indices in [0, {num_classes - 1}] for num_classes={num_classes}.")
    axis %= ndim
    classes = class_ids(num_classes, ndim, axis, xp=xp, device=device)
    index = xp.expand_dims(wide, axis=axis)
    out = xp.astype(index == classes, dtype)
    if lazy and can_be_invalid and xp.isdtype(dtype, "real floating"):
        # Unread values: an out-of-range index gives a NaN vector, not a plausible all-zero one.
        invalid = (index < 0) | (index >= num_classes)
        out = xp.where(invalid, float("nan"), out)
    return out


@on_input_device
def smooth_labels(
    labels: Array,
    smoothing: float,
    *,
    mode: str = "uniform",
    axis: int = -1,
    xp: Namespace | None = None,
) -> Array:
    r"""Label smoothing of dense (one-hot or probability) labels along the class axis.

    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision" (2016).
    With :math:`C` classes along ``axis`` and ε = ``smoothing``:

    * ``mode="uniform"`` (PyTorch, TensorFlow/Keras, optax ``smooth_labels``):
      :math:`q = (1-\varepsilon)\,y + \varepsilon/C` — the target class of a one-hot row
      gets :math:`1-\varepsilon+\varepsilon/C`, every other class :math:`\varepsilon/C`.
    * ``mode="off_target"`` (fairseq, Megatron-LM): the target class of a one-hot row gets
      :math:`1-\varepsilon`, every other class :math:`\varepsilon/(C-1)`. For any labels this
      is the uniform mode with :math:`\varepsilon' = \varepsilon\,C/(C-1)`.

    Both keep each row's total mass. ``cross_entropy(..., label_smoothing=ε,
    label_smoothing_mode=mode)`` on index targets equals ``cross_entropy`` on
    ``smooth_labels(one_hot(y), ε, mode=mode)`` without weights.

    Parameters
    ----------
    labels : array
        Floating labels with classes along ``axis``. Half precision is computed in float32.
    smoothing : float in [0, 1]
    mode : {"uniform", "off_target"}, default "uniform"
    axis : int, default -1
        The class axis.
    xp : namespace, optional

    Returns
    -------
    array
        ``labels``' shape, library, device and dtype.

    Examples
    --------
    >>> import numpy as np, xce
    >>> y = np.asarray([[0.0, 1.0, 0.0, 0.0]])
    >>> xce.smooth_labels(y, 0.2)
    array([[0.05, 0.85, 0.05, 0.05]])
    >>> np.round(xce.smooth_labels(y, 0.3, mode="off_target"), 4)
    array([[0.1, 0.7, 0.1, 0.1]])
    """
    xp = namespace(("labels",), labels, xp=xp)
    eps = check_fraction(smoothing, "smoothing")
    mode = check_choice(mode, "mode", SMOOTHING_MODES)
    check_floating(labels, "labels", xp=xp)
    if labels.ndim == 0:
        raise ValueError("labels must have a class axis; got a 0-d array.")
    axis = check_integer(axis, "axis")
    if not -labels.ndim <= axis < labels.ndim:
        raise ValueError(f"axis={axis} is out of range for labels with {labels.ndim} dimensions.")
    n_classes = labels.shape[axis]
    eps = uniform_equivalent(eps, mode, n_classes, "smoothing")
    dtype = compute_dtype(labels.dtype, xp=xp)
    y = labels if labels.dtype == dtype else xp.astype(labels, dtype)
    on, off = smoothing_coefficients(eps, n_classes)
    out = on * y + off
    return out if out.dtype == labels.dtype else xp.astype(out, labels.dtype)


def smoothing_coefficients(eps: Any, n_classes: int) -> tuple[Any, Any]:
    """``(1 - ε, ε / C)``: the mass label smoothing leaves on the target and puts on every
    class (uniform convention). The one place these two numbers are computed: cross entropy's
    forward, gradient, fused linear and vocab-parallel paths and :func:`smooth_labels` use it."""
    return 1.0 - eps, eps / n_classes


def uniform_equivalent(eps: Any, mode: str, n_classes: int, name: str) -> Any:
    """The uniform-mode ε that a ``mode`` smoothing of ``eps`` amounts to with ``n_classes``."""
    if mode == "uniform" or (isinstance(eps, float) and eps == 0.0):
        return eps
    if n_classes < 2:
        raise ValueError(
            f"{name}={eps} in the 'off_target' mode needs at least 2 classes (it spreads ε over the C-1 others); "
            f"got {n_classes}. Use the 'uniform' mode or no smoothing."
        )
    return eps * n_classes / (n_classes - 1)
