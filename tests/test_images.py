import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tinyvit.data import IMAGE_MEAN, ManifestDataset, denormalize, load_image, read_manifest, to_tensor


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


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    from tinyvit.data import read_rgb

    stored = np.zeros((8, 16, 3), np.uint8)  # stored landscape: left half red, right half blue
    stored[:, :8, 0], stored[:, 8:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: the camera was turned; show the picture rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "turned.jpg", quality=100, exif=exif.tobytes())
    with Image.open(tmp_path / "turned.jpg") as raw:
        assert raw.size == (16, 8)
    upright = read_rgb(tmp_path / "turned.jpg", 16).astype(int)  # portrait, squeezed to 16x16
    assert upright[:5, :, 0].mean() > 200 and upright[:5, :, 2].mean() < 60  # red on top after the turn
    assert upright[-5:, :, 2].mean() > 200 and upright[-5:, :, 0].mean() < 60  # blue below


def test_unreadable_images_are_skipped_counted_and_limited(tmp_path):
    from tinyvit.data.images import SkipUnreadable

    items = []
    for i in range(4):
        Image.new("RGB", (4, 4), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
        items.append({"image": str(tmp_path / f"{i}.png"), "caption": f"image {i}"})
    (tmp_path / "1.png").write_bytes(b"not a png")
    seen = []
    data = SkipUnreadable(ManifestDataset(items, 4), limit=1, on_skip=lambda path, reason: seen.append(path))
    image, caption = data[1]  # the next readable item stands in
    assert caption == "image 2" and data.bad == seen == [str(tmp_path / "1.png")]
    assert data[1][1] == "image 2" and len(seen) == 1  # named once
    (tmp_path / "3.png").unlink()
    with pytest.raises(ValueError, match="2 unreadable images met, more than the limit of 1.*3.png"):
        data[3]
