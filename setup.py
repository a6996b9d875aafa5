"""Build the C core (csrc/) and its NumPy binding (greedyprune/_core.c) as one extension.

OpenMP is detected by compiling a small probe with the compiler setuptools will use, unless
GREEDYPRUNE_NO_OPENMP=1 asks for a serial build. Without OpenMP the extension is built serial:
the message goes to stderr (and to the terminal, which pip would otherwise hide it from), and the
reason is compiled into the extension, where ``greedyprune.show_config()`` reports it.

A build whose flags differ from the previous one in the same build folder recompiles everything,
so a serial build never links an OpenMP object left from an earlier build (or the reverse).
"""
import os
import shutil
import sys
import tempfile

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
NO_OPENMP_ENV = "GREEDYPRUNE_NO_OPENMP"
#: In the build folder: the settings of the last build made there.
FLAGS_STAMP = "greedyprune-build-flags.txt"


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


def tell_user(message):
    """Print `message` on stderr and, when stderr is not a terminal (pip captures it and shows
    it only for a failed build), on the controlling terminal too, if there is one."""
    print(message, file=sys.stderr, flush=True)
    if sys.stderr.isatty():
        return
    try:
        with open("/dev/tty" if os.name != "nt" else "CON", "w") as tty:
            tty.write(message + "\n")
    except OSError:
        pass


def c_string(text):
    """`text` as the value of a -D macro that the C code reads as a string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BuildExt(build_ext):
    def openmp_flags(self):
        """(flags, reason): the OpenMP compile and link flags, or [] and why there are none."""
        flags = ["/openmp"] if self.compiler.compiler_type == "msvc" else ["-fopenmp"]
        if os.environ.get(NO_OPENMP_ENV, "").strip() not in ("", "0"):
            return [], f"{NO_OPENMP_ENV} was set when it was built"
        if not compiler_accepts(self.compiler, flags):
            return [], f"the compiler could not build an OpenMP program ({' '.join(flags)})"
        return flags, ""

    def build_extensions(self):
        openmp, reason = self.openmp_flags()
        if reason:
            tell_user(f"WARNING: greedyprune: building the C core without OpenMP, so it runs on "
                      f"one thread: {reason}.")
        optimize = [] if self.compiler.compiler_type == "msvc" else ["-O3", "-std=c99"]
        flags = " ".join(optimize + openmp)
        for ext in self.extensions:
            ext.extra_compile_args += optimize + openmp
            ext.extra_link_args += openmp
            ext.define_macros += [("GREEDYPRUNE_BUILD_FLAGS", c_string(flags)),
                                  ("GREEDYPRUNE_NO_OPENMP_REASON", c_string(reason))]
        # setuptools rebuilds only what is older than its sources; it does not compare flags.
        stamp, settings = os.path.join(self.build_temp, FLAGS_STAMP), f"{flags}\n{reason}\n"
        try:
            with open(stamp) as f:
                self.force = self.force or f.read() != settings
        except OSError:
            self.force = True
        super().build_extensions()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(settings)


setup(
    ext_modules=[
        Extension(
            "greedyprune._core",
            sources=["csrc/greedyprune.c", "greedyprune/_core.c"],
            depends=["csrc/greedyprune.h"],
            include_dirs=["csrc", np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
