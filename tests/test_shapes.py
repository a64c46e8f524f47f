import math
import re

import numpy as np
import pytest
import torch

from tinyvit.data import (COLOURS, POSITIONS, RGB, SHAPES, WHERE, ManifestDataset, ShapesConfig, ShapesDataset,
                          caption_options, draw_objects, export_shapes, heldout_pairs, make_item, make_scene,
                          object_name, read_manifest, to_tensor)


def first_word_of(caption: str, words) -> str:
    """The first of `words` named in the caption (whole words only)."""
    hits = [(m.start(), w) for w in words for m in re.finditer(rf"\b{w}\b", caption)]
    return min(hits)[1]


# --- the shapes data set -------------------------------------------------------------------------------------------

def test_make_item_is_a_pure_function_of_seed_split_and_index():
    a, b = make_item(7), make_item(7)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["caption"] == b["caption"] and a["objects"] == b["objects"]
    for other in (make_item(7, seed=1), make_item(8), make_item(7, split="test")):
        assert not np.array_equal(a["image"], other["image"])


@pytest.mark.parametrize("size", [32, 64, 224])
def test_images_of_any_size(size):
    cfg = ShapesConfig(image_size=size)
    item = make_item(3, cfg)
    assert item["image"].shape == (size, size, 3) and item["image"].dtype == np.uint8
    image, caption = ShapesDataset(4, cfg)[3]
    assert image.shape == (3, size, size) and image.dtype == torch.float32 and caption == item["caption"]


def test_drawn_pixels_show_the_labelled_colour():
    checked = 0
    for i in range(60):
        item = make_item(i)
        main = item["objects"][0]
        x, y = (int(c * 64) for c in main["centre"])
        # Every unit polygon contains its centre, so the centre pixel is the object's colour (+ jitter and noise).
        assert np.abs(item["image"][y, x].astype(int) - RGB[COLOURS[item["colour"]]]).max() < 45, item["caption"]
        checked += 1
    assert checked == 60


def test_captions_name_the_labelled_shape_and_colour_first():
    ds = ShapesDataset(500, split="train", seed=3)
    for scene in ds.scenes():
        caption = scene["caption"]
        assert first_word_of(caption, COLOURS) == COLOURS[scene["colour"]], caption
        assert first_word_of(caption, SHAPES) == SHAPES[scene["shape"]], caption
        assert not re.search(r"\ba orange\b", caption) and not re.search(r"\ban (?!orange)", caption), caption


def test_position_words_and_relations_agree_with_the_geometry():
    seen_where = seen_relation = 0
    for scene in ShapesDataset(800, seed=1).scenes():
        objects, caption = scene["objects"], scene["caption"]
        for obj in objects:
            x, y = obj["centre"]
            assert POSITIONS[obj["position"]] == POSITIONS[min(int(y * 3), 2) * 3 + min(int(x * 3), 2)]
            r = obj["size"] / 2
            assert r - 1e-9 <= x <= 1 - r + 1e-9 and r - 1e-9 <= y <= 1 - r + 1e-9  # the shape fits in the image
        if len(objects) == 1 and any(phrase in caption for phrase in WHERE.values()):
            assert caption.endswith(WHERE[POSITIONS[scene["position"]]]), caption
            seen_where += 1
        if len(objects) == 2:
            (x1, y1), (x2, y2) = objects[0]["centre"], objects[1]["centre"]
            for word, holds in (("above", y1 < y2), ("below", y1 > y2), ("to the left of", x1 < x2),
                                ("to the right of", x1 > x2)):
                if f" {word} " in caption:
                    assert holds, caption
                    seen_relation += 1
    assert seen_where > 50 and seen_relation > 50


def test_heldout_pairs_leave_every_shape_and_colour_in_training():
    pairs = heldout_pairs()
    assert len(pairs) == len(SHAPES)
    assert sorted(s for s, _ in pairs) == sorted(SHAPES)  # one per shape
    assert len({c for _, c in pairs}) == len(pairs)  # each colour at most once
    assert all(c in COLOURS for _, c in pairs)


def test_heldout_pairs_never_occur_in_train_and_always_lead_heldout():
    heldout = heldout_pairs()
    train = ShapesDataset(3000, split="train", seed=0).scenes()
    pairs = [(SHAPES[o["shape"]], COLOURS[o["colour"]]) for s in train for o in s["objects"]]
    assert not heldout & set(pairs)
    assert {s for s, _ in pairs} == set(SHAPES) and {c for _, c in pairs} == set(COLOURS)
    assert len(set(pairs)) == len(SHAPES) * len(COLOURS) - len(heldout)  # every other pair does appear
    test = ShapesDataset(500, split="test", seed=0).scenes()
    assert not heldout & {(SHAPES[o["shape"]], COLOURS[o["colour"]]) for s in test for o in s["objects"]}
    for scene in ShapesDataset(500, split="heldout", seed=0).scenes():
        main, *others = scene["objects"]
        assert (SHAPES[main["shape"]], COLOURS[main["colour"]]) in heldout
        for o in others:  # the other object is a seen pair of another shape and colour
            assert (SHAPES[o["shape"]], COLOURS[o["colour"]]) not in heldout
            assert o["shape"] != main["shape"] and o["colour"] != main["colour"]


