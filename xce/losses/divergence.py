"""Kullback-Leibler divergence with PyTorch's argument order (input = log-probabilities)."""

from __future__ import annotations

from .._arrays import axis_length
from .._namespace import Array, Namespace, compute_dtype, is_lazy, namespace
from .._reduce import per_count, reduce_loss
from .._validate import check_floating, check_reduction, check_same_device

__all__ = ["kl_div"]


def kl_div(
    input: Array,
    target: Array,
    reduction: str = "mean",
    log_target: bool = False,
    *,
    xp: Namespace | None = None,
) -> Array:
    r"""Pointwise Kullback-Leibler divergence :math:`D_{KL}(P \,\|\, Q)` with ``input = log Q``.

    PyTorch's ``torch.nn.functional.kl_div``: ``input`` holds log-probabilities
    :math:`\log q`, ``target`` probabilities :math:`p` (or :math:`\log p` with
    ``log_target=True``):

    .. math::
       l_i = p_i\,(\log p_i - \log q_i), \qquad
       l_i = e^{t_i}\,(t_i - \log q_i) \ \text{with} \ t = \log p \ (\texttt{log\_target}).

    An element with :math:`p_i = 0` contributes exactly 0 (:math:`0 \log 0 = 0`), also
    where :math:`\log q_i = -\infty` (PyTorch gives NaN there). Negative target values
    give NaN. Reductions: ``"none"``, ``"sum"``, ``"mean"`` (over all elements — not the
    KL divergence of a batch of distributions), and ``"batchmean"``: the sum divided by
    ``input.shape[0]``, the mathematically correct batch KL divergence. Kullback and
    Leibler, "On Information and Sufficiency" (1951).

    Parameters
    ----------
    input : array
        Log-probabilities :math:`\log q`, any shape. Half precision is computed in float32.
    target : array
        Probabilities (or log-probabilities with ``log_target``), broadcastable with ``input``.
    reduction : {"mean", "batchmean", "sum", "none"}, default "mean"
    log_target : bool, default False
    xp : namespace, optional

    Returns
    -------
    array
        ``input``'s library, device and dtype; the broadcast shape for ``"none"``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> log_q = np.log(np.asarray([[0.5, 0.5], [0.9, 0.1]]))
    >>> p = np.asarray([[1.0, 0.0], [0.5, 0.5]])
    >>> round(float(xce.kl_div(log_q, p, reduction="batchmean")), 4)
    0.602
    """
    xp = namespace(("input", "target"), input, target, xp=xp)
    reduction = check_reduction(reduction, ("none", "mean", "sum", "batchmean"))
    if not isinstance(log_target, bool):
        raise TypeError(f"log_target must be a bool; got {type(log_target).__name__} {log_target!r}.")
    check_floating(input, "input", xp=xp)
    check_floating(target, "target", xp=xp)
    try:
        _broadcast_shape(tuple(input.shape), tuple(target.shape))
    except ValueError:
        raise ValueError(
            f"target of shape {tuple(target.shape)} does not broadcast with input of shape {tuple(input.shape)}."
        ) from None
    if not is_lazy(input):
        check_same_device(input, target, "target")

    dtype = compute_dtype(input.dtype, xp=xp)
    log_q = input if input.dtype == dtype else xp.astype(input, dtype)
    t = target if target.dtype == dtype else xp.astype(target, dtype)
    if log_target:
        loss = xp.exp(t) * (t - log_q)
    else:
        # Double where: zero-target elements never evaluate log 0 or 0·(-inf) (masked log q), so
        # neither the value nor the gradient sees a NaN; a negative target still gives NaN.
        zero = t == 0.0
        loss = xp.where(zero, 0.0, t * (xp.log(xp.where(zero, 1.0, t)) - xp.where(zero, 0.0, log_q)))
    if reduction == "batchmean":
        # PyTorch: input.size(0); the plain sum for 0-d input. Counted from input where symbolic.
        batch = axis_length(input, 0, xp=xp) if input.ndim else 1
        total = reduce_loss(loss, "sum", xp=xp)
        out = per_count(total, batch, xp=xp)
    else:
        out = reduce_loss(loss, reduction, xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def _broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i in range(max(len(a), len(b))):
        x = a[len(a) - 1 - i] if i < len(a) else 1
        y = b[len(b) - 1 - i] if i < len(b) else 1
        if x != y and 1 not in (x, y) and None not in (x, y):  # None: symbolic, checked when the graph runs
            raise ValueError
        out.append(y if x == 1 else x)
    return tuple(reversed(out))
