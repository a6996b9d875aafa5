"""Pictures of kept tokens (greedyprune.viz): sizes, which pixels are highlighted, and layouts
that agree with how the models order their visual tokens."""
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from greedyprune import viz

GRAY = 200
SHADED = np.round(GRAY * 0.3 + np.array(viz.SHADE) * 0.7).astype(int)  # the default dim = 0.7


def gray(width, height):
    return Image.new("RGB", (width, height), (GRAY, GRAY, GRAY))


def cell(picture, rows, cols, r, c, top=0):
    """Pixels of cell (r, c), without its 1-px border (where outlines are drawn)."""
    a = np.asarray(picture)[top:]
    h, w = a.shape[0] / rows, a.shape[1] / cols
    return a[round(r * h) + 1:round((r + 1) * h) - 1, round(c * w) + 1:round((c + 1) * w) - 1]


def test_kept_patches_keep_their_pixels_and_pruned_ones_are_shaded():
    out = viz.draw_kept(gray(240, 240), [0, 5, 13], 4)
    assert out.size == (240, 240) and out.mode == "RGB"
    for index in range(16):
        pixels = cell(out, 4, 4, index // 4, index % 4)
        expected = [GRAY] * 3 if index in (0, 5, 13) else SHADED.tolist()
        assert (pixels.reshape(-1, 3) == expected).all(), index


def test_outline_surrounds_the_kept_region_only():
    out = np.asarray(viz.draw_kept(gray(100, 100), [0, 1], (2, 2)))
    assert tuple(out[0, 10]) == viz.HIGHLIGHT           # top edge of a kept cell
    assert tuple(out[49, 10]) == viz.HIGHLIGHT          # bottom edge, bordering a pruned cell
    assert tuple(out[10, 49]) != viz.HIGHLIGHT          # between two kept cells: no line
    assert tuple(out[75, 75]) == tuple(SHADED)


def test_sizes_scale_title_and_center_crop():
    image = gray(300, 200)
    assert viz.draw_kept(image, [1], (2, 3)).size == (300, 200)
    assert viz.draw_kept(image, [1], (2, 3), scale=2).size == (600, 400)
    titled = viz.draw_kept(image, [1], (2, 3), title="kept 1 of 6")
    assert titled.width == 300 and titled.height > 200
    # The top strip is the title; the picture below it is unchanged.
    np.testing.assert_array_equal(np.asarray(titled)[-200:], np.asarray(viz.draw_kept(image, [1], (2, 3))))
    assert viz.draw_kept(image, [1], viz.llava_layout(4)).size == (200, 200)


def test_center_crop_shows_the_centre_square():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 100:200] = 255  # white centre square, black sides
    out = np.asarray(viz.draw_kept(image, [0, 1, 2, 3], viz.llava_layout(4)))
    assert out.shape == (100, 100, 3) and out[5:95, 5:95].min() == 255


def test_selection_order_is_written_when_it_fits_and_left_out_otherwise():
    image = gray(480, 480)
    plain = viz.draw_kept(image, [3, 7], 4)
    numbered = viz.draw_kept(image, [3, 7], 4, order=[7, 3])
    assert not np.array_equal(cell(plain, 4, 4, 1, 3), cell(numbered, 4, 4, 1, 3))
    np.testing.assert_array_equal(cell(plain, 4, 4, 3, 3), cell(numbered, 4, 4, 3, 3))  # pruned
    small = gray(48, 48)  # 2-px cells: no room for digits
    np.testing.assert_array_equal(viz.draw_kept(small, [3, 7], 24),
                                  viz.draw_kept(small, [3, 7], 24, order=[7, 3]))
    np.testing.assert_array_equal(np.asarray(numbered), np.asarray(viz.draw_kept(image, None, 4, order=[7, 3])))


def test_image_inputs_array_float_gray_and_path(tmp_path):
    kept = [0, 3]
    ref = np.asarray(viz.draw_kept(gray(20, 20), kept, 2))
    np.testing.assert_array_equal(np.asarray(viz.draw_kept(np.full((20, 20, 3), GRAY, np.uint8), kept, 2)), ref)
    np.testing.assert_array_equal(np.asarray(viz.draw_kept(np.full((20, 20), GRAY / 255), kept, 2)), ref)
    gray(20, 20).save(tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(viz.draw_kept(tmp_path / "g.png", kept, 2)), ref)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(np.asarray(viz.draw_kept(gray(20, 20), torch.tensor(kept), 2)), ref)


