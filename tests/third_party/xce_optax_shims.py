"""optax's classification-loss names (``optax.losses``, optax 0.2.8), as the vendored
``optax_classification_test.py`` imports them in place of ``optax.losses._classification``:
the names in ``MAPPED`` are the product's :mod:`xce.optax` (computed by xce); the names in
``NOT_MAPPED`` have no xce counterpart and are optax's own functions, re-exported unchanged
so that the rest of the test file still runs (the reason is the value).
"""

from __future__ import annotations

import optax.losses as _optax_losses

from xce.optax import *  # noqa: F403  (the mapped names)
from xce.optax import MAPPED
from xce.optax import __all__ as _MAPPED_NAMES

_NO_MARGIN = "xce has cross-entropy-family losses only; no margin (hinge / perceptron) losses"
_NO_SPARSEMAX = "xce has no sparsemax (Fenchel-Young) losses; its losses normalise with softmax / sigmoid"
_NO_CTC = "xce has no CTC loss (a sum over alignments, not a per-position cross entropy)"
_NO_GKL = (
    "xce.kl_div is the KL divergence of normalised distributions (PyTorch's kl_div); the generalised KL "
    "of unnormalised measures adds sum(exp(log_p) - q), which no xce argument expresses"
)

NOT_MAPPED: dict[str, str] = {
    "hinge_loss": _NO_MARGIN,
    "perceptron_loss": _NO_MARGIN,
    "multiclass_hinge_loss": _NO_MARGIN,
    "multiclass_perceptron_loss": _NO_MARGIN,
    "sparsemax_loss": _NO_SPARSEMAX,
    "multiclass_sparsemax_loss": _NO_SPARSEMAX,
    "generalized_kl_divergence": _NO_GKL,
    "convex_kl_divergence": "deprecated optax alias of generalized_kl_divergence; " + _NO_GKL,
    "ctc_loss": _NO_CTC,
    "ctc_loss_with_forward_probs": _NO_CTC,
}

# The not-mapped names are optax's own functions.
hinge_loss = _optax_losses.hinge_loss
perceptron_loss = _optax_losses.perceptron_loss
multiclass_hinge_loss = _optax_losses.multiclass_hinge_loss
multiclass_perceptron_loss = _optax_losses.multiclass_perceptron_loss
sparsemax_loss = _optax_losses.sparsemax_loss
multiclass_sparsemax_loss = _optax_losses.multiclass_sparsemax_loss
generalized_kl_divergence = _optax_losses.generalized_kl_divergence
convex_kl_divergence = _optax_losses.convex_kl_divergence
ctc_loss = _optax_losses.ctc_loss
ctc_loss_with_forward_probs = _optax_losses.ctc_loss_with_forward_probs



__all__ = sorted([*_MAPPED_NAMES, *NOT_MAPPED, "NOT_MAPPED"])
assert set(MAPPED) <= set(_MAPPED_NAMES)
