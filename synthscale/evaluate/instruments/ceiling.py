"""What an instrument says about real images, measured at the evaluation's n and stored beside every record:

- ceiling: prompt following of the real test images with their own captions (what a perfect generator scores),
  and the quality floor, the Fréchet distance / KID of real validation images against the real test images;
- sanity: the same distance for those validation images corrupted (blurred, channel-shuffled, noised). Both
  compare n other images with the test set, so both carry the same finite-sample part of the distance, and a
  working instrument puts real-vs-real far below every corruption.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthscale.config import DataConfig
from synthscale.evaluate.instruments import Instrument, Prompts

SANITY_FACTOR = 2.0  # "far below": every corruption's distance at least this many times real-vs-real


def blur(images: np.ndarray) -> np.ndarray:
    """Gaussian blur with σ = 1/32 of the image side (1 px at 32 px)."""
    from scipy.ndimage import gaussian_filter

    sigma = images.shape[1] / 32
    return np.clip(gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0)).round(), 0, 255).astype(np.uint8)


def channel_shuffle(images: np.ndarray) -> np.ndarray:
    """RGB → BRG: every colour wrong, every shape and texture intact."""
    return np.ascontiguousarray(images[..., [2, 0, 1]])


def noise(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Gaussian pixel noise, σ = 10 % of the range."""
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0, 25.5, images.shape), 0, 255).round().astype(np.uint8)


CORRUPTIONS = {"blur": blur, "channel_shuffle": channel_shuffle, "noise": noise}


def real_prompts(data_cfg: DataConfig, split: str, n: int):
    """(images, Prompts) of the first n items of a split; fewer than n items is refused, naming both numbers."""
    from synthscale.evaluate.prompts import prompt_set

    ps = prompt_set(data_cfg, split, n)
    return ps.images, Prompts(ps.captions, ps.attributes, list(data_cfg.holdout))


def measure_ceiling(instrument: Instrument, data_cfg: DataConfig, n: int, seed: int = 0) -> dict[str, Any]:
    """{"n", "real_test": following metrics of real test images, "real_val": quality of real val images vs test,
    "corrupted": {name: quality of the corrupted val images vs test}, "sanity": {"ratio", "passed"}}."""
    from synthscale.data import get_dataset

    test_images, test_prompts = real_prompts(data_cfg, "test", n)
    bound = instrument.bind(test_images, seed)
    out: dict[str, Any] = {"n": n, "instrument": instrument.name}
    following = instrument.follow(test_images, test_prompts, seed)
    out["real_test"] = following
    if bound.distance is None:
        return out
    fd = instrument.quality
    n_val = min(n, len(get_dataset(data_cfg, "val")))
    if n_val < 2:
        out["note"] = f"the val split has {n_val} images: no real-vs-real distance or sanity check"
        return out
    val_images, _ = real_prompts(data_cfg, "val", n_val)
    out["n_val"] = n_val
    out["real_val"] = bound.quality(val_images)
    out["corrupted"] = {name: bound.quality(fn(val_images)) for name, fn in CORRUPTIONS.items()}
    ratios = {name: c[fd] / max(out["real_val"][fd], 1e-12) for name, c in out["corrupted"].items()}
    out["sanity"] = {
        "ratios": ratios,
        "factor": SANITY_FACTOR,
        "passed": bool(min(ratios.values()) >= SANITY_FACTOR),
        "failed": sorted(k for k, r in ratios.items() if r < SANITY_FACTOR),
    }
    return out
