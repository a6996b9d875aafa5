"""greedyprune.hf._compat against the transformers internals it replaces, on many inputs, for as
long as the installed transformers still has them (each test skips once it does not)."""
import itertools

import numpy as np
import pytest

from greedyprune.hf import _compat

torch = pytest.importorskip("torch")


def _transformers_function(module, name):
    found = getattr(pytest.importorskip(f"transformers.models.{module}"), name, None)
    if found is None:
        pytest.skip(f"this transformers has no {module}.{name} to compare with")
    return found


def test_block_sequence_ids_match_gemma3s():
    theirs = _transformers_function("gemma3.modeling_gemma3", "get_block_sequence_ids_for_mask")
    rng = np.random.default_rng(0)
    inputs = [torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long),
              torch.tensor([[0, 1, 1, 0, 1, 1, 1, 0, 0, 1]]),
              torch.tensor([[1, 1, 0, 1], [0, 0, 1, 1]])]
    for _ in range(300):  # runs of image tokens (1) among text (0) and other types (2)
        b, length = int(rng.integers(1, 4)), int(rng.integers(1, 40))
        inputs.append(torch.from_numpy(rng.choice([0, 1, 1, 2], size=(b, length))))
    for types in inputs:
        ours = _compat.get_block_sequence_ids_for_mask(types, device="cpu")
        expected = theirs(types, device=torch.device("cpu"))
        assert ours.dtype == expected.dtype and torch.equal(ours, expected), types
    types = torch.tensor([[0, 1, 1, 0, 1]])
    assert _compat.get_block_sequence_ids_for_mask(types).tolist() == [[-1, 0, 0, -1, 1]]


def test_unpadded_size_matches_llava_nexts_unpad_image():
    unpad_image = _transformers_function("llava_next.modeling_llava_next", "unpad_image")
    sizes = [1, 2, 3, 7, 24, 27, 48, 336, 337, 672, 1000, 1008]
    for height, width in itertools.product([1, 2, 24, 27, 48, 72], repeat=2):
        canvas = torch.empty(0, height, width)
        for original in itertools.product(sizes, repeat=2):
            expected = tuple(unpad_image(canvas, original).shape[1:])
            assert _compat.unpadded_size(height, width, original) == expected, (height, width,
                                                                                original)
    assert _compat.unpadded_size(48, 48, (100, 200)) == (24, 48)  # a wide image: rows removed


def test_anyres_grid_shape_matches_llava_nexts():
    grid_shape = _transformers_function("llava_next.modeling_llava_next",
                                        "get_anyres_image_grid_shape")
    pinpoint_sets = [[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
                     [[384, 384], [384, 768], [768, 384], [768, 768], [1152, 384]],
                     [[20, 40], [40, 20], [40, 40]]]
    rng = np.random.default_rng(1)
    for pinpoints in pinpoint_sets:
        tile = min(min(p) for p in pinpoints)
        images = [(int(h), int(w)) for h, w in rng.integers(1, 2500, size=(300, 2))]
        for image in images + [(1, 1), (336, 336), (337, 2000), (2000, 337)]:
            assert _compat.anyres_grid_shape(image, pinpoints, tile) == tuple(
                grid_shape(list(image), pinpoints, tile)), (image, pinpoints)
    assert _compat.anyres_grid_shape((300, 600), pinpoint_sets[0], 336) == (1, 2)