def test_qwen_grid_is_row_major_over_the_whole_image():
    layout = viz.qwen_layout([1, 8, 12])  # 8x12 patches merged 2x2 -> 4x6 tokens
    assert layout == [viz.Panel(4, 6)]
    out = viz.draw_kept(gray(360, 240), [6 + 4], layout)  # token 10 = row 1, col 4
    assert out.size == (360, 240)
    assert (cell(out, 4, 6, 1, 4) == GRAY).all() and (cell(out, 4, 6, 0, 4) != GRAY).all()
    with pytest.raises(ValueError, match="merge_size"):
        viz.qwen_layout([1, 7, 12])


def test_newline_tokens_are_not_patches():
    panel = viz.Panel(2, 3, newline=True)  # tokens 0 1 2 [3] 4 5 6 [7]
    out = viz.draw_kept(gray(90, 60), [3, 4], panel)
    body = out.crop((0, out.height - 60, 90, out.height))
    assert (cell(body, 2, 3, 1, 0) == GRAY).all()  # token 4 = row 1, col 0
    assert not (cell(body, 2, 3, 0, 0) == GRAY).all()
    assert out.height > 60  # the title line counts kept separators


def test_llava_next_layout_matches_the_models_packing():
    pytest.importorskip("transformers")
    import torch
    from transformers import LlavaNextConfig
    from transformers.models.llava_next.modeling_llava_next import (
        LlavaNextModel, get_anyres_image_grid_shape)

    config = LlavaNextConfig(
        vision_config=dict(image_size=16, patch_size=4, hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=8),
        text_config=dict(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=8),
        image_grid_pinpoints=[[16, 32], [32, 16], [32, 32]])
    side = 4
    for image_size in [(30, 50), (50, 30), (40, 40), (16, 40)]:
        crops_h, crops_w = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, 16)
        # One feature vector per patch; value 0 marks patches, the newline embedding is 1.
        features = torch.zeros(1 + crops_h * crops_w, side * side, 1)
        fake_model = SimpleNamespace(config=config)
        packed, lengths = LlavaNextModel.pack_image_features(
            fake_model, [features], torch.tensor([image_size]), "default", torch.ones(1))
        layout = viz.llava_next_layout(image_size, config)
        total = layout[-1].start + layout[-1].num_tokens
        assert int(lengths[0]) == total, image_size
        newline_at = [layout[1].start + r * (layout[1].cols + 1) + layout[1].cols
                      for r in range(layout[1].rows)]
        assert torch.nonzero(packed[0][:, 0]).flatten().tolist() == newline_at, image_size
        picture = viz.draw_kept(gray(image_size[1], image_size[0]), newline_at[:1] + [0], layout)
        assert picture.width == 2 * image_size[1] + 8


def test_draw_record_from_a_handle_record():
    record = {"images": [{"n_tokens": 16, "kept": [0, 5], "order": [5, 0]},
                         {"n_tokens": 12, "kept": [2], "grid": [1, 6, 8]}]}
    first = viz.draw_record(gray(160, 160), record, 0)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(
        viz.draw_kept(gray(160, 160), [0, 5], viz.llava_layout(16), order=[5, 0])))
    second = viz.draw_record(gray(160, 120), record, 1)
    np.testing.assert_array_equal(np.asarray(second), np.asarray(
        viz.draw_kept(gray(160, 120), [2], viz.qwen_layout([1, 6, 8]))))
    with pytest.raises(ValueError, match="no grid"):
        viz.draw_record(gray(10, 10), {"n_tokens": 12, "kept": [1]})


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(kept=[16]), ValueError, "outside"),
    (dict(kept=[1, 1]), ValueError, "repeated"),
    (dict(kept=[1.5]), TypeError, "integer"),
    (dict(grid="4"), TypeError, "grid must be"),
    (dict(order=[2]), ValueError, "order must hold kept indices"),
    (dict(image=np.zeros((4, 4, 2))), ValueError, "image must be"),
    (dict(scale=0), ValueError, "scale"),
    (dict(num_tokens=3), ValueError, "num_tokens"),
])
def test_bad_arguments(kwargs, error, words):
    args = dict(image=gray(40, 40), kept=[1], grid=4)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        viz.draw_kept(args.pop("image"), args.pop("kept"), args.pop("grid"), **args)


