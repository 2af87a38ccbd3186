"""``python -m benchmarks policy``: the one policy table (``xce._policy.TABLE``), every
threshold that chooses an implementation or a block size, with the benchmark that sets it."""

from __future__ import annotations

from xce import _policy


def main(argv: list[str] | None = None) -> int:
    print("| threshold | value | decides | set by |")
    print("|---|---:|---|---|")
    for name, t in _policy.TABLE.items():
        print(f"| `{name}` | {t.value} | {t.decides} | {t.source} |")
    print()
    print("Implementations: " + ", ".join(_policy.IMPLEMENTATIONS) + " (xce.explain names the one serving a call).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
