"""How ``make test`` shares the tests between its two pytest-xdist workers (``-n 2 --dist
loadgroup``): each test on its own, except the modules below, whose tests run together on one
worker. They share a module-scoped fixture (a model, a notebook or benchmark run, a saved
checkpoint) that would otherwise be built on both workers, or a cache (mypy's), or hold the
longest tests; xdist hands out the largest groups first, and the single tests fill in after."""
import pytest

GROUPED = {"test_benchmarks", "test_builtin", "test_cli", "test_compile", "test_evaluate",
           "test_lmms", "test_notebook", "test_training", "test_typing"}


@pytest.hookimpl(tryfirst=True)   # before xdist reads the groups
def pytest_collection_modifyitems(items):
    for item in items:
        module = getattr(item, "module", None)
        name = module.__name__ if module is not None else ""
        if name in GROUPED:
            item.add_marker(pytest.mark.xdist_group(name))
