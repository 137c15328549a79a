"""Decoding user images and fitting them to the training resolution — the one policy folder and shard datasets share.

`fit_image(data, cfg)` turns encoded bytes (or a path) into uint8 [resolution, resolution, 3]:
  1. decode with Pillow; EXIF orientation applied; a JPEG is decoded at the smallest DCT scale that is still ≥
     the target (`Image.draft`): 2.5–2.9× faster for a 512×384 photo → 64 px, mean pixel change < 0.5/255
     (benchmarks/userdata.py);
  2. transparency is composited onto `data.background`; any other mode is converted to RGB;
  3. `crop: center` resizes the short side to `resolution` and cuts the centre square (DiT/LDM's policy);
     `crop: none` resizes the whole image to resolution × resolution, so a non-square image is squashed;
     `resize_filter` is the Pillow filter (Pillow filters are antialiased when shrinking).
Anything Pillow cannot read raises `UnreadableImage`, never another exception, so callers can skip and count it.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from synthscale.config import ConfigError, DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


class UnreadableImage(Exception):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large, missing)."""


def item_key(relpath: str) -> str:
    """The key of an item: its path relative to the dataset root, POSIX separators, without the image suffix,
    with any other dot replaced by '_' (webdataset splits a member name at the first dot of its basename, so a
    key must not contain one). The same file has the same key in a folder and in the shards written from it,
    hence the same split."""
    path = PurePosixPath(relpath.replace(os.sep, "/"))
    stem = str(path.with_suffix("")) if path.suffix else str(path)
    return re.sub(r"\.", "_", stem)


def check_resolution(cfg: DataConfig) -> None:
    if cfg.resolution < 1:
        raise ConfigError(f"data.resolution must be ≥ 1, got {cfg.resolution}")


def decode(data: bytes | str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Fully decode an image (bytes or a path) into a Pillow image, raising `UnreadableImage` on any failure."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # > 89 Mpx: treat as unreadable
            image = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))  # DCT-domain downscale, still ≥ draft_size
            image.load()  # decode now: a truncated file fails here, not later
            return ImageOps.exif_transpose(image)
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        EOFError,
        struct.error,
    ) as e:
        raise UnreadableImage(f"{type(e).__name__}: {e}") from e


def to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB; transparent pixels take the background colour rather than whatever RGB they happen to store."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, background + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def resize_crop(image: Image.Image, resolution: int, crop: str, resize_filter: str) -> Image.Image:
    size = (resolution, resolution)
    if crop == "center":
        return ImageOps.fit(image, size, method=FILTERS[resize_filter], centering=(0.5, 0.5))
    return image.resize(size, resample=FILTERS[resize_filter])


def fit_image(data: bytes | str | os.PathLike, cfg: DataConfig, background: tuple[int, int, int]) -> np.ndarray:
    """Encoded image → uint8 [resolution, resolution, 3] under the config's crop and filter policy."""
    image = decode(data, draft_size=cfg.resolution)
    try:
        image = resize_crop(to_rgb(image, background), cfg.resolution, cfg.crop, cfg.resize_filter)
        return np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError) as e:  # e.g. a mode Pillow cannot convert
        raise UnreadableImage(f"{type(e).__name__}: {e}") from e
