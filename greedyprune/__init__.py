"""greedyprune: training-free visual-token pruning for vision-language models.

``select(features, k, saliency, lam)`` keeps the k visual tokens that are jointly salient and
diverse, by the greedy rule of GreedyPrune (arXiv 2506.13166) as formalized in docs/spec.md. The
rule runs in a C core (OpenMP-parallel, GIL released); :mod:`greedyprune.reference` is its
plain-NumPy twin; :mod:`greedyprune.hf` attaches it to HuggingFace vision-language models through
hooks. :func:`show_config` prints how this copy was built and how many threads it uses.
"""
from importlib.machinery import PathFinder as _PathFinder

#: The package version (pyproject.toml reads it from here; csrc/greedyprune.h must agree).
__version__ = "0.1.0"

#: Environment variable for the default thread count; it wins over OMP_NUM_THREADS.
NUM_THREADS_ENV = "GREEDYPRUNE_NUM_THREADS"

# Looked for beside this file only: an editable install elsewhere must not stand in for it.
if _PathFinder.find_spec(f"{__name__}._core", __path__) is None:
    raise ImportError(
        "greedyprune: the C extension is not built; run `pip install -e .` in the source "
        "checkout (or `python setup.py build_ext --inplace`)", name=f"{__name__}._core")

# Loading the C core here also loads its OpenMP runtime, so that threadpoolctl's limits, set
# after `import greedyprune`, reach it.
from ._api import get_num_threads, greedy, select, set_num_threads  # noqa: E402
from ._core import HAS_OPENMP as _HAS_OPENMP  # noqa: E402
from ._show_config import config_info, show_config  # noqa: E402
from .config import PruneConfig  # noqa: E402

#: True when the C core was compiled with OpenMP (else it runs serially; show_config says why).
has_openmp = bool(_HAS_OPENMP)

__all__ = ["select", "greedy", "get_num_threads", "set_num_threads", "has_openmp",
           "NUM_THREADS_ENV", "show_config", "config_info", "PruneConfig"]
