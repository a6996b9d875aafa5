"""greedyprune's pytest plugin (entry point ``pytest11``): the fixture ``greedyprune_agreement``.

A top-level module of its own, outside the greedyprune package (as Hypothesis does with
``_hypothesis_pytestplugin``): pytest loads it in every test run of an environment where
greedyprune is installed, and loading it imports nothing but pytest. greedyprune, NumPy and the C
core load when a test asks for the fixture.
"""
import pytest


@pytest.fixture
def greedyprune_agreement():
    """:func:`greedyprune.testing.assert_agreement`, as a fixture."""
    from greedyprune.testing import assert_agreement

    return assert_agreement
