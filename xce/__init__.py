"""xce: cross-entropy-family losses written once against the Python Array API standard.

The same functions run on NumPy, PyTorch, JAX (including ``jax.jit``), CuPy, Dask and any
other Array API library, with PyTorch's ``torch.nn.functional`` semantics.
"""

from ._softmax import log_softmax, logsumexp, softmax
from .binary import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    multilabel_soft_margin_loss,
    sigmoid_focal_loss,
)
from .classification import cross_entropy, nll_loss, poly1_cross_entropy, softmax_focal_loss
from .divergence import kl_div
from .labels import one_hot, smooth_labels
from .objects import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    KLDivLoss,
    MultiLabelSoftMarginLoss,
    NLLLoss,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
)

__version__ = "0.1.0"

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "KLDivLoss",
    "MultiLabelSoftMarginLoss",
    "NLLLoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "__version__",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "kl_div",
    "log_softmax",
    "logsumexp",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "one_hot",
    "poly1_cross_entropy",
    "sigmoid_focal_loss",
    "smooth_labels",
    "softmax",
    "softmax_focal_loss",
]
