"""Builds the Cython extensions of fastpath/.

`SIDECAR_ANNOTATE=1 python setup.py build_ext --inplace` also writes the
`cython -a` HTML next to each .pyx, to see where Python leaks into C.
`SIDECAR_DEBUG=1` compiles with the debug counters and bounds checks on.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SIDECAR_DEBUG") == "1"

# One extension per fastpath/*.pyx; cross-module declarations live in the .pxd files.
MODULES = sorted(os.path.basename(p)[:-4] for p in glob.glob("fastpath/*.pyx"))

extensions = [
    Extension(
        f"fastpath.{name}",
        [f"fastpath/{name}.pyx"],
        extra_compile_args=["-O2"] if not DEBUG else ["-O0", "-g"],
        define_macros=[("SIDECAR_DEBUG", "1" if DEBUG else "0")],
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=os.environ.get("SIDECAR_ANNOTATE") == "1",
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
