"""``LossStats.lse`` is differentiable, from ``cross_entropy`` and ``linear_cross_entropy`` alike.

A z-loss of one's own built from the statistics (``loss + c·mean(lse²)`` over the kept
positions, as Cut Cross-Entropy's users write it) must train: its gradient equals the same
expression through the unfused formula (the logits written out, ``torch.logsumexp``) in float64,
and equals ``z_loss=c`` where the two coincide ("mean" without class or sample weights, "sum").
PyTorch's fused linear Function returned ``lse`` as a non-differentiable output: the user's term
silently had no gradient (an error of ~0.05 in ``dW``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xce

IGNORE = -100
C = 0.1  # the user's z-loss coefficient


def _case(seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(2, 9, 6))
    w = rng.normal(size=(13, 6)) * 0.8
    b = rng.normal(size=13) * 0.3
    t = rng.integers(0, 13, size=(2, 9))
    t[0, 2] = t[1, 6] = t[1, 7] = IGNORE
    cw = rng.uniform(0.5, 2.0, size=13)
    sw = rng.uniform(0.0, 2.0, size=(2, 9))
    return h, w, b, t, cw, sw


def _kept(t, shift):
    return (t[..., 1:] if shift else t) != IGNORE


def _user_term(lse, kept):
    return C * (lse[kept] ** 2).mean()


def _grads(fn, h, w, b):
    H, W, B = (torch.tensor(a, requires_grad=True) for a in (h, w, b))
    fn(H, W, B).backward()
    return [a.grad.numpy() for a in (H, W, B)]


def _assert_same(got, expected):
    for a, e in zip(got, expected):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)


def _unfused(H, W, B, t, kw, shift, use_loss=True):
    """The user's objective through the written-out logits: xce.cross_entropy of ``cap(x)/T`` for
    the loss (itself tested against PyTorch), ``torch.logsumexp`` for the statistic."""
    x = H @ W.T + B
    if kw.get("softcap") is not None:
        x = kw["softcap"] * torch.tanh(x / kw["softcap"])
    x = x / kw.get("temperature", 1.0)
    tt, sw = torch.tensor(t), kw.get("sample_weight")
    if shift:
        x, tt, sw = x[:, :-1], tt[:, 1:], None if sw is None else sw[:, 1:]
    loss = xce.cross_entropy(x, tt, kw.get("weight"), reduction=kw.get("reduction", "mean"), axis=-1,
                             sample_weight=sw, ignore_index=IGNORE)
    term = _user_term(torch.logsumexp(x, -1), tt != IGNORE)
    return loss.sum() + term if use_loss else term


SCORING = [{}, {"softcap": 3.0, "temperature": 0.8}]


@pytest.mark.parametrize("check_values", [True, False])  # ignored rows dropped / swept and masked
@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("scoring", SCORING)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_user_z_loss_trains(reduction, scoring, weighted, shift, check_values):
    h, w, b, t, cw, sw = _case()
    kw = dict(scoring, reduction=reduction)
    if weighted:
        kw.update(weight=torch.tensor(cw), sample_weight=torch.tensor(sw))
    kept = _kept(t, shift)

    def fused(H, W, B):
        loss, stats = xce.linear_cross_entropy(H, W, torch.tensor(t), linear_bias=B, shift=shift, block_rows=5,
                                               return_stats=True, **kw)
        assert stats.lse.requires_grad
        assert not (stats.z_loss.requires_grad or stats.entropy.requires_grad or stats.accuracy.requires_grad)
        return loss.sum() + _user_term(stats.lse, torch.from_numpy(kept))

    with xce.config(check_values=check_values):
        got = _grads(fused, h, w, b)
    _assert_same(got, _grads(lambda H, W, B: _unfused(H, W, B, t, kw, shift), h, w, b))


@pytest.mark.parametrize("scoring", SCORING)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_lse_alone(reduction, scoring):
    """Only ``stats.lse`` differentiated (the loss unused: no incoming gradient for it)."""
    h, w, b, t, _, _ = _case(seed=1)
    kw = dict(scoring, reduction=reduction)

    def fused(H, W, B):
        _, stats = xce.linear_cross_entropy(H, W, torch.tensor(t), linear_bias=B, block_rows=4, return_stats=True,
                                            **kw)
        return _user_term(stats.lse, torch.from_numpy(t != IGNORE))

    _assert_same(_grads(fused, h, w, b),
                 _grads(lambda H, W, B: _unfused(H, W, B, t, kw, False, use_loss=False), h, w, b))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_user_z_loss_equals_z_loss_argument(reduction):
    """Where they coincide (no class or sample weights): the user's ``c·mean(lse²)`` ("mean",
    over the kept positions) or ``c·Σ lse²`` ("sum") is ``z_loss=c``."""
    h, w, b, t, _, _ = _case(seed=2)
    kept = torch.from_numpy(t != IGNORE)

    def user(H, W, B):
        loss, stats = xce.linear_cross_entropy(H, W, torch.tensor(t), linear_bias=B, reduction=reduction,
                                               return_stats=True, block_rows=5)
        z = stats.lse[kept] ** 2
        return loss + C * (z.mean() if reduction == "mean" else z.sum())

    def builtin(H, W, B):
        return xce.linear_cross_entropy(H, W, torch.tensor(t), linear_bias=B, reduction=reduction, z_loss=C,
                                        block_rows=5)

    _assert_same(_grads(user, h, w, b), _grads(builtin, h, w, b))


@pytest.mark.parametrize("delegate", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_user_z_loss_equals_z_loss_argument(reduction, delegate):
    h, w, b, t, _, _ = _case(seed=3)
    x = np.moveaxis(h @ w.T + b, -1, 1)  # (2, 13, 9): classes on axis 1
    kept = torch.from_numpy(t != IGNORE)

    def grad(fn):
        X = torch.tensor(x, requires_grad=True)
        with xce.config(delegate=delegate):
            fn(X).backward()
        return X.grad.numpy()

    def user(X):
        loss, stats = xce.cross_entropy(X, torch.tensor(t), reduction=reduction, return_stats=True)
        z = stats.lse[kept] ** 2
        return loss + C * (z.mean() if reduction == "mean" else z.sum())

    def written_out(X):
        z = torch.logsumexp(X, 1)[kept] ** 2
        return F.cross_entropy(X, torch.tensor(t), reduction=reduction) + C * (z.mean() if reduction == "mean"
                                                                                else z.sum())

    expected = grad(written_out)
    np.testing.assert_allclose(grad(user), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad(lambda X: xce.cross_entropy(X, torch.tensor(t), reduction=reduction, z_loss=C)),
                               expected, rtol=1e-10, atol=1e-12)


def test_jax_user_z_loss_from_both_losses():
    """JAX (the unfused formula for the linear loss): the user's term equals ``z_loss=``."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    h, w, b, t, _, _ = _case(seed=4)
    kept = jnp.asarray(t != IGNORE)
    tj = jnp.asarray(t)

    def user_linear(h_, w_, b_):
        loss, stats = xce.linear_cross_entropy(h_, w_, tj, linear_bias=b_, return_stats=True)
        return loss + C * jnp.sum(jnp.where(kept, stats.lse**2, 0.0)) / jnp.sum(kept)

    def builtin_linear(h_, w_, b_):
        return xce.linear_cross_entropy(h_, w_, tj, linear_bias=b_, z_loss=C)

    args = tuple(jnp.asarray(a) for a in (h, w, b))
    for got, expected in zip(jax.grad(user_linear, argnums=(0, 1, 2))(*args),
                             jax.grad(builtin_linear, argnums=(0, 1, 2))(*args)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-10, atol=1e-12)

    def user_ce(x):
        loss, stats = xce.cross_entropy(x, tj, axis=-1, return_stats=True)
        return loss + C * jnp.sum(jnp.where(kept, stats.lse**2, 0.0)) / jnp.sum(kept)

    x = jnp.asarray(h @ w.T + b)
    np.testing.assert_allclose(np.asarray(jax.grad(user_ce)(x)),
                               np.asarray(jax.grad(lambda v: xce.cross_entropy(v, tj, axis=-1, z_loss=C))(x)),
                               rtol=1e-10, atol=1e-12)
