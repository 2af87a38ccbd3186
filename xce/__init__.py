"""xce: cross-entropy-family losses written once against the Python Array API standard.

The same functions run on NumPy, PyTorch, JAX (including ``jax.jit``), CuPy, Dask and any
other Array API library, with PyTorch's ``torch.nn.functional`` semantics.
"""

from ._softmax import log_softmax, logsumexp, softmax
from .classification import cross_entropy, nll_loss

__version__ = "0.1.0"

__all__ = ["__version__", "cross_entropy", "log_softmax", "logsumexp", "nll_loss", "softmax"]
