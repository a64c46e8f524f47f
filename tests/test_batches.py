import dataclasses

import pytest
import torch
from PIL import Image

from tinyvit.contrastive import shared_attribute_mask
from tinyvit.data import (COLOURS, MAX_GROUP_SIZE, SHAPES, BatchConfig, Batches, HardNegativeBatches, ManifestDataset,
                          ShapesConfig, ShapesDataset, heldout_pairs, make_item, negatives_mask)


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


def test_batches_work_on_a_manifest(tmp_path):
    for name, rgb in (("red.png", (200, 30, 40)), ("grey.png", (90, 90, 90)), ("blue.png", (0, 0, 255))):
        Image.new("RGB", (10, 10), rgb).save(tmp_path / name)
    items = [{"image": str(tmp_path / f"{c}.png"), "caption": c} for c in ("red", "grey", "blue")]
    images, captions, indices = Batches(ManifestDataset(items, 8), 2)(1)
    assert images.shape == (2, 3, 8, 8) and captions == [items[i]["caption"] for i in indices]


def test_hard_negative_groups_differ_only_in_shape():
    shapes = ShapesConfig(image_size=32)
    batches = HardNegativeBatches(shapes, BatchConfig(hard_fraction=0.5, group_size=4), batch_size=16)
    images, captions, indices = batches(5)
    assert images.shape == (16, 3, 32, 32) and len(captions) == 16 and indices.shape == (16,)
    plan = batches.plan(5)
    assert [index for index, _ in plan] == indices.tolist()
    groups = {}
    for (index, shape), caption in zip(plan, captions):
        if shape is not None:
            groups.setdefault(index, []).append((shape, caption))
    assert len(groups) == 2
    for index, members in groups.items():
        shapes_drawn = [shape for shape, _ in members]
        assert len(set(shapes_drawn)) == 4  # four different shapes of one scene
        colour = COLOURS[make_item(index, shapes)["colour"]]
        assert all((SHAPES[s], colour) not in heldout_pairs() for s in shapes_drawn)
        words = [set(caption.split()) for _, caption in members]
        common = set.intersection(*words)
        assert all(len(w - common) == 1 and (w - common) <= set(SHAPES) | {"a", "an"} for w in words)
    assert sum(shape is None for _, shape in plan) == 8
    assert [index for index, shape in plan if shape is None] == [5 * 16 + j for j in range(2, 10)]
    torch.testing.assert_close(batches(5)[0], images)  # a pure function of the step


def test_without_hard_negatives_the_stream_is_fresh_scenes_in_order():
    shapes = ShapesConfig(image_size=16)
    batches = HardNegativeBatches(shapes, BatchConfig(), batch_size=6, seed=2)
    images, captions, indices = batches(3)
    assert indices.tolist() == list(range(18, 24))
    assert captions == [make_item(i, shapes, seed=2)["caption"] for i in range(18, 24)]


@pytest.mark.parametrize("kwargs, message", [
    ({"group_size": 5}, f"BatchConfig.group_size must be an integer between 2 and {MAX_GROUP_SIZE}"),
    ({"group_size": 1}, "BatchConfig.group_size must be an integer between 2"),
    ({"group_size": True}, "BatchConfig.group_size must be an integer between 2 and 4 .*, got True"),
    ({"hard_fraction": 2}, r"BatchConfig.hard_fraction must be a number in \[0, 1\], got 2"),
    ({"hard_fraction": True}, r"BatchConfig.hard_fraction must be a number in \[0, 1\], got True"),
    ({"hard_fraction": "1"}, "BatchConfig.hard_fraction must be a number"),
    ({"shared_attribute_negatives": 1}, "BatchConfig.shared_attribute_negatives must be True or False, got 1"),
    ({"shape_first_steps": -1, "hard_fraction": 1.0}, "BatchConfig.shape_first_steps must be a non-negative"),
    ({"shape_first_steps": True, "hard_fraction": 1.0}, "BatchConfig.shape_first_steps must be a non-negative"),
    ({"shape_first_steps": 2.0, "hard_fraction": 1.0}, "BatchConfig.shape_first_steps must be a non-negative"),
    ({"shape_first_steps": 10, "hard_fraction": 0.5}, "need hard_fraction 1.0, got 0.5"),
])
def test_batch_config_refuses_bad_values_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchConfig(**kwargs)


def test_batch_config_round_trips_and_refuses_removed_options():
    cfg = BatchConfig(hard_fraction=1.0, group_size=3, shared_attribute_negatives=True, shape_first_steps=7)
    assert BatchConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown BatchConfig key 'binding_fraction'"):
        BatchConfig.from_dict({"binding_fraction": 0.5})


def test_hard_negative_batches_check_their_arguments():
    with pytest.raises(TypeError, match="takes a ShapesConfig and a BatchConfig"):
        HardNegativeBatches(ShapesConfig(), 16, 16)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        HardNegativeBatches(ShapesConfig(), BatchConfig(), 0)


def test_hard_negative_groups_of_unnamed_colours_may_use_every_shape():
    shapes = ShapesConfig(image_size=32, unnamed_fraction=1.0)
    batches = HardNegativeBatches(shapes, BatchConfig(hard_fraction=1.0, group_size=4), batch_size=40)
    plan = batches.plan(0)
    assert {shape for _, shape in plan} == set(range(len(SHAPES)))
    assert all(make_item(plan[0][0], shapes, shape=k)["shape"] == k for k in range(len(SHAPES)))


def test_hard_negative_attributes_describe_the_drawn_items():
    shapes, groups = ShapesConfig(image_size=32, unnamed_fraction=0.3), BatchConfig(hard_fraction=0.5)
    batches = HardNegativeBatches(shapes, groups, batch_size=16)
    attributes = batches.attributes(2)
    items = [make_item(index, shapes, shape=shape) for index, shape in batches.plan(2)]
    assert attributes.tolist() == [[item["shape"], item["colour"]] for item in items]
    batches(3)  # a drawn batch's labels are reused for its own step, and only for it
    assert torch.equal(batches.attributes(3), HardNegativeBatches(shapes, groups, batch_size=16).attributes(3))
    assert torch.equal(batches.attributes(2), attributes)


def test_negatives_mask_contrasts_one_scene_first_then_shared_attributes():
    shapes = ShapesConfig(image_size=16)
    groups = BatchConfig(hard_fraction=1.0, group_size=4, shared_attribute_negatives=True, shape_first_steps=2)
    loader = HardNegativeBatches(shapes, groups, 8, seed=0)
    _, _, indices = loader(1)
    early = negatives_mask(groups, loader, 1, indices)
    assert torch.equal(early, torch.block_diag(torch.ones(4, 4), torch.ones(4, 4)).bool())  # two groups of 4
    late = negatives_mask(groups, loader, 2, loader(2)[2])
    attributes = loader.attributes(2)
    assert torch.equal(late, (attributes[:, None] == attributes[None]).any(-1))
    assert torch.equal(late, shared_attribute_mask(attributes))
    plain = BatchConfig(hard_fraction=1.0)
    assert negatives_mask(plain, HardNegativeBatches(shapes, plain, 8), 0, indices) is None
    no_phase = dataclasses.replace(groups, shape_first_steps=0)
    assert torch.equal(negatives_mask(no_phase, loader, 2, loader(2)[2]), late)
