"""river's ADWIN and PageHinkley, imported without the rest of ``river.drift``.

``river/drift/__init__.py`` (river 0.26) also imports its example datasets, and through
them ``river.stream``, scikit-learn and most of scipy: about 86 MB of resident memory and
a second of start-up here, for two classes that need neither. The daemon's memory budget
is per key, so that baseline matters.

The two modules are imported under a temporary, empty ``river.drift`` package that is
removed again at once. The classes are the ones river defines, in their own modules
(``river.drift.adwin``, ``river.drift.page_hinkley``), so pickled state names them as
usual; a later ``import river.drift`` runs the real package ``__init__``, which finds
these modules already loaded and re-exports the very same classes. If ``river.drift`` is
already imported, it is used as is.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any


def _load() -> tuple[Any, Any]:
    if "river.drift" not in sys.modules:
        spec = importlib.util.find_spec("river.drift")
        if spec is not None and spec.submodule_search_locations is not None:
            stub = types.ModuleType("river.drift")
            stub.__path__ = list(spec.submodule_search_locations)
            sys.modules["river.drift"] = stub
            try:
                from river.drift.adwin import ADWIN
                from river.drift.page_hinkley import PageHinkley
            finally:
                del sys.modules["river.drift"]
                river = sys.modules.get("river")
                if river is not None and getattr(river, "drift", None) is stub:
                    delattr(river, "drift")
            return ADWIN, PageHinkley
    from river.drift import ADWIN, PageHinkley

    return ADWIN, PageHinkley


if TYPE_CHECKING:
    from river.drift import ADWIN, PageHinkley
else:
    ADWIN, PageHinkley = _load()

__all__ = ["ADWIN", "PageHinkley"]