# --- the PatchGrid of greedyprune.hf records ---------------------------------------------------


def next_grid():
    """A LLaVA-NeXT-like PatchGrid: 2x2 base patches, then a 1x2-crop canvas (2x4 patches over
    20x40 px) whose rows end with a separator token: 4 + 2 * (4 + 1) = 14 tokens."""
    from greedyprune.hf import PatchGrid

    source = [(0, r, c) for r in range(2) for c in range(2)]
    for r in range(2):
        source += [(1, r, c) for c in range(4)] + [(-1, -1, -1)]
    return PatchGrid(patch_side=2, token_source=np.array(source), crop_grid=(1, 2),
                     canvas_pixels=(20, 40), image_size=(20, 40))


def test_patch_grid_views_base_and_canvas():
    pytest.importorskip("torch")
    grid = next_grid()
    out = viz.draw_kept(gray(40, 20), [0, 4 + 5 + 3, 8], grid)  # base (0,0); canvas (1,3); sep
    body = out.crop((0, out.height - 20, out.width, out.height))
    assert out.width == 40 + 8 + 40  # base and canvas side by side
    base, canvas = body.crop((0, 0, 40, 20)), body.crop((48, 0, 88, 20))
    assert (cell(base, 2, 2, 0, 0) == GRAY).all() and not (cell(base, 2, 2, 1, 1) == GRAY).all()
    assert (cell(canvas, 2, 4, 1, 3) == GRAY).all() and not (cell(canvas, 2, 4, 0, 0) == GRAY).all()


def test_padded_canvas_shows_the_padding():
    pytest.importorskip("torch")
    grid = next_grid()
    square = gray(20, 20)  # a square image on a 2:1 canvas: padded left and right
    out = viz.draw_kept(square, list(range(14)), grid, dim=0)
    canvas = np.asarray(out)[-20:, 20 + 8:]
    assert (canvas[2:18, 2] == 128).all() and (canvas[5:15, 20] == GRAY).all()


def test_draw_record_takes_handle_last_entries():
    pytest.importorskip("torch")
    from greedyprune.hf import ImageRecord

    entry = ImageRecord(row=0, index=0, index_in_row=0, modality="image", n_tokens=14,
                        tokens_before=12, tokens_after=2, kept=np.array([0, 8, 12]),
                        kept_positions=np.array([5, 13, 17]), select_seconds=0.0,
                        grid=next_grid())
    direct = viz.draw_kept(gray(40, 20), [0, 8, 12], next_grid())
    for record in (entry, [entry], SimpleNamespace(images=(entry,))):
        np.testing.assert_array_equal(np.asarray(viz.draw_record(gray(40, 20), record)),
                                      np.asarray(direct))


def test_patch_grid_with_a_rectangular_grid_covers_the_whole_image():
    pytest.importorskip("torch")
    from greedyprune.hf import PatchGrid

    source = np.array([(0, r, c) for r in range(2) for c in range(3)])  # Qwen-like 2x3 grid
    out = viz.draw_kept(gray(90, 60), [5], PatchGrid(patch_side=14, token_source=source))
    assert out.size == (90, 60)
    assert (cell(out, 2, 3, 1, 2) == GRAY).all() and not (cell(out, 2, 3, 0, 0) == GRAY).all()