def test_scenes_have_one_or_two_objects_of_the_configured_sizes():
    counts = [len(s["objects"]) for s in ShapesDataset(400).scenes()]
    assert set(counts) == {1, 2} and 0.3 < counts.count(2) / 400 < 0.7
    sizes = [o["size"] for s in ShapesDataset(400).scenes() for o in s["objects"]]
    assert 0.15 <= min(sizes) < 0.2 and 0.45 < max(sizes) <= 0.5
    assert {len(s["objects"]) for s in ShapesDataset(100, ShapesConfig(max_objects=1)).scenes()} == {1}
    assert {len(s["objects"]) for s in ShapesDataset(100, ShapesConfig(min_objects=2)).scenes()} == {2}


def test_two_objects_do_not_overlap():
    for scene in ShapesDataset(500, ShapesConfig(min_objects=2)).scenes():
        a, b = scene["objects"]
        assert math.dist(a["centre"], b["centre"]) > (a["size"] + b["size"]) / 2


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 4}, "image_size"), ({"max_objects": 3}, "max_objects"),
    ({"min_objects": 2, "max_objects": 1}, "min_objects"),
    ({"min_size": 0.6, "max_size": 0.5}, "min_size"), ({"max_size": 0.9}, "max_size"), ({"noise": -0.1}, "noise"),
    ({"background": (0.8, 0.2)}, "background"), ({"background": (0.5,)}, "background"),
    ({"background": 0.5}, "background"),
])
def test_shapes_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesConfig(**kwargs)


def test_background_sets_the_grey_level_and_reads_a_json_list():
    cfg = ShapesConfig(background=[0.9, 0.9], noise=0.0, texture=0.0, max_size=0.2, min_size=0.2)
    assert cfg.background == (0.9, 0.9)
    corner = make_item(0, cfg)["image"][0, 0].astype(float)  # shapes are 20 % of the side and not in the corner
    assert abs(corner.mean() - 0.9 * 255) <= 11  # + a tint of at most 10 per channel


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        make_item(0, split="validation")


def test_shapes_dataset_labels_captions_and_items_agree():
    ds = ShapesDataset(50, seed=2)
    assert len(ds) == 50 and len(ds.captions) == 50
    items = [ds.item(i) for i in range(50)]
    for key in ("shape", "colour", "position"):
        labels = ds.labels(key)
        assert labels.dtype == torch.long and labels.shape == (50,)
        assert labels.tolist() == [item[key] for item in items]
    assert ds.captions[9] == ds[9][1] == ds[-41][1]
    torch.testing.assert_close(ds[9][0], to_tensor(make_item(9, seed=2)["image"]))
    with pytest.raises(IndexError):
        ds[50]
    with pytest.raises(ValueError, match="label key"):
        ds.labels("size")


def test_a_large_data_set_draws_nothing_until_asked():
    ds = ShapesDataset(100_000)
    image, caption = ds[99_999]  # drawn on demand, from the index alone
    assert image.shape == (3, 64, 64) and caption == make_item(99_999)["caption"]
    assert ds._scenes is None  # no scene was made for the other 99,999 items


def test_swapping_the_main_shape_changes_nothing_else():
    base = make_item(48)
    allowed = [k for k, s in enumerate(SHAPES) if (s, COLOURS[base["colour"]]) not in heldout_pairs()]
    other = next(k for k in allowed if k != base["shape"])
    swapped = make_item(48, shape=other)
    assert swapped["shape"] == other
    assert {k: swapped[k] for k in ("colour", "position")} == {k: base[k] for k in ("colour", "position")}
    for a, b in zip(base["objects"], swapped["objects"]):
        assert (a["size"], a["centre"], a["angle"], a["colour"]) == (b["size"], b["centre"], b["angle"], b["colour"])
    assert swapped["objects"][1:] == base["objects"][1:]
    assert swapped["caption"] == base["caption"].replace(SHAPES[base["shape"]], SHAPES[other], 1)
    changed = np.abs(swapped["image"].astype(int) - base["image"].astype(int)).max(axis=2) > 40
    x, y = base["objects"][0]["centre"]
    S, r = 64, base["objects"][0]["size"] / 2 * 64 + 2
    rows, cols = np.nonzero(changed)
    assert changed.any() and np.all(np.hypot(cols + 0.5 - x * S, rows + 0.5 - y * S) <= r * 1.5)


