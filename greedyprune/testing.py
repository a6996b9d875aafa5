"""Assert in your own test suite that pruning does not change your model's answers.

::

    from greedyprune.evaluate import HFAnswerer
    from greedyprune.testing import assert_agreement

    def test_pruning_keeps_my_answers(model, processor):
        cases = [{"image": "tests/data/invoice.png", "question": "What is the total?"}, ...]
        assert_agreement(HFAnswerer(model, processor), cases, keep=128, at_least=0.9)

Installing greedyprune also installs a pytest plugin that provides the fixture
``greedyprune_agreement``, which is :func:`assert_agreement` itself. The plugin is the top-level
module ``_greedyprune_pytestplugin`` (entry point ``pytest11``), not this one, so that pytest
runs that do not use it import nothing of greedyprune; this module re-exports the fixture for a
conftest.py to import where the plugin is not installed. It imports neither torch nor
transformers.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Union

from .evaluate import UNPRUNED, Answerer, Record, Report, compare

__all__ = ["assert_agreement"]


def assert_agreement(answerer: Answerer, cases: Iterable[Union[Record, Dict[str, Any]]], *,
                     keep: Union[int, float] = 64, method: str = "greedyprune",
                     at_least: float = 0.9, progress: bool = False) -> Report:
    """Fail unless the pruned answers equal the unpruned ones on at least ``at_least`` of the
    cases (after VQA normalization). Returns the :class:`~greedyprune.evaluate.Report`; the
    failure message lists the cases that changed."""
    if not 0.0 <= at_least <= 1.0:
        raise ValueError(f"at_least must be in [0, 1], got {at_least!r}")
    report = compare(answerer, cases, [method], [keep], progress=progress)
    share = report.agreement(method, keep)
    if share < at_least:
        unpruned = {r.record: r.answer for r in report.results if r.method == UNPRUNED}
        changed = [r for r in report.results if r.method == method and not r.agrees]
        lines = [f"  case {r.record}: unpruned {unpruned[r.record]!r}, pruned {r.answer!r}"
                 for r in changed[:20]]
        if len(changed) > 20:
            lines.append(f"  ... and {len(changed) - 20} more")
        raise AssertionError(
            f"{method} at keep={keep} agrees with the unpruned model on {share:.1%} of "
            f"{len(unpruned)} cases, below the required {at_least:.1%}; changed answers:\n"
            + "\n".join(lines))
    return report


try:
    from _greedyprune_pytestplugin import greedyprune_agreement  # noqa: F401  (the fixture)
except ImportError:  # the plugin needs pytest; assert_agreement does not
    pass
