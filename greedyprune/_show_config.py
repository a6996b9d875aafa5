"""How this copy of greedyprune was built and how it runs: what a bug report needs.

:func:`config_info` gathers it as a dict, :func:`show_config` prints it. Neither imports torch or
transformers: their versions come from the installed packages' metadata (or from the module,
when the program already imported it).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any, Dict, Optional, TextIO

from . import __version__, _api, _core

#: Packages whose versions matter to greedyprune, reported when installed.
RELATED_PACKAGES = ("numpy", "torch", "transformers", "threadpoolctl")

#: OpenMP's _OPENMP release dates and the specification versions they stand for.
OPENMP_VERSIONS = {200505: "2.5", 200805: "3.0", 201107: "3.1", 201307: "4.0", 201511: "4.5",
                   201811: "5.0", 202011: "5.1", 202111: "5.2", 202411: "6.0"}


def _installed_version(name: str) -> Optional[str]:
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_text(number: int) -> str:
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def config_info() -> Dict[str, Any]:
    """greedyprune's build and run-time settings as a dict (:func:`show_config` prints it).

    Keys: ``version``, ``path``, ``c_core`` (its version, compiler, flags, and the SIMD variant
    its dot products run with), ``openmp`` (whether it is compiled in; its version and runtime
    library, or why it is off), ``threads`` (the default for a call, where it comes from, the
    CPUs available and so the most a call uses), ``platform``, ``python`` and ``packages`` (the
    installed versions of NumPy, PyTorch, transformers and threadpoolctl; absent ones left out).
    """
    from .methods import _cpus_available

    build: Dict[str, Any] = _core.build_info()
    threads, source = _api.default_num_threads_and_source()
    cpus = _cpus_available()
    openmp = bool(_core.HAS_OPENMP)
    version = build["openmp_version"]
    return {
        "version": __version__,
        "path": os.path.dirname(os.path.abspath(__file__)),
        "c_core": {"version": _version_text(_core.VERSION_NUMBER), "compiler": build["compiler"],
                   "flags": build["flags"], "simd": build["simd"]},
        "openmp": {"enabled": openmp,
                   "version": OPENMP_VERSIONS.get(version, str(version)) if openmp else None,
                   "library": build["openmp_library"],
                   "why_not": None if openmp else build["no_openmp_reason"]},
        "threads": {"default": threads, "source": source, "cpus_available": cpus,
                    "most_used_by_a_call": min(threads, cpus) if openmp else 1},
        "platform": platform.platform(),
        "python": f"{platform.python_version()} ({platform.python_implementation()}, "
                  f"{sys.executable})",
        "packages": {name: version for name in RELATED_PACKAGES
                     if (version := _installed_version(name)) is not None},
    }


def show_config(file: Optional[TextIO] = None) -> None:
    """Print how greedyprune was built and how it runs (to ``file``, default stdout): the lines
    to paste into a bug report."""
    info = config_info()
    core, openmp, threads = info["c_core"], info["openmp"], info["threads"]
    if openmp["enabled"]:
        openmp_text = f"yes, OpenMP {openmp['version']}" + (
            f", runtime {openmp['library']}" if openmp["library"] else "")
    else:
        openmp_text = f"no ({openmp['why_not']}): every call runs on one thread"
    rows = [
        ("C core", f"{core['version']}, built by {core['compiler']} with "
                   f"{core['flags'] or 'no flags'}"),
        ("SIMD", core["simd"]),
        ("OpenMP", openmp_text),
        ("Threads", f"{threads['default']} by default ({threads['source']}); a call uses at "
                    f"most {threads['most_used_by_a_call']} ({threads['cpus_available']} CPUs "
                    "available)"),
        ("Platform", info["platform"]),
        ("Python", info["python"]),
        *info["packages"].items(),
    ]
    lines = [f"greedyprune {info['version']} ({info['path']})"]
    lines += [f"  {label + ':':<15}{value}" for label, value in rows]
    print("\n".join(lines), file=sys.stdout if file is None else file)
