"""Rebuild data/digits/ from scikit-learn's bundled copy of the UCI handwritten digits (see data/README.md).

    pip download --no-deps scikit-learn==1.9.1 -d /tmp/skl
    python data/digits/build.py /tmp/skl/scikit_learn-1.9.1-*.whl

Writes images/NNNN.png (the 8x8 scans as 8-bit grey PNGs), train.jsonl, test.jsonl and classes.txt. The course reads
only those files; it does not depend on scikit-learn.
"""

import gzip
import io
import json
import random
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a handwritten {word}",
    "the digit {digit}, written by hand",
    "a scan of a handwritten {word}",
    "the number {word}",
    "a hand-drawn {digit}",
]
TEST_PER_CLASS = 30


def read_digits(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 scans as (N, 8, 8) counts 0..16 and their labels 0..9."""
    with zipfile.ZipFile(wheel) as z:
        raw = gzip.decompress(z.read("sklearn/datasets/data/digits.csv.gz"))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8), table[:, 64]


def main(wheel: Path) -> None:
    pixels, labels = read_digits(wheel)
    assert pixels.shape == (1797, 8, 8) and pixels.max() == 16 and set(labels.tolist()) == set(range(10))
    (HERE / "images").mkdir(exist_ok=True)
    rng = random.Random(0)
    test = set()
    for digit in range(10):
        test.update(rng.sample(np.flatnonzero(labels == digit).tolist(), TEST_PER_CLASS))
    splits = {"train": [], "test": []}
    for i, (scan, label) in enumerate(zip(pixels, labels.tolist())):
        name = f"images/{i:04d}.png"
        grey = np.round(scan * 255 / 16).astype(np.uint8)  # 16 of 16 sub-pixels inked -> white
        Image.fromarray(grey, mode="L").save(HERE / name, optimize=True)
        caption = rng.choice(TEMPLATES).format(word=WORDS[label], digit=label)
        splits["test" if i in test else "train"].append({"image": name, "caption": caption, "label": label})
    for split, items in splits.items():
        with open(HERE / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)
    (HERE / "classes.txt").write_text("".join(f"a handwritten {word}\n" for word in WORDS), encoding="utf-8")
    print({split: len(items) for split, items in splits.items()})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
