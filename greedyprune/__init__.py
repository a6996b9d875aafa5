"""greedyprune: training-free visual-token pruning for vision-language models.

``select(features, k, saliency, lam)`` keeps the k visual tokens that are jointly salient and
diverse, by the greedy rule of GreedyPrune (arXiv 2506.13166) as formalized in SPEC.md. The rule
runs in a C core (OpenMP-parallel, GIL released); :mod:`greedyprune.reference` is its plain-NumPy
twin; :mod:`greedyprune.hf` attaches it to HuggingFace vision-language models through hooks.
"""
from ._api import NUM_THREADS_ENV, get_num_threads, greedy, select, set_num_threads
from ._core import HAS_OPENMP as _HAS_OPENMP
from .config import PruneConfig

__version__ = "0.1.0"

#: True when the C core was compiled with OpenMP (else it runs serially).
has_openmp = bool(_HAS_OPENMP)

__all__ = ["select", "greedy", "get_num_threads", "set_num_threads", "has_openmp", "NUM_THREADS_ENV",
           "PruneConfig"]
