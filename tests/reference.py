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
