"""Small on-disk image folders for the folder / shard dataset tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size=(20, 16), fmt: str = "PNG") -> bytes:
    """A random RGB image (width, height) encoded as PNG or JPEG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def truncated_jpeg(seed: int) -> bytes:
    """A JPEG cut short: its header parses (Pillow's verify passes) but decoding fails."""
    data = image_bytes(seed, (64, 64), "JPEG")
    return data[: len(data) // 2]


def make_folder(root: Path, n: int = 30, corrupt: bool = True, extra: dict | None = None) -> list[dict]:
    """n captioned images (alternating PNG / JPEG) with captions.jsonl; with `corrupt`, also a garbage
    'bad.png' and a half-length 'trunc.png' that are listed in the captions file. Returns the caption rows."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        (root / name).write_bytes(image_bytes(i, fmt="PNG" if i % 2 else "JPEG"))
        rows.append({"file": name, "caption": f"photo number {i} of a thing", "index": i, **(extra or {})})
    if corrupt:
        (root / "bad.png").write_bytes(b"this is not a png at all")
        good = image_bytes(999, (32, 32))
        (root / "trunc.png").write_bytes(good[: len(good) // 2])
        rows += [{"file": "bad.png", "caption": "garbage"}, {"file": "trunc.png", "caption": "half a file"}]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
