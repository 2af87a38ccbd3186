"""Which implementation serves a call: the named implementations, the policy table whose
thresholds choose between them, and :func:`explain`, which says which one served a call and why.

The implementations of a loss (each named once here):

``native``
    The library's own kernel in one piece where it computes exactly xce's function
    (PyTorch's ``F.cross_entropy``).
``native in blocks``
    That kernel one block of rows at a time (a large CPU forward without autograd).
``analytic backward``
    The loss under the library's autodiff with xce's own gradient rule (PyTorch's
    ``autograd.Function``, JAX's ``custom_jvp``): the forward saves O(N) statistics, not
    softmax-sized intermediates.
``fused sweep``
    ``linear_cross_entropy`` / ``linear_distillation_loss``: the head's matmul and the loss
    in blocks of rows, never the whole ``(N, V)`` logits.
``custom op``
    The fused sweep as ``torch.library`` custom ops (fake and autograd rules): what
    ``torch.compile`` and ``torch.export`` trace, one opaque graph node.
``scan``
    JAX: a checkpointed ``lax.scan`` over vocabulary chunks (eager and under ``jax.jit``).
``definition in blocks``
    xce's Array API definition over blocks of rows (the engine, eager arrays).
``definition``
    xce's Array API definition as one fused formula (JAX, Dask, traced, small inputs): the
    reference every other implementation equals (``tests/test_implementations.py``).

Each implementation notes itself when it serves (:func:`note`); outside :func:`explain` a
note costs one attribute read (``ACTIVE``). ``python -m benchmarks policy`` prints :data:`TABLE`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "ANALYTIC_BACKWARD",
    "CUSTOM_OP",
    "DEFINITION",
    "DEFINITION_BLOCKS",
    "FUSED_SWEEP",
    "IMPLEMENTATIONS",
    "NATIVE",
    "NATIVE_BLOCKS",
    "SCAN",
    "TABLE",
    "Explanation",
    "Served",
    "Threshold",
    "explain",
    "note",
]

NATIVE = "native"
NATIVE_BLOCKS = "native in blocks"
ANALYTIC_BACKWARD = "analytic backward"
FUSED_SWEEP = "fused sweep"
CUSTOM_OP = "custom op"
SCAN = "scan"
DEFINITION_BLOCKS = "definition in blocks"
DEFINITION = "definition"
IMPLEMENTATIONS = (NATIVE, NATIVE_BLOCKS, ANALYTIC_BACKWARD, FUSED_SWEEP, CUSTOM_OP, SCAN, DEFINITION_BLOCKS,
                   DEFINITION)


class Threshold(NamedTuple):
    """One number of the policy: its value, what it decides and the benchmark that sets it."""

    value: int
    decides: str
    source: str


_CROSSOVER = "python -m benchmarks crossover; docs/performance.md, 'Where the constants come from'"
_SWEEP = "python -m benchmarks sweep; docs/performance.md, 'Where the constants come from'"

#: Every threshold that chooses an implementation or a block size. The code reads these
#: entries (``TABLE[name].value``) and nothing else.
TABLE: dict[str, Threshold] = {
    "native_max_logits_cpu": Threshold(
        1 << 23, "torch CPU forward: most float32 logits (as many bytes at other widths) for the native kernel "
        "in one piece; above: native in blocks", _CROSSOVER),
    "native_max_logits_cpu_autograd": Threshold(
        1 << 21, "torch CPU under autograd or with z-loss: most logits for the native kernel; above: the "
        "analytic backward", _SWEEP),
    "native_max_logits_gpu": Threshold(
        1 << 28, "torch GPU: most logits for the native kernel in one piece; above: the definition", _SWEEP),
    "definition_blocks_min_elements": Threshold(
        1 << 16, "eager arrays: fewest elements for the definition in blocks (xce.config(min_elements=))", _SWEEP),
    "class_chunk_min_elements": Threshold(
        1 << 18, "a row longer than this is split into class chunks (online logsumexp)", _SWEEP),
    "block_bytes": Threshold(1 << 21, "NumPy / array-api-strict statistics block, in the compute dtype", _SWEEP),
    "block_bytes_torch_cpu": Threshold(
        1 << 22, "PyTorch CPU statistics block floor (1/32 of the input up to the maximum)", _SWEEP),
    "block_bytes_torch_cpu_max": Threshold(1 << 24, "PyTorch CPU statistics block maximum", _SWEEP),
    "block_bytes_kernel": Threshold(1 << 20, "floor of a block handed whole to a library's kernel", _SWEEP),
    "block_bytes_gpu": Threshold(1 << 26, "GPU block", _SWEEP),
    "block_bytes_gradient": Threshold(1 << 24, "analytic backward block (formed in the gradient itself)", _SWEEP),
    "block_bytes_matmul": Threshold(1 << 26, "logits of one block of rows of the fused linear sweep",
                                    "python -m benchmarks linear_ce; docs/performance.md"),
    "vocab_chunk_elements": Threshold(
        1 << 21, "elements of one (vocabulary chunk, D) slice of a fused sweep's dW product",
        "python -m benchmarks linear_ce; docs/performance.md"),
    "gradient_loop_classes": Threshold(
        4096, "CPU analytic backward: classes per row from which the target positions are written one row "
        "at a time instead of through a block-sized mask", "benchmarks/backward.py; docs/performance.md"),
}


class Served(NamedTuple):
    """One step of a call: an implementation, the reason it was chosen, and whether its result
    was used (False: it was tried and the next step recomputed the call)."""

    implementation: str
    why: str
    used: bool = True


class Explanation(NamedTuple):
    """What :func:`explain` found: the call's result and the implementations that served it
    (outermost first; a loss that calls another loss, or a fallback, adds steps)."""

    result: Any
    steps: tuple[Served, ...]

    @property
    def implementation(self) -> str:
        """The implementation that served the call: the first step whose result was used."""
        return next((s.implementation for s in self.steps if s.used), DEFINITION)

    def __str__(self) -> str:
        if not self.steps:
            return f"{DEFINITION}: no other implementation applied"
        return "\n".join(f"{s.implementation}: {s.why}" + ("" if s.used else " (not used)") for s in self.steps)


#: explain() calls running in any thread. Hot paths test ``_policy.ACTIVE`` before calling
#: :func:`note`, so that outside :func:`explain` a note costs one attribute read.
ACTIVE = 0
_LOCAL = threading.local()


def note(implementation: str, why: str | Callable[[], str], *, used: bool = True) -> None:
    """Record that ``implementation`` serves the current call, inside :func:`explain` in this
    thread (``why`` may be a function, formatted only then)."""
    steps = getattr(_LOCAL, "steps", None)
    if steps is not None:
        steps.append(Served(implementation, why() if callable(why) else why, used))


def explain(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Explanation:
    """Call ``fn(*args, **kwargs)`` once and say which implementation served it, and why.

    What a user asks when a call is slow or uses memory: ``native`` (the library's kernel),
    ``native in blocks``, ``analytic backward``, ``fused sweep``, ``definition in blocks`` or
    ``definition`` (see :mod:`xce._policy`), with the sizes, device, transform and options
    that decided it.

    Examples
    --------
    >>> import numpy as np, xce
    >>> e = xce.explain(xce.cross_entropy, np.zeros((1024, 100)), np.zeros(1024, dtype=np.int64))
    >>> e.implementation
    'definition in blocks'
    >>> print(e)
    definition in blocks: eager numpy array of 102400 elements >= min_elements 65536
    """
    global ACTIVE
    previous = getattr(_LOCAL, "steps", None)
    steps: list[Served] = []
    _LOCAL.steps = steps
    ACTIVE += 1
    try:
        result = fn(*args, **kwargs)
    finally:
        ACTIVE -= 1
        _LOCAL.steps = previous
    return Explanation(result, tuple(steps))
