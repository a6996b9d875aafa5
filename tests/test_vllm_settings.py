"""The vLLM plugin's settings rules, without vLLM (its engine tests are in tests_vllm/, run by
``make test-vllm`` in their own environment)."""
from __future__ import annotations

import types

import pytest

from greedyprune import PruneConfig
from greedyprune.vllm import _settings


def test_no_key_means_no_pruning():
    assert _settings.requested(types.SimpleNamespace()) is None
    assert _settings.requested(types.SimpleNamespace(greedyprune={"keep": 4})) == {"keep": 4}


def test_settings_must_be_a_dict():
    with pytest.raises(TypeError, match=r"hf_overrides\['greedyprune'\] must be a dict of "
                                        r"settings such as \{\"keep\": 64\}, got int: 48"):
        _settings.requested(types.SimpleNamespace(greedyprune=48))


@pytest.mark.parametrize("has_cls, expected", [(True, "cls"), (False, "none")])
def test_saliency_defaults_to_what_the_tower_has(has_cls, expected):
    config = _settings.parse({"keep": 48}, has_cls=has_cls, tower="T")
    assert config == PruneConfig(keep=48, saliency=expected)


def test_lam_auto_is_a_setting():
    # tests_vllm/test_pruned.py checks what it prunes, in vLLM's own environment.
    config = _settings.parse({"keep": 6, "lam": "auto"}, has_cls=True, tower="T")
    assert config == PruneConfig(keep=6, lam="auto", saliency="cls")
    with pytest.raises(ValueError, match="lam must be a number in \\[0, 1\\] or 'auto'"):
        _settings.parse({"keep": 6, "lam": "automatic"}, has_cls=True, tower="T")


def test_every_prune_config_field_is_a_setting():
    values = {"keep_ratio": 0.25, "method": "greedyprune", "lam": 0.5, "saliency": "none",
              "seed": 7, "backend": "torch"}
    assert _settings.parse(values, has_cls=True, tower="T") == PruneConfig(**values)


@pytest.mark.parametrize("values, error, message", [
    ({"keep": 4, "kepp": 1, "x": 2}, ValueError,
     "unknown greedyprune settings 'kepp', 'x'; the settings are keep, keep_ratio, method, lam"),
    ({"keep": 4, "saliency": "text"}, ValueError,
     "vLLM runs the vision encoder without the prompt, so saliency='text'"),
    ({"keep": 4, "saliency": "query"}, ValueError, "saliency='query', which reads the prompt"),
    ({"keep": 4, "saliency": "CLS"}, ValueError, "greedyprune settings: saliency must be one of"),
    ({"keep": 0}, ValueError, r"greedyprune settings: keep must be >= 1"),
    ({"keep": 4.0}, TypeError, "greedyprune settings: keep must be a positive integer, got float"),
    ({"keep": 4, "method": "nope"}, ValueError, "nope"),
])
def test_bad_settings_name_the_setting(values, error, message):
    with pytest.raises(error, match=message):
        _settings.parse(values, has_cls=True, tower="T")


def test_cls_needs_a_cls_token():
    with pytest.raises(ValueError, match="saliency='cls' needs a vision tower with a \\[CLS\\] "
                                         "token; SiglipVisionModel has none"):
        _settings.parse({"keep": 4, "saliency": "cls"}, has_cls=False, tower="SiglipVisionModel")


@pytest.mark.parametrize("n, keep, keep_ratio, kept", [
    (144, 48, None, 48), (144, 10**6, None, 144), (144, None, 0.1, 15), (576, None, 0.25, 144),
    (5, None, 0.01, 1)])
def test_kept_counts_as_greedyprune_hf_does(n, keep, keep_ratio, kept):
    assert PruneConfig(keep=keep, keep_ratio=keep_ratio).kept(n) == kept
