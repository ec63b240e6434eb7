"""Builds the optional native CPU kernels (``quantcore_native._C``, from ``native/csrc``) next to
the Python packages described in pyproject.toml.

The extension compiles against the torch that is importable while building, so install with
``pip install --no-build-isolation`` into an environment that already has torch (the Makefile
does). Without torch at build time (plain ``pip install .`` in an isolated build environment), or
when the compiler fails, quantcore installs without it and runs its pure-torch kernels.
"""

from __future__ import annotations

import sys
from glob import glob
from typing import Any

from setuptools import setup

SOURCES = sorted(glob("native/csrc/*.cpp"))


def native_build() -> dict[str, Any]:
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print(
            "quantcore: torch is not importable in the build environment, so the native kernels "
            "are not built (install torch first, then `pip install --no-build-isolation .`)",
            file=sys.stderr,
        )
        return {}
    extension = CppExtension(
        "quantcore_native._C",
        SOURCES,
        # -fopenmp: at::parallel_for is inline OpenMP code in torch's headers, serial without it;
        # the extension then shares the libgomp.so.1 that torch has already loaded
        extra_compile_args=["-O3", "-g0", "-fopenmp"],
        extra_link_args=["-fopenmp"],
        optional=True,  # a failed compile leaves the pure-torch kernels, not a failed install
    )
    return {
        "ext_modules": [extension],
        "cmdclass": {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
    }


setup(**native_build())
