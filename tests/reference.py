"""Float64 oracles: ``torch.nn.functional`` on NumPy inputs, plus input rounding per dtype."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def rounded(x: np.ndarray, dtype_name: str) -> np.ndarray:
    """``x`` rounded to ``dtype_name`` and back to float64: the exact input a backend sees."""
    return torch.from_numpy(np.asarray(x, dtype=np.float64)).to(getattr(torch, dtype_name)).double().numpy()


def _t(a):
    return None if a is None else torch.from_numpy(np.asarray(a))


def cross_entropy(x, target, weight=None, axis=None, **kwargs) -> np.ndarray:
    x, target = np.asarray(x, dtype=np.float64), np.asarray(target)
    if axis is not None and x.ndim > 1:  # torch's class axis is 1
        if target.shape == x.shape:
            target = np.moveaxis(target, axis, 1)
        x = np.moveaxis(x, axis, 1)
    t = _t(target if np.issubdtype(target.dtype, np.floating) else target.astype(np.int64))
    return F.cross_entropy(_t(x), t, weight=_t(weight), **kwargs).numpy()


def nll_loss(x, target, weight=None, **kwargs) -> np.ndarray:
    return F.nll_loss(_t(np.asarray(x, dtype=np.float64)), _t(np.asarray(target).astype(np.int64)),
                      weight=_t(weight), **kwargs).numpy()


def cross_entropy_grad(x, target, weight=None, **kwargs) -> np.ndarray:
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64)).requires_grad_(True)
    t = _t(target if np.issubdtype(np.asarray(target).dtype, np.floating) else np.asarray(target).astype(np.int64))
    F.cross_entropy(xt, t, weight=_t(weight), **kwargs).sum().backward()
    return xt.grad.numpy()


# --- binary, divergence, focal / poly-1 / z-loss, label helpers (float64 torch formulas) -------


def _f(a):
    if a is None or torch.is_tensor(a):  # tensors pass through, so `grad` can differentiate these oracles
        return a
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _out(t):
    return t if t.requires_grad else t.numpy()


def grad(fn, x, *args, **kwargs) -> np.ndarray:
    """d sum(fn(x, ...)) / dx by torch autograd through the float64 oracle ``fn``."""
    xt = torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    fn(xt, *args, **kwargs).sum().backward()
    return xt.grad.numpy()


def binary_cross_entropy(p, y, weight=None, reduction="mean", label_smoothing=0.0):
    y = np.asarray(y, dtype=np.float64) * (1 - label_smoothing) + label_smoothing / 2  # Keras convention
    return _out(F.binary_cross_entropy(_f(p), _f(y), weight=_f(weight), reduction=reduction))


def binary_cross_entropy_with_logits(x, y, weight=None, reduction="mean", pos_weight=None, label_smoothing=0.0):
    y = np.asarray(y, dtype=np.float64) * (1 - label_smoothing) + label_smoothing / 2
    return _out(F.binary_cross_entropy_with_logits(_f(x), _f(y), weight=_f(weight), reduction=reduction,
                                              pos_weight=_f(pos_weight)))


def multilabel_soft_margin_loss(x, y, weight=None, reduction="mean"):
    return _out(F.multilabel_soft_margin_loss(_f(x), _f(y), weight=_f(weight), reduction=reduction))


def kl_div(log_q, target, reduction="mean", log_target=False):
    import warnings

    with warnings.catch_warnings():  # torch warns that "mean" is not "batchmean"
        warnings.simplefilter("ignore")
        return _out(F.kl_div(_f(log_q), _f(target), reduction=reduction, log_target=log_target))


def _reduce(loss, reduction, denominator=None):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (loss.numel() if denominator is None else denominator.sum())


def sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, verbatim in float64."""
    inputs, targets = _f(x), _f(y)
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _out(_reduce(loss, reduction))


def _index_parts(x, target, weight, ignore_index, axis):
    """(log_softmax with classes last, safe one-hot, w_y, kept mask) for (N, C, ...) or axis=-1 inputs."""
    x = _f(x)
    if axis is None and x.ndim > 1:
        x = torch.movedim(x, 1, -1)
    t = torch.from_numpy(np.asarray(target).astype(np.int64))
    kept = t != ignore_index
    safe = torch.where(kept, t, 0)
    logp = torch.log_softmax(x, dim=-1)
    onehot = F.one_hot(safe, x.shape[-1]).double()
    w = torch.ones(x.shape[-1], dtype=torch.float64) if weight is None else _f(weight)
    w_y = torch.where(kept, w[safe], 0.0)
    return logp, onehot, w, w_y, kept


def softmax_focal_loss(x, target, gamma=2.0, weight=None, ignore_index=-100, reduction="mean", axis=None):
    logp, onehot, _, w_y, kept = _index_parts(x, target, weight, ignore_index, axis)
    logp_y = (logp * onehot).sum(-1)
    loss = torch.where(kept, -w_y * (1 - logp_y.exp()) ** gamma * logp_y, 0.0)
    return _out(_reduce(loss, reduction, w_y))


def poly1_cross_entropy(x, target, epsilon=1.0, weight=None, ignore_index=-100, reduction="mean", axis=None):
    """optax.poly_loss_cross_entropy on one-hot labels (CE + ε·Σ labels·(1-softmax)), class-weighted."""
    logp, onehot, _, w_y, kept = _index_parts(x, target, weight, ignore_index, axis)
    per = -(onehot * logp).sum(-1) + epsilon * (onehot * (1 - logp.exp())).sum(-1)
    loss = torch.where(kept, w_y * per, 0.0)
    return _out(_reduce(loss, reduction, w_y))


def cross_entropy_off_target(x, target, eps, weight=None, ignore_index=-100, reduction="mean", axis=None):
    """fairseq's convention written out: 1-ε on the target, ε/(C-1) elsewhere, PyTorch's weighted mean."""
    logp, onehot, w, w_y, kept = _index_parts(x, target, weight, ignore_index, axis)
    n = logp.shape[-1]
    q = onehot * (1 - eps) + (1 - onehot) * eps / (n - 1)
    loss = torch.where(kept, -(w * q * logp).sum(-1), 0.0)
    return _out(_reduce(loss, reduction, w_y))


def z_loss_term(x, target, z, ignore_index=-100, reduction="mean", axis=None):
    """PaLM's z·logsumexp(x)², averaged over the non-ignored positions (unweighted)."""
    *_, kept = _index_parts(x, target, None, ignore_index, axis)
    xx = _f(x)
    if axis is None and xx.ndim > 1:
        xx = torch.movedim(xx, 1, -1)
    loss = torch.where(kept, z * torch.logsumexp(xx, dim=-1) ** 2, 0.0)
    return _out(_reduce(loss, reduction, kept.double()))


def one_hot(target, num_classes, axis=-1):
    out = F.one_hot(torch.from_numpy(np.asarray(target).astype(np.int64)), num_classes).double()
    return _out(torch.movedim(out, -1, axis))


def smooth_labels(y, eps, mode="uniform", axis=-1):
    y = np.moveaxis(np.asarray(y, dtype=np.float64), axis, -1)
    n = y.shape[-1]
    out = (1 - eps) * y + eps / n if mode == "uniform" else y * (1 - eps) + (1 - y) * eps / (n - 1)
    return np.moveaxis(out, -1, axis)
