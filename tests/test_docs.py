"""The documentation builds with warnings as errors, and every example in its pages runs.

Two Sphinx builds into a temporary directory (the source tree is only read):

* ``html`` with ``-W``: broken cross-references, toctree problems, and docstrings that
  numpydoc or docutils cannot parse fail the test. The API page is generated from
  ``xce.__all__``, so a new public name is checked as soon as it is exported.
* ``doctest`` with ``-W``: every ``{doctest}`` block of the guides runs. A block that needs a
  framework carries ``:skipif: missing("torch")`` and is skipped when it is not installed.
  (Docstring examples run separately, under ``pytest --doctest-modules``.)

Skipped when the ``docs`` extra (sphinx, myst-parser, numpydoc, furo) is not installed.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

import xce

DOCS = Path(__file__).resolve().parent.parent / "docs"
_NEEDED = ("sphinx", "myst_parser", "numpydoc", "furo")
_MISSING = [m for m in _NEEDED if importlib.util.find_spec(m) is None]

pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"docs dependencies not installed ({', '.join(_MISSING)}): pip install -e '.[docs]'"
)


def _build(builder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, Path, str]:
    from sphinx.cmd.build import build_main

    # conf.py records the builder in the environment; monkeypatch restores it afterwards.
    monkeypatch.delenv("XCE_DOCS_BUILDER", raising=False)
    out = tmp_path / builder
    warnings = tmp_path / f"{builder}-warnings.txt"
    args = ["-b", builder, "-W", "--keep-going", "-q", "-E", "-d", str(tmp_path / f"doctrees-{builder}")]
    rc = build_main([*args, "-w", str(warnings), str(DOCS), str(out)])
    return rc, out, warnings.read_text() if warnings.exists() else ""


def test_html_builds_without_warnings(tmp_path, monkeypatch):
    rc, out, warnings = _build("html", tmp_path, monkeypatch)
    assert rc == 0, f"sphinx html build failed (warnings are errors):\n{warnings}"
    api = (out / "api.html").read_text(encoding="utf-8")
    public = [name for name in xce.__all__ if callable(getattr(xce, name))]
    undocumented = [name for name in public if f'id="xce.{name}"' not in api]
    assert not undocumented, f"public names missing from the API page: {undocumented}"
    for page in ("index", "getting_started", "migration", "changelog", "guides/numpy", "guides/jax"):
        assert (out / f"{page}.html").is_file(), page


def test_doc_examples_run(tmp_path, monkeypatch):
    rc, out, warnings = _build("doctest", tmp_path, monkeypatch)
    report = (out / "output.txt").read_text(encoding="utf-8") if (out / "output.txt").exists() else ""
    assert rc == 0, f"doc examples failed:\n{warnings}\n{report}"
    assert "0 failures in tests" in report, report


def test_every_public_function_has_a_docstring_example():
    missing = [
        name
        for name in xce.__all__
        if callable(getattr(xce, name)) and ">>>" not in (inspect.getdoc(getattr(xce, name)) or "")
    ]
    assert not missing, f"public names without an Examples section: {missing}"


def test_cupy_guide_runs_on_the_cupy_standin():
    """docs/guides/cupy.md's examples, skipped by the Sphinx build without CuPy, run against
    the NumPy-backed CuPy stand-in (tests/fake_cupy): what they promise without a GPU's values
    (NaN for an out-of-range target, unless check_values=True) is what xce does on CuPy."""
    import doctest
    import re

    from conftest import install_cupy_standin

    install_cupy_standin()
    text = (DOCS / "guides" / "cupy.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```\{doctest\}\n(?::skipif:[^\n]*\n)?\n?(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, "cupy.md", "docs/guides/cupy.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
