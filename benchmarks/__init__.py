"""xce's benchmark suite: ``python -m benchmarks [--quick] [--huge]`` from the repository root.

Times xce against the native losses (``torch.nn.functional.cross_entropy``, optax under
``jax.jit``, plain NumPy, SciPy) and against a one-pass floor (one ``sum`` over the logits
on the same backend), interleaved in one run; measures peak extra memory; writes a
Markdown table, a JSON dump and a PNG plot to ``benchmarks/results/``.
See ``docs/performance.md``.

``python -m benchmarks sweep [--sizes ...] [--repeats N] [--busy] [--compare PATH]`` is the size
sweep (8x10 to 4096x32000) of xce against the native losses, or against another checkout of
xce (benchmarks/sweep.py); ``python -m benchmarks.gpu`` the CUDA benchmark (benchmarks/gpu.py);
``python -m benchmarks linear_distill [N D_s D_t V ...]`` the fused linear distillation loss against
the unfused two-logits version (benchmarks/linear_distill.py).
"""
