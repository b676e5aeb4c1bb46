"""Builds the compiled hot path; everything else is in pyproject.toml.

Each module of ``COMPILED`` (``driftmon/core/detectors.py``, ...) is compiled by Cython
with the types in its ``.pxd``. The extension is optional: without a C compiler the
install still succeeds and the same module runs as plain Python, several times slower per
event (``driftmon check-config`` and the ``driftmon_build_info`` metric say which one is
running).
"""

from setuptools import Extension, setup

# The per-event path: parse, features, detectors, the prompt features of attribution.
COMPILED = ("events", "features", "detectors", "inputs")  # driftmon.core.COMPILED_MODULES

try:
    from Cython.Build import cythonize
except ImportError:  # building from an sdist without Cython: pure Python
    ext_modules = []
else:
    ext_modules = cythonize(
        [
            Extension(
                f"driftmon.core.{name}",
                [f"driftmon/core/{name}.py"],
                optional=True,
                extra_compile_args=["-O2"],
            )
            for name in COMPILED
        ],
        compiler_directives={
            "language_level": 3,
            # Types come from the .pxd only; annotations stay documentation, as in Python.
            "annotation_typing": False,
            "boundscheck": False,
            "wraparound": False,
        },
    )

setup(ext_modules=ext_modules)
