import dataclasses
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinyvit.data import (COLOURS, IMAGE_MEAN, POSITIONS, RGB, SHAPES, WHERE, Batches, HardNegativeBatches,
                          ManifestDataset, ShapesConfig, ShapesDataset, caption_options, denormalize, export_shapes,
                          heldout_pairs, load_image, make_item, object_name, read_manifest, to_tensor)


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


def test_a_large_stream_is_cheap_to_create():
    start = time.perf_counter()
    ds = ShapesDataset(100_000)
    image, _ = ds[99_999]
    assert time.perf_counter() - start < 1.0 and image.shape == (3, 64, 64)


# --- tensors ---------------------------------------------------------------------------------------------------------

def test_to_tensor_and_denormalize_round_trip():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = to_tensor(image)
    assert x.shape == (3, 5, 7) and x.min() >= -1 and x.max() <= 1
    assert float(to_tensor(np.zeros((1, 1, 3), np.uint8))[0, 0, 0]) == pytest.approx(-IMAGE_MEAN[0] / 0.5)
    back = denormalize(x)
    assert back.shape == (5, 7, 3)
    np.testing.assert_array_equal((back * 255).round().to(torch.uint8).numpy(), image)
    assert denormalize(x[None].repeat(2, 1, 1, 1)).shape == (2, 5, 7, 3)
    torch.testing.assert_close(to_tensor(Image.fromarray(image)), x)


def test_to_tensor_refuses_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_tensor(np.zeros((4, 4), np.uint8))


# --- images and manifests -----------------------------------------------------------------------------------------

def write_manifest(folder, items, jsonl=False, name=None):
    path = folder / (name or ("m.jsonl" if jsonl else "m.json"))
    text = "\n".join(json.dumps(i) for i in items) if jsonl else json.dumps(items)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def pictures(tmp_path):
    """Small images in the modes users bring: RGB, grey, palette, RGBA with a transparent half, CMYK, 16-bit."""
    (tmp_path / "img").mkdir()
    rgb = Image.new("RGB", (20, 10), (200, 30, 40))
    rgb.save(tmp_path / "img" / "rgb.png")
    Image.new("L", (10, 10), 90).save(tmp_path / "img" / "grey.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "img" / "palette.png")
    rgba = Image.new("RGBA", (10, 10), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 10, 5))  # the top half fully transparent
    rgba.save(tmp_path / "img" / "rgba.png")
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(tmp_path / "img" / "cmyk.jpg")
    Image.fromarray(np.full((10, 10), 40000, np.uint16)).save(tmp_path / "img" / "grey16.png")
    return tmp_path


def test_load_image_converts_every_mode_to_rgb(pictures):
    def pixels(name):
        return (denormalize(load_image(pictures / "img" / name, 8)) * 255).round()
    assert load_image(pictures / "img" / "rgb.png", 8).shape == (3, 8, 8)  # 20x10 resized to 8x8
    torch.testing.assert_close(pixels("rgb.png")[4, 4], torch.tensor([200.0, 30, 40]), atol=1, rtol=0)
    torch.testing.assert_close(pixels("grey.png")[4, 4], torch.tensor([90.0, 90, 90]))
    torch.testing.assert_close(pixels("palette.png")[4, 4], torch.tensor([200.0, 30, 40]), atol=3, rtol=0)
    rgba = pixels("rgba.png")
    torch.testing.assert_close(rgba[0, 0], torch.tensor([255.0, 255, 255]))  # transparent -> white
    torch.testing.assert_close(rgba[7, 0], torch.tensor([0.0, 0, 255]))
    assert pixels("cmyk.jpg")[4, 4][0] > 200 and pixels("cmyk.jpg")[4, 4][1:].max() < 40  # CMYK red -> RGB red
    torch.testing.assert_close(pixels("grey16.png")[4, 4], torch.full((3,), float(round(40000 / 257))))


