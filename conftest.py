"""Repository-wide pytest set-up (loaded before any module is collected)."""

import os

# The per-event core modules are also built as extensions next to their source
# (driftmon/core/{events,features,detectors}.*.so). Python imports the extension, and
# pytest's --doctest-modules would refuse to collect "detectors.py" because the module
# it imports was loaded from "detectors.*.so". The doctests are the same either way.
os.environ.setdefault("PY_IGNORE_IMPORTMISMATCH", "1")
