"""Build the C core (csrc/) and its NumPy binding (greedyprune/_core.c) as one extension.

OpenMP is detected by compiling a small probe with the compiler setuptools will use; without it
the extension is built serial and a warning says so.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def compiler_accepts(compiler, extra_args):
    """True if `compiler` compiles and links the OpenMP probe with `extra_args`."""
    tmp = tempfile.mkdtemp()
    try:
        source = os.path.join(tmp, "probe.c")
        with open(source, "w") as f:
            f.write(OPENMP_PROBE)
        objects = compiler.compile([source], output_dir=tmp, extra_postargs=extra_args)
        compiler.link_executable(objects, os.path.join(tmp, "probe"), extra_postargs=extra_args)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        flags = ["/openmp"] if self.compiler.compiler_type == "msvc" else ["-fopenmp"]
        if os.environ.get("GREEDYPRUNE_NO_OPENMP") or not compiler_accepts(self.compiler, flags):
            warnings.warn("greedyprune: the compiler has no OpenMP; building the C core serial")
            flags = []
        optimize = [] if self.compiler.compiler_type == "msvc" else ["-O3", "-std=c99"]
        for ext in self.extensions:
            ext.extra_compile_args += optimize + flags
            ext.extra_link_args += flags
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "greedyprune._core",
            sources=["csrc/greedyprune.c", "greedyprune/_core.c"],
            include_dirs=["csrc", np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