def test_swapping_into_a_heldout_pair_is_refused():
    index, item = next((i, make_item(i)) for i in range(100) if make_item(i)["colour"] != COLOURS.index("orange"))
    colour = COLOURS[item["colour"]]
    banned = next(k for k, s in enumerate(SHAPES) if (s, colour) in heldout_pairs())
    with pytest.raises(ValueError, match="is a held-out colour-shape pair: not allowed in the 'train' split"):
        make_item(index, shape=banned)


def test_unnamed_colours_are_far_from_every_named_colour_and_captions_name_only_shapes():
    cfg = ShapesConfig(image_size=32, unnamed_fraction=0.5)
    items = [make_item(i, cfg) for i in range(300)]
    unnamed = [item for item in items if item["colour"] == -1]
    assert 100 < len(unnamed) < 200
    for item in unnamed:
        assert not set(item["caption"].split()) & set(COLOURS)
        assert SHAPES[item["shape"]] in item["caption"].split()
        for obj in item["objects"]:
            assert obj["colour"] == -1
            assert min(np.linalg.norm(np.subtract(obj["rgb"], rgb)) for rgb in RGB.values()) >= 120
    # held-out and test splits stay named, and the default config draws exactly the scenes it drew before
    assert all(make_item(i, cfg, "heldout")["colour"] >= 0 for i in range(50))
    assert all(make_item(i, cfg, "test")["colour"] >= 0 for i in range(50))
    plain = ShapesConfig(image_size=32)
    assert all(make_item(i, plain)["colour"] >= 0 for i in range(50))


def test_export_shapes_round_trips_through_the_manifest(tmp_path):
    cfg = ShapesConfig(image_size=32)
    manifest = export_shapes(tmp_path / "shapes", 12, cfg, split="heldout", seed=4)
    items = read_manifest(manifest)
    ds = ShapesDataset(12, cfg, split="heldout", seed=4)
    assert [i["caption"] for i in items] == ds.captions
    assert [i["label"] for i in items] == [i["shape_label"] for i in items] == ds.labels("shape").tolist()
    assert [i["colour_label"] for i in items] == ds.labels("colour").tolist()
    assert [i["position_label"] for i in items] == ds.labels("position").tolist()
    manifest_ds = ManifestDataset(manifest, image_size=32)
    torch.testing.assert_close(manifest_ds[5][0], ds[5][0])  # PNG is lossless: the same pixels
    assert manifest_ds.labels("colour_label").tolist() == ds.labels("colour").tolist()
    classes = (tmp_path / "shapes" / "classes_shape.txt").read_text().splitlines()
    assert classes == ["a circle", "a square", "a triangle", "a star", "a cross"]
    colours = (tmp_path / "shapes" / "classes_colour.txt").read_text().splitlines()
    assert len(colours) == len(COLOURS) and colours[COLOURS.index("orange")] == "an orange shape"
    assert len((tmp_path / "shapes" / "classes_position.txt").read_text().splitlines()) == len(POSITIONS)


def test_make_scene_then_draw_objects_is_make_item():
    cfg = ShapesConfig(image_size=32, unnamed_fraction=0.3)
    for i in range(20):
        scene, rng = make_scene(i, cfg, "train", seed=3)
        item = make_item(i, cfg, "train", seed=3)
        assert scene == {k: v for k, v in item.items() if k != "image"}  # labels and caption need no drawing
        np.testing.assert_array_equal(draw_objects(scene["objects"], cfg, rng), item["image"])


def test_caption_options_hold_every_caption_the_data_set_writes():
    for scene in ShapesDataset(200, ShapesConfig(unnamed_fraction=0.3), seed=5).scenes():
        options = caption_options(scene["objects"])
        assert scene["caption"] in options and len(options) == (3 if len(scene["objects"]) == 2 else 6)
        main = scene["objects"][0]
        assert all(SHAPES[main["shape"]] in option.split() for option in options)
        assert options[0] == ("an " if object_name(main)[0] in "aeiou" else "a ") + object_name(main) \
            or len(scene["objects"]) == 2


def test_shapes_config_holds_drawing_fields_only_and_round_trips_through_json():
    cfg = ShapesConfig(image_size=32, background=(0.75, 0.95), unnamed_fraction=0.3)
    assert ShapesConfig.from_dict(cfg.to_dict()) == cfg
    for research in ("hard_fraction", "shape_first_steps", "binding_fraction", "late_background", "place_fraction"):
        with pytest.raises(ValueError, match=f"unknown ShapesConfig key '{research}'"):
            ShapesConfig.from_dict({research: 1})
    with pytest.raises(ValueError, match="image_size must be an integer >= 8, got True"):
        ShapesConfig(image_size=True)
