"""A small folder of real-looking captioned images made in the test: textured patterns (stripes, checks, dots,
rings) in several colours, each image with its own frequency, phase, brightness and sensor noise. Captions name
the colour and the pattern, so classes repeat (as class-label captions do) and an instrument can learn them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 70, 220), "yellow": (230, 210, 40)}
PATTERNS = ("stripes", "checks", "dots", "rings")


def texture(pattern: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    f, phase = rng.uniform(3, 5), rng.uniform(0, 2 * np.pi)
    if pattern == "stripes":
        v = np.sin(2 * np.pi * f * yy + phase)
    elif pattern == "checks":
        v = np.sign(np.sin(2 * np.pi * f * yy + phase) * np.sin(2 * np.pi * f * xx + phase))
    elif pattern == "dots":
        v = np.cos(2 * np.pi * f * xx + phase) + np.cos(2 * np.pi * f * yy + phase) - 1
    else:  # rings around a random centre
        cy, cx = rng.uniform(0.3, 0.7, 2)
        v = np.sin(2 * np.pi * f * np.hypot(yy - cy, xx - cx) * 2 + phase)
    mask = (np.clip(v, -1, 1) + 1) / 2  # [H, W] in [0, 1]
    fg, bg = np.array(colour) * rng.uniform(0.75, 1.0), np.full(3, rng.uniform(10, 60))
    img = mask[..., None] * fg + (1 - mask[..., None]) * bg + rng.normal(0, 3, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def textured_folder(root: Path, n: int = 400, size: int = 32, seed: int = 0, one_caption: bool = False) -> Path:
    """n PNGs with captions.jsonl ("a red stripes pattern"); `one_caption`: every caption the same."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        pattern = PATTERNS[(i // len(COLOURS)) % len(PATTERNS)]
        Image.fromarray(texture(pattern, COLOURS[colour], size, rng)).save(root / f"img{i:04d}.png")
        caption = "a texture" if one_caption else f"a {colour} {pattern} pattern"
        rows.append({"file": f"img{i:04d}.png", "caption": caption})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
