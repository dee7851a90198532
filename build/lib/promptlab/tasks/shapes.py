"""A synthetic image task made offline: coloured shapes whose label is the colour (circles, squares and triangles
of random size and place on a light background), each with a caption ("a red circle"). Tests and the README's
offline multimodal example use it: ``data=colours`` classifies, ``data=shape_captions`` writes the caption.

    python -m promptlab.tasks.shapes DATA_ROOT/colours        # train.jsonl, validation.jsonl and images/
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")


def draw(colour: str, shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    r = rng.randint(size // 5, size // 3)
    x, y = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        pen.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:
        pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return image


def make(folder: str | Path, train: int = 64, validation: int = 32, seed: int = 0, size: int = 64) -> Path:
    """Write ``train.jsonl`` and ``validation.jsonl`` (columns idx, image, shape, caption, label) and the PNGs under
    ``folder/images``; image paths are relative to the folder. Labels cycle through the colours."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng, names = random.Random(seed), list(COLOURS)
    for split, n in (("train", train), ("validation", validation)):
        rows = []
        for i in range(n):
            label, shape = i % len(names), rng.choice(SHAPES)
            path = f"images/{split}_{i:04d}.png"
            draw(names[label], shape, rng, size).save(folder / path)
            rows.append({"idx": i, "image": path, "shape": shape, "caption": f"a {names[label]} {shape}",
                         "label": label})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"wrote {make(sys.argv[1])}")
