import sys

if sys.argv[1:2] == ["sweep"]:  # python -m benchmarks sweep [...]: the size sweep (benchmarks/sweep.py)
    from .sweep import main as sweep_main

    raise SystemExit(sweep_main(sys.argv[2:]))
if sys.argv[1:2] == ["crossover"]:  # python -m benchmarks crossover [...]: benchmarks/crossover.py
    from .crossover import main as crossover_main

    raise SystemExit(crossover_main(sys.argv[2:]))
if sys.argv[1:2] == ["policy"]:  # python -m benchmarks policy: the policy table (benchmarks/policy.py)
    from .policy import main as policy_main

    raise SystemExit(policy_main(sys.argv[2:]))
if sys.argv[1:2] == ["linear_distill"]:  # python -m benchmarks linear_distill [...]: benchmarks/linear_distill.py
    from .linear_distill import main as linear_distill_main

    raise SystemExit(linear_distill_main(sys.argv[2:]))
if sys.argv[1:2] == ["jax_linear"]:  # python -m benchmarks jax_linear [N D V repeats]: benchmarks/jax_linear.py
    from .jax_linear import main as jax_linear_main

    raise SystemExit(jax_linear_main(sys.argv[2:]))
if sys.argv[1:2] == ["compiled"]:  # python -m benchmarks compiled [...]: benchmarks/compiled.py
    from .compiled import main as compiled_main

    raise SystemExit(compiled_main(sys.argv[2:]))

from .suite import main

raise SystemExit(main())
