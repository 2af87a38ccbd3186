"""What the package promises outside its functions: one version, the self-check's command line,
and an import that pulls in no framework (each framework's module is imported only by name)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import xce


def _xce(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xce", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_self_check_help_prints_usage_and_runs_nothing(flag: str) -> None:
    done = _xce(flag)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: python -m xce")
    assert "cases passed" not in done.stdout


def test_self_check_rejects_an_unknown_argument() -> None:
    done = _xce("--no-such-option")
    assert done.returncode == 2
    assert "unknown argument '--no-such-option'" in done.stderr


def test_the_installed_version_is_the_package_version() -> None:
    assert importlib.metadata.version("xce") == xce.__version__


def test_optax_names_need_jax_but_import_xce_does_not_import_them() -> None:
    code = "import sys, xce; print('xce.optax' in sys.modules, 'jax' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("library", ["ndonnx", "marray"])
def test_self_check_covers_the_symbolic_and_masked_libraries(library: str) -> None:
    pytest.importorskip(library)
    from xce import _selfcheck

    backend = next(b for b in _selfcheck.backends() if not isinstance(b, str) and b.name == library)
    passed, total, _, _ = _selfcheck.run_backend(backend)
    assert total > 0
    assert passed == total