def test_manifest_json_list_and_jsonl_give_the_same_items(pictures):
    items = [{"image": "img/rgb.png", "caption": "a red box", "label": 1, "source": "me"},
             {"image": "img/grey.png", "caption": "a grey square", "label": 0}]
    from_list = read_manifest(write_manifest(pictures, items))
    jsonl = pictures / "m.jsonl"
    jsonl.write_text(json.dumps(items[0]) + "\n\n" + json.dumps(items[1]) + "\n\n", encoding="utf-8")  # blank lines ok
    assert read_manifest(jsonl) == from_list
    assert from_list[0]["image"] == str((pictures / "img" / "rgb.png").resolve())
    assert from_list[0]["source"] == "me"  # other keys kept
    ds = ManifestDataset(jsonl, image_size=16)
    image, caption = ds[1]
    assert image.shape == (3, 16, 16) and caption == "a grey square" and ds.captions == ["a red box", "a grey square"]
    assert ds.labels().tolist() == [1, 0]
    assert len(ManifestDataset(from_list, 16)) == 2  # items given directly


def test_missing_images_are_all_named_at_once(pictures):
    items = [{"image": f"img/gone_{k}.png", "caption": "x"} for k in range(3)]
    items.append({"image": "img/rgb.png", "caption": "y"})
    with pytest.raises(FileNotFoundError) as err:
        read_manifest(write_manifest(pictures, items))
    assert all(f"gone_{k}.png" in str(err.value) for k in range(3)) and "3 image file(s)" in str(err.value)
    many = [{"image": f"lost_{k:02d}.png", "caption": "x"} for k in range(25)]
    with pytest.raises(FileNotFoundError, match=r"25 image file\(s\).*lost_19\.png and 5 more") as err:
        read_manifest(write_manifest(pictures, many))
    assert "lost_20.png" not in str(err.value)


