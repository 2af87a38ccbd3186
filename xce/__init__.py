"""xce: cross-entropy-family losses written once against the Python Array API standard.

The same functions run on NumPy, PyTorch, JAX (including ``jax.jit``), CuPy, Dask,
array-api-strict, ndonnx (also with symbolic shapes, for ONNX export) and marray, and on any
library providing the part of the Array API standard listed in ``docs/semantics.md``, with
PyTorch's ``torch.nn.functional`` semantics.
"""

from . import adapters as adapters  # registers the framework adapters (imported lazily, per library)
from . import objects
from ._engine import config
from ._policy import explain
from ._softmax import log_softmax, logsumexp, softmax
from .grad import value_and_grad
from .labels import one_hot, smooth_labels
from .linear import linear_cross_entropy
from .linear_distillation import linear_distillation_loss
from .losses.binary import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    multilabel_soft_margin_loss,
    sigmoid_focal_loss,
)
from .losses.cross_entropy import LossStats, cross_entropy
from .losses.distillation import generalized_jsd, kl_div_with_logits
from .losses.divergence import kl_div
from .losses.index import nll_loss, poly1_cross_entropy, softmax_focal_loss
from .objects import *  # noqa: F403  (the loss objects: objects.__all__, exported below)
from .parallel import merge_shard_statistics, shard_statistics, vocab_parallel_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "LossStats",
    "__version__",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "config",
    "cross_entropy",
    "explain",
    "generalized_jsd",
    "kl_div",
    "kl_div_with_logits",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "log_softmax",
    "logsumexp",
    "merge_shard_statistics",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "one_hot",
    "poly1_cross_entropy",
    "shard_statistics",
    "sigmoid_focal_loss",
    "smooth_labels",
    "softmax",
    "softmax_focal_loss",
    "value_and_grad",
    "vocab_parallel_cross_entropy",
]
__all__ += objects.__all__  # the loss objects