def test_draw_record_of_a_real_llava_next_prefill():
    """Smoke test on real records: a random-weight LLaVA-NeXT with LLaVA-1.6's geometry
    (336-px crops, 2x2 canvas for a wide image), pruned through greedyprune.hf."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from greedyprune import demo
    from greedyprune.hf import attach

    pinpoints = [[336, 672], [672, 336], [672, 672]]
    image_processor = (getattr(transformers, "LlavaNextImageProcessorPil", None)
                       or transformers.LlavaNextImageProcessor)(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=pinpoints)
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor, tokenizer=demo.byte_tokenizer(), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1)
    widths = demo.SIZES["tiny"]
    config = transformers.LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=336, patch_size=14,
                           projection_dim=32, **widths["vision"]),
        text_config=dict(model_type="llama", vocab_size=261, **widths["text"]),
        image_token_id=4, image_grid_pinpoints=pinpoints, vision_feature_layer=-2)
    torch.manual_seed(0)
    model = transformers.LlavaNextForConditionalGeneration(config).eval()
    image = gray(600, 380)
    inputs = processor(images=image, text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
    with attach(model, keep=100) as handle, torch.inference_mode():
        model(**inputs)
    entry = handle.last[0]
    out = viz.draw_record(image, handle.last, 0)
    assert entry.grid.crop_grid == (2, 2) and entry.tokens_after == 100
    canvas_width = round(672 * 380 / 672)
    assert out.width == 600 + 8 + canvas_width and out.height > 380


def _square_patch_grid(side, views=1, center_crop=False):
    from greedyprune.hf import PatchGrid

    v, r, c = np.meshgrid(np.arange(views), np.arange(side), np.arange(side), indexing="ij")
    source = np.stack([v.ravel(), r.ravel(), c.ravel()], axis=1)
    return PatchGrid(patch_side=side, token_source=source, center_crop=center_crop)


def test_patch_grid_crops_the_centre_only_when_the_record_says_so():
    image = gray(300, 200)
    whole = viz.draw_kept(image, [0], _square_patch_grid(4))           # e.g. Gemma 3, Qwen 4x4
    cropped = viz.draw_kept(image, [0], _square_patch_grid(4, center_crop=True))  # CLIP LLaVA
    assert whole.size == (300, 200) and cropped.size == (200, 200)


def test_video_record_draws_one_panel_per_frame_view():
    frames = [Image.new("RGB", (60, 40), (10 * t, 10 * t, 10 * t)) for t in range(4)]
    grid = _square_patch_grid(2, views=2)  # Qwen video: views are frame pairs
    out = viz.draw_kept(frames, [0, 5], grid, dim=0)
    assert out.width == 2 * 60 + 8  # two panels, 8 px apart
    one_picture = viz.draw_kept(frames[0], [0, 5], grid, dim=0)
    assert one_picture.size == out.size
    # The second panel shows the frame at its share of the list (frame 2 of 4).
    right = np.asarray(out)[-40:, 60 + 8:]
    assert right[20, 45].tolist() == [20, 20, 20]


def test_records_have_short_reprs():
    from greedyprune.hf import ImageRecord, PatchGrid, PrefillRecord

    grid = PatchGrid(patch_side=24, token_source=np.zeros((576, 3), dtype=np.int64))
    kept = np.arange(0, 576, 9)
    image = ImageRecord(row=0, index=1, index_in_row=1, modality="image", n_tokens=576,
                        tokens_before=576, tokens_after=64, kept=kept, kept_positions=kept + 5,
                        select_seconds=0.00125, grid=grid)
    record = PrefillRecord(images=(image, image), seq_len_before=1200, seq_len_after=176,
                           source_positions=np.zeros((1, 176), dtype=np.int64),
                           seconds={"select": 0.0025, "gather": 0.001})
    # Counts, not index lists: a record shows in a notebook in a line or two.
    assert repr(grid) == "PatchGrid(patch_side=24, tokens=576)"
    assert repr(next_grid()) == ("PatchGrid(patch_side=2, tokens=14, crop_grid=(1, 2), "
                                 "canvas_pixels=(20, 40), image_size=(20, 40))")
    assert repr(image) == ("ImageRecord(row=0, index=1, modality='image', tokens 576 -> 64, "
                           "n_tokens=576, select=1.25 ms)")
    assert repr(record) == ("PrefillRecord(images=2, visual tokens 1152 -> 128, sequence "
                            "1200 -> 176, hook=3.50 ms)")
