"""Cross entropy on top of the blocked engine (``xce._engine.row_stats``), index and
probability targets, 2-D ``(N, C)`` logits, ``reduction="mean"``.

A prototype of how ``xce.cross_entropy`` calls the engine on eager backends; the
benchmarks time it next to the current ``xce.cross_entropy``.
"""

from __future__ import annotations

from typing import Any

from xce._engine import row_stats


def engine_cross_entropy(
    x: Any, target: Any, weight: Any = None, ignore_index: int = -100, label_smoothing: float = 0.0, *, xp: Any
) -> Any:
    n_classes = x.shape[1]
    dtype = xp.float32 if xp.finfo(x.dtype).bits < 32 else x.dtype
    w = None if weight is None else xp.astype(weight, dtype)
    eps = float(label_smoothing)
    if tuple(target.shape) == tuple(x.shape):  # probabilities
        st = row_stats(x, xp=xp, weight=w, probs=target, smoothing=eps)
        loss = st.prob_mass * st.lse - st.prob_dot
        return xp.astype(xp.mean(loss), x.dtype)
    ignored = target == ignore_index
    safe = xp.where(ignored, xp.zeros_like(target), target)
    st = row_stats(x, safe, xp=xp, weight=w, class_sum=eps > 0.0)
    loss = st.lse - st.target  # -log p[y]
    w_y = None if w is None else xp.take(w, safe, axis=0)
    if w_y is not None:
        loss = w_y * loss
    if eps > 0.0:
        total_w = float(n_classes) if w is None else xp.sum(w)
        loss = (1.0 - eps) * loss + (eps / n_classes) * (total_w * st.lse - st.class_sum)
    zero = xp.zeros_like(loss)
    loss = xp.where(ignored, zero, loss)
    denom = xp.where(ignored, zero, xp.ones_like(loss) if w_y is None else w_y)
    return xp.astype(xp.sum(loss) / xp.sum(denom), x.dtype)