def test_corrupt_image_names_the_file(pictures):
    (pictures / "img" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"broken\.png is not a readable image"):
        load_image(pictures / "img" / "broken.png", 8)
    good = (pictures / "img" / "rgb.png").read_bytes()
    (pictures / "img" / "cut.png").write_bytes(good[: len(good) // 2])  # a truncated file
    ds = ManifestDataset(write_manifest(pictures, [{"image": "img/cut.png", "caption": "half"}]), 8)
    with pytest.raises(ValueError, match=r"cut\.png is not a readable image"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        load_image(pictures / "nowhere.png", 8)


@pytest.mark.parametrize("caption, message", [("", "line 2: caption is empty"), ("   ", "line 2: caption is empty"),
                                              (7, "line 2: caption must be a string, got int")])
def test_bad_captions_name_their_line(pictures, caption, message):
    items = [{"image": "img/rgb.png", "caption": "fine"}, {"image": "img/grey.png", "caption": caption}]
    with pytest.raises(ValueError, match=message):
        read_manifest(write_manifest(pictures, items, jsonl=True))
    with pytest.raises(ValueError, match=message.replace("line", "item")):
        read_manifest(write_manifest(pictures, items))


def test_bad_json_names_the_line(pictures):
    path = pictures / "m.jsonl"
    path.write_text('{"image": "img/rgb.png", "caption": "ok"}\n{"image": "img/grey.png", "caption": }\n',
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.jsonl, line 2: not valid JSON"):
        read_manifest(path)
    path = pictures / "m.json"
    path.write_text('[{"image": "img/rgb.png",\n "caption": "ok"},\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.json is not valid JSON: .* at line 3"):
        read_manifest(path)


def test_bad_utf8_is_refused(pictures):
    path = pictures / "m.jsonl"
    path.write_bytes(b'{"image": "img/rgb.png", "caption": "ok"}\n{"image": "img/rgb.png", "caption": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl is not valid UTF-8 \(line 2, byte 82\)"):
        read_manifest(path)


def test_other_manifest_errors(pictures):
    with pytest.raises(ValueError, match="holds no items"):
        read_manifest(write_manifest(pictures, []))
    empty = pictures / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no items"):
        read_manifest(empty)
    with pytest.raises(ValueError, match="item 1: expected an object"):
        read_manifest(write_manifest(pictures, [["img/rgb.png", "a caption"]]))
    with pytest.raises(ValueError, match="line 1: missing 'caption'"):
        read_manifest(write_manifest(pictures, [{"image": "img/rgb.png", "text": "a"}], jsonl=True))
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(pictures / "nope.json")
    ds = ManifestDataset(write_manifest(pictures, [{"image": "img/rgb.png", "caption": "a", "label": "red"}]), 8)
    with pytest.raises(ValueError, match="no integer 'label'"):
        ds.labels()


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


# --- batches -------------------------------------------------------------------------------------------------------

def test_batches_are_a_pure_function_of_seed_and_step():
    ds = ShapesDataset(10, ShapesConfig(image_size=16))
    batches = Batches(ds, 4, seed=1)
    late = batches(5)
    early = [batches(s)[2] for s in range(5)]
    fresh = Batches(ShapesDataset(10, ShapesConfig(image_size=16)), 4, seed=1)
    images, captions, indices = fresh(5)
    assert images.shape == (4, 3, 16, 16) and indices.dtype == torch.long
    torch.testing.assert_close(images, late[0])
    assert captions == late[1] == [ds.captions[i] for i in indices]
    assert [fresh.indices(s).tolist() for s in range(5)] == [e.tolist() for e in early]
    assert Batches(ds, 4, seed=2).indices(0).tolist() != batches.indices(0).tolist()


def test_batches_cover_every_item_once_per_epoch():
    n, B = 10, 4
    batches = Batches(ShapesDataset(n, ShapesConfig(image_size=16)), B, seed=0)
    flat = torch.cat([batches.indices(s) for s in range(3 * n // 2)]).tolist()  # 60 draws = 6 epochs
    epochs = [flat[e * n:(e + 1) * n] for e in range(6)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # a fresh permutation each epoch
    with pytest.raises(ValueError, match="step"):
        batches.indices(-1)


def test_batches_work_on_a_manifest(pictures):
    items = [{"image": "img/rgb.png", "caption": "red"}, {"image": "img/grey.png", "caption": "grey"},
             {"image": "img/rgba.png", "caption": "blue"}]
    images, captions, indices = Batches(ManifestDataset(write_manifest(pictures, items), 8), 2)(1)
    assert images.shape == (2, 3, 8, 8) and captions == [items[i]["caption"] for i in indices]


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


def test_hard_negative_groups_differ_only_in_shape():
    batches = HardNegativeBatches(ShapesConfig(image_size=32), batch_size=16, group_size=4, hard_fraction=0.5)
    images, captions, indices = batches(5)
    assert images.shape == (16, 3, 32, 32) and len(captions) == 16 and indices.shape == (16,)
    plan = batches.plan(5)
    groups = {}
    assert all(place is None and bind is None for _, _, place, bind in plan)  # no place or binding groups unless asked
    for (index, shape, _, _), caption in zip(plan, captions):
        if shape is not None:
            groups.setdefault(index, []).append((shape, caption))
    assert len(groups) == 2
    for index, members in groups.items():
        shapes = [shape for shape, _ in members]
        assert len(set(shapes)) == 4  # four different shapes of one scene
        colour = COLOURS[make_item(index, ShapesConfig(image_size=32))["colour"]]
        assert all((SHAPES[s], colour) not in heldout_pairs() for s in shapes)
        words = [set(caption.split()) for _, caption in members]
        common = set.intersection(*words)
        assert all(len(w - common) == 1 and (w - common) <= set(SHAPES) | {"a", "an"} for w in words)
    assert sum(shape is None for _, shape, _, _ in plan) == 8
    torch.testing.assert_close(batches(5)[0], images)  # a pure function of the step


def test_hard_negative_batches_check_their_settings():
    with pytest.raises(ValueError, match="group_size must be between 2 and 4"):
        HardNegativeBatches(ShapesConfig(), 16, group_size=5)
    with pytest.raises(ValueError, match=r"hard_fraction must be in \[0, 1\]"):
        HardNegativeBatches(ShapesConfig(), 16, hard_fraction=2)
    with pytest.raises(ValueError, match="heldout split"):
        HardNegativeBatches(ShapesConfig(), 16, split="heldout")


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


def test_hard_negative_groups_of_unnamed_colours_may_use_every_shape():
    cfg = ShapesConfig(image_size=32, unnamed_fraction=1.0)
    batches = HardNegativeBatches(cfg, batch_size=40, group_size=4, hard_fraction=1.0)
    plan = batches.plan(0)
    assert {shape for _, shape, _, _ in plan} == set(range(len(SHAPES)))
    assert all(make_item(plan[0][0], cfg, shape=k)["shape"] == k for k in range(len(SHAPES)))


def test_hard_negative_attributes_describe_the_drawn_items():
    cfg = ShapesConfig(image_size=32, unnamed_fraction=0.3, hard_fraction=0.5, place_fraction=0.5)
    batches = HardNegativeBatches(cfg, batch_size=16)
    attributes = batches.attributes(2)
    items = [make_item(index, cfg, shape=shape, place=place) for index, shape, place, _ in batches.plan(2)]
    assert attributes.tolist() == [[item["shape"], item["colour"]] for item in items]
    batches(3)  # a drawn batch's labels are reused for its own step, and only for it
    assert torch.equal(batches.attributes(3), HardNegativeBatches(cfg, batch_size=16).attributes(3))
    assert torch.equal(batches.attributes(2), attributes)


DIGITS = Path(__file__).resolve().parents[1] / "data" / "digits"


def test_shipped_digits_manifests_are_complete_disjoint_and_balanced():
    train, test = read_manifest(DIGITS / "train.jsonl"), read_manifest(DIGITS / "test.jsonl")
    assert (len(train), len(test)) == (1497, 300)
    assert not {i["image"] for i in train} & {i["image"] for i in test}
    assert len({i["image"] for i in train + test}) == len(list((DIGITS / "images").glob("*.png"))) == 1797
    assert np.bincount([i["label"] for i in test]).tolist() == [30] * 10
    words = (DIGITS / "classes.txt").read_text().splitlines()
    assert len(words) == 10 and words[7] == "a handwritten seven"
    for item in train + test:  # every caption names its own digit, as a word or a numeral
        word = words[item["label"]].split()[-1]
        assert word in item["caption"].split() or str(item["label"]) in item["caption"], item


def test_shipped_digit_scans_load_as_rgb_at_any_size():
    ds = ManifestDataset(DIGITS / "test.jsonl", image_size=32)
    image, caption = ds[0]
    assert image.shape == (3, 32, 32) and caption == ds.items[0]["caption"]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey scans: equal channels
    with Image.open(ds.items[0]["image"]) as raw:
        assert raw.size == (8, 8) and raw.mode == "L"


def test_place_groups_differ_only_in_where_and_how_big():
    cfg = ShapesConfig(image_size=32, hard_fraction=1.0, place_fraction=0.5)
    batches = HardNegativeBatches(cfg, batch_size=16, group_size=4)
    images, captions, indices = batches(3)
    plan = batches.plan(3)
    assert [place is not None for _, _, place, _ in plan] == [False] * 8 + [True] * 8  # the last two of four groups
    for g in (2, 3):
        members = [make_item(index, cfg, shape=shape, place=place) for index, shape, place, _ in plan[4 * g: 4 * g + 4]]
        base = make_item(plan[4 * g][0], cfg)
        assert len({m["position"] for m in members}) == 4 and {m["position"] for m in members} == \
            {place for _, _, place, _ in plan[4 * g: 4 * g + 4]}
        for m in members:
            assert (m["shape"], m["colour"], len(m["objects"])) == (base["shape"], base["colour"], 1)
            assert m["objects"][0]["angle"] == base["objects"][0]["angle"]
            assert cfg.min_size <= m["objects"][0]["size"] <= cfg.max_size
            assert m["caption"] == caption_options(m["objects"], cfg)[3]  # size, colour, shape and place
            x, y = m["objects"][0]["centre"]
            assert min(int(y * 3), 2) * 3 + min(int(x * 3), 2) == m["position"]
        assert len({m["caption"] for m in members}) == 4
    assert torch.equal(indices[8:12], torch.full((4,), plan[8][0]))  # a group shares its scene index
    with pytest.raises(ValueError, match="place_fraction must be in"):
        ShapesConfig(place_fraction=1.5)
    with pytest.raises(ValueError, match="place must be a position index 0-8, got 9"):
        make_item(0, cfg, place=9)


def test_late_backgrounds_start_after_the_shape_phase_and_take_whole_groups():
    cfg = ShapesConfig(image_size=32, background=(0.8, 0.95), late_background=[0.05, 0.15], late_background_share=0.5,
                       hard_fraction=1.0, shape_first_steps=2, noise=0.0, texture=0.0)
    assert cfg.late_background == (0.05, 0.15)  # a JSON list becomes a pair
    batches = HardNegativeBatches(cfg, batch_size=16, group_size=4)

    def dark(step):  # per item: is its top-left corner (a shape seldom reaches it) on dark paper?
        images = batches(step)[0]  # (16, 3, 32, 32), normalised to [-1, 1]
        grey = images[:, :, :2, :2].mean((1, 2, 3)) * 0.5 + 0.5  # (16,) in [0, 1]
        light_or_dark = (grey > 0.7) | (grey < 0.25)
        assert light_or_dark.float().mean() > 0.9  # nothing in between: the corners show the paper
        return (grey < 0.25).view(4, 4)  # (groups, copies)

    assert not any(dark(step).any() for step in (0, 1))  # the shape phase stays on light paper
    later = torch.stack([dark(step) for step in range(2, 12)])  # (10, 4, 4)
    by_group = later.float().mean(-1)  # (10, 4): 0 or 1 when a group's copies share their paper
    assert ((by_group == 0) | (by_group == 1)).float().mean() > 0.9
    assert 0.3 < later.float().mean() < 0.7  # about half the scenes
    assert all(batches.scene_config(step, 7) is cfg for step in (0, 1))
    with pytest.raises(ValueError, match=r"late_background must be a \(low, high\) pair"):
        ShapesConfig(late_background=(0.9, 0.3))
    with pytest.raises(ValueError, match="late_background_share must be in"):
        ShapesConfig(late_background_share=1.5)


def test_a_late_background_ramp_grows_the_share_linearly_then_holds_it():
    cfg = ShapesConfig(image_size=16, background=(0.8, 0.95), late_background=(0.3, 0.7), late_background_share=0.8,
                       late_background_ramp=100, hard_fraction=1.0, shape_first_steps=50)
    batches = HardNegativeBatches(cfg, batch_size=16)

    def late_share(step: int, n: int = 4000) -> float:  # over many scene indices: a seeded draw per scene
        return sum(batches.scene_config(step, index) is not cfg for index in range(n)) / n

    assert late_share(49) == 0.0  # the shape phase: none
    assert late_share(50) < 0.03  # the first step after it: 0.8 / 100
    assert abs(late_share(99) - 0.4) < 0.03  # half way up the ramp: half the share
    assert abs(late_share(149) - 0.8) < 0.03 and abs(late_share(1000) - 0.8) < 0.03  # then the whole share
    plain = HardNegativeBatches(dataclasses.replace(cfg, late_background_ramp=0), batch_size=16)
    assert sum(plain.scene_config(50, i) is not plain.cfg for i in range(4000)) / 4000 > 0.77  # no ramp: at once
    with pytest.raises(ValueError, match="late_background_ramp must be a non-negative integer, got -1"):
        ShapesConfig(late_background_ramp=-1)


def test_binding_groups_differ_only_in_which_colour_goes_with_which_shape():
    cfg = ShapesConfig(image_size=32, hard_fraction=1.0, unnamed_fraction=0.3, binding_fraction=0.5,
                       shape_first_steps=2)
    batches = HardNegativeBatches(cfg, batch_size=16, group_size=4)
    assert all(bind is None for *_, bind in batches.plan(1))  # not during the shape phase
    plan = batches.plan(2)
    assert [bind is not None for *_, bind in plan] == [True] * 8 + [False] * 8  # the first two of four groups
    images, captions, indices = batches(2)
    attributes = batches.attributes(2)
    for k in range(0, 8, 2):  # a scene as drawn, then with its colours traded
        (index, _, _, (named, traded)), (index2, _, _, (named2, traded2)) = plan[k], plan[k + 1]
        assert index == index2 == indices[k] == indices[k + 1] and named == named2
        assert (traded, traded2) == (False, True)
        a, b = (make_item(index, cfg, bind=plan[j][3]) for j in (k, k + 1))
        assert len(a["objects"]) == len(b["objects"]) == 2
        assert [o["shape"] for o in a["objects"]] == [o["shape"] for o in b["objects"]]
        assert [o["colour"] for o in a["objects"]] == [o["colour"] for o in b["objects"]][::-1]
        assert min(o["colour"] for o in a["objects"]) >= 0  # named colours only
        assert [o["centre"] for o in a["objects"]] == [o["centre"] for o in b["objects"]]  # nothing else moves
        for item, other in ((a, b), (b, a)):  # each caption is true of its own scene and of no object of the other
            names = {object_name(o) for o in item["objects"]}
            assert item["caption"].split(" ", 1)[1] in names
            assert item["caption"].split(" ", 1)[1] not in {object_name(o) for o in other["objects"]}
            assert all((SHAPES[o["shape"]], COLOURS[o["colour"]]) not in heldout_pairs() for o in item["objects"])
        assert (captions[k], captions[k + 1]) == (a["caption"], b["caption"])
        assert attributes[k].tolist() == [a["shape"], a["colour"]]
        assert attributes[k + 1].tolist() == [b["shape"], b["colour"]]
        assert not torch.equal(images[k], images[k + 1])
    assert len(set(indices[:8].tolist())) == 4 and not set(indices[:8].tolist()) & set(indices[8:].tolist())
    with pytest.raises(ValueError, match="group_size must be even"):
        HardNegativeBatches(cfg, batch_size=16, group_size=3)
    first = HardNegativeBatches(dataclasses.replace(cfg, binding_named="first_shape"), batch_size=16, group_size=4)
    for index, _, _, (named, _) in first.plan(2)[:8]:  # the object whose shape comes first in SHAPES is named
        shapes = [o["shape"] for o in make_item(index, cfg, bind=(named, False))["objects"]]
        assert shapes[named] == min(shapes)
    with pytest.raises(ValueError, match="binding_named must be 'random' or 'first_shape', got 'both'"):
        ShapesConfig(binding_named="both")
    with pytest.raises(ValueError, match="binding_fraction must be in"):
        ShapesConfig(binding_fraction=2.0)
    one_object = next(i for i in range(100) if len(make_item(i, ShapesConfig(image_size=32))["objects"]) == 1)
    with pytest.raises(ValueError, match="a binding scene needs two objects in named colours"):
        make_item(one_object, ShapesConfig(image_size=32), bind=(0, True))
