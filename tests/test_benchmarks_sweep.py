"""The size sweep's own logic (``benchmarks/sweep.py``): which cases run where. Timing is not
tested here (benchmarks are not timed tests); what is tested is that a huge size is skipped
with a reason rather than run into the machine's memory, and that ``--cases`` parses."""

from __future__ import annotations

import argparse

import pytest

sweep = pytest.importorskip("benchmarks.sweep")


def test_a_case_too_big_for_the_free_memory_is_skipped_with_a_reason():
    n, c = sweep.HUGE  # 4 GiB of float32 logits
    why = sweep.case_available("numpy fwd", native=True, n=n, c=c, free=8 * 2**30)
    assert why is not None and "GiB" in why
    assert sweep.case_available("numpy fwd", native=True, n=n, c=c, free=64 * 2**30) is None
    # The estimate grows with the case's copies: forward+backward needs more than forward.
    free = 10 * 2**30  # (2 copies of 4 GiB fit under 90% of it, 5 do not)
    assert sweep.case_available("numpy fwd", native=True, n=8, c=10, free=free) is None
    if sweep.have("torch"):
        assert sweep.case_available("torch fwd", native=True, n=n, c=c, free=free) is None
        assert sweep.case_available("torch fwd+bwd", native=True, n=n, c=c, free=free) is not None


def test_unknown_free_memory_skips_nothing():
    assert sweep.case_available("numpy fwd", native=True, n=8192, c=131072, free=None) is None


def test_cases_parse_and_unknown_ones_are_refused():
    assert sweep.parse_cases("torch fwd, numpy fwd") == ("torch fwd", "numpy fwd")
    with pytest.raises(argparse.ArgumentTypeError, match="torch bwd"):
        sweep.parse_cases("torch bwd")
    args = sweep.parser().parse_args(["--cases", "numpy fwd", "--huge"])
    assert args.cases == ("numpy fwd",) and args.huge


def test_available_bytes_reads_a_number_or_none():
    free = sweep.available_bytes()
    assert free is None or free > 0
