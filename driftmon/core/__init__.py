"""The pure core: events → features → detectors, no I/O and no wall clock.

The per-event modules are also compiled by Cython when the package is built (see
``setup.py``); without a C compiler they run as the same plain Python source, about
1.6x slower per event. :func:`compiled_modules` says which form is loaded.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

COMPILED_MODULES = ("events", "features", "detectors", "inputs")


def compiled_modules() -> dict[str, bool]:
    """For each module on the per-event path: is the compiled extension the one loaded?"""
    out = {}
    for name in COMPILED_MODULES:
        path = importlib.import_module(f"driftmon.core.{name}").__file__ or ""
        out[name] = path.endswith(tuple(EXTENSION_SUFFIXES))
    return out


def compiled_label() -> str:
    """``"true"``, ``"false"`` or ``"partial"``: for logs and the build-info metric."""
    flags = set(compiled_modules().values())
    return "partial" if len(flags) > 1 else str(flags.pop()).lower()
