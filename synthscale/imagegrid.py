"""Labelled image grids (PNG) so a person can look: data previews, reconstructions, samples."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synthscale import atomic


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a fixed-size bitmap font only
        return ImageFont.load_default()


def labelled_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[str] | None = None,
    cell: int = 128,
    columns: int | None = None,
    label_lines: int = 4,
    font_size: int = 11,
) -> Image.Image:
    """Tile uint8 H×W×3 images, each scaled (nearest) to `cell` px, with a wrapped caption under each."""
    n = len(images)
    if n == 0:
        raise ValueError("labelled_grid needs at least one image")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    font = _font(font_size)
    line_h = font_size + 3
    text_h = label_lines * line_h + 4 if labels is not None else 0
    pad = 4
    width = columns * (cell + pad) + pad
    height = rows * (cell + text_h + pad) + pad
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    chars = max(8, int(cell / (font_size * 0.55)))
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        x, y = pad + c * (cell + pad), pad + r * (cell + text_h + pad)
        tile = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((cell, cell), Image.NEAREST)
        grid.paste(tile, (x, y))
        if labels is not None:
            lines = textwrap.wrap(labels[k], chars)[:label_lines]
            for j, line in enumerate(lines):
                draw.text((x + 1, y + cell + 2 + j * line_h), line, fill=(0, 0, 0), font=font)
    return grid


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
