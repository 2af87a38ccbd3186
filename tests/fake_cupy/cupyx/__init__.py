"""The stand-in's ``cupyx``: ``scatter_add`` (NumPy's ``add.at`` on the current device)."""

from typing import Any

import cupy


def scatter_add(a: Any, slices: Any, value: Any) -> None:
    cupy.add.at(a, slices, value)
