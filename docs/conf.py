"""Sphinx configuration for the xce documentation.

Build (from the repository root; warnings are errors, as in CI):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

or ``make -C docs html``; ``make -C docs doctest`` runs the guides' examples. The API page
(``api.rst``) is filled from ``xce.__all__`` at build time, so a new public name appears in
the reference without editing any page.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # document the checkout, installed or not

import xce  # noqa: E402

project = "xce"
author = "the xce authors"
copyright = "the xce authors"
version = release = xce.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# --- Markdown (MyST) -------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve
# Links to files outside docs/ (README, CHANGELOG, benchmarks) are not Sphinx documents.
suppress_warnings = ["myst.xref_missing"]

# --- API reference ---------------------------------------------------------------------------
autosummary_generate = False  # api.rst documents every object on the page itself
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # numpydoc's Parameters section carries the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --- doctest builder (the guides' examples) --------------------------------------------------
# Blocks are ```{doctest}``` directives; one that needs a framework carries
# ``:skipif: missing("torch")``. ``missing`` is True only under the doctest builder, so every
# block is always rendered in HTML, and skipped when tested without its framework.
doctest_global_setup = """
import importlib.util as _ilu, os as _os
def missing(*modules):
    return _os.environ.get("XCE_DOCS_BUILDER") == "doctest" and any(
        _ilu.find_spec(m) is None for m in modules)
"""
doctest_test_doctest_blocks = ""  # docstring examples run under pytest --doctest-modules

# --- HTML ------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"xce {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}

# --- the API page, generated from xce.__all__ ----------------------------------------------
# Sections in this order; a public name from another module gets a section of its own, titled
# by the first line of that module's docstring.
_SECTIONS = {
    "xce.losses.cross_entropy": "Multi-class losses",
    "xce.losses.index": "Losses of the target's log-probability",
    "xce.losses.binary": "Binary and multi-label losses",
    "xce.losses.divergence": "Divergence",
    "xce.labels": "Label helpers",
    "xce._softmax": "Softmax, log-softmax and logsumexp",
    "xce.objects": "Loss objects",
    "xce._policy": "Which implementation serves a call",
}
API_MARKER = ".. xce-api-reference"


def _section_title(module: str) -> str:
    if module in _SECTIONS:
        return _SECTIONS[module]
    doc = inspect.getdoc(sys.modules.get(module)) or ""
    first = doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""
    return first or f"``{module}``"


def _source_line(obj: object) -> int:
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return 0


def api_reference_rst() -> str:
    """reStructuredText for every callable in ``xce.__all__``, grouped by defining module."""
    groups: dict[str, list[tuple[int, str, object]]] = {}
    for name in xce.__all__:
        obj = getattr(xce, name)
        if not callable(obj):
            continue  # __version__
        module = getattr(obj, "__module__", "xce") or "xce"
        groups.setdefault(module, []).append((_source_line(obj), name, obj))
    order = [m for m in _SECTIONS if m in groups] + sorted(m for m in groups if m not in _SECTIONS)

    out = ["Summary", "-------", ""]
    for module in order:
        out += [f".. rubric:: {_section_title(module)}", "", ".. autosummary::", "   :nosignatures:", ""]
        out += [f"   {name}" for _, name, _ in sorted(groups[module], key=lambda t: (t[0], t[1]))]
        out.append("")
    for module in order:
        title = _section_title(module)
        out += [title, "-" * len(title), ""]
        for _, name, obj in sorted(groups[module], key=lambda t: (t[0], t[1])):
            directive = "autoclass" if inspect.isclass(obj) else "autofunction"
            out += [f".. {directive}:: {name}", ""]
    return "\n".join(out) + "\n"


def _fill_api_page(app, docname: str, source: list[str]) -> None:
    if docname == "api" and API_MARKER in source[0]:
        source[0] = source[0].replace(API_MARKER, api_reference_rst())


def _remember_builder(app) -> None:
    os.environ["XCE_DOCS_BUILDER"] = app.builder.name


def setup(app):
    app.connect("source-read", _fill_api_page)
    app.connect("builder-inited", _remember_builder)
    return {"parallel_read_safe": True}
