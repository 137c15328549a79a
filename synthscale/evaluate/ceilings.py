"""An autoencoder's ceiling: its reconstructions of the evaluation prompts' real images, scored by the instruments
that score generated images.

A generator on an autoencoder's latent space can at best produce what that autoencoder decodes, so the scores of
its reconstructions of the test renders bound what any generator trained on it can reach: if reconstructions turn
a triangle into a blob, the probe cannot read the triangle in a generated image either. The ceiling uses exactly
the generators' evaluation set (the first `n` test prompts, plus `holdout_n` held-out-combination prompts, their
real renders as the Fréchet reference), so a generator's number and its ceiling compare at equal n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from synthscale.config import DataConfig
from synthscale.data.pixels import to_tensor, to_uint8
from synthscale.evaluate.instruments import Instrument, Prompts, score_images
from synthscale.evaluate.prompts import prompt_set

CEILING_JSON = "ceiling.json"


@torch.no_grad()
def reconstruct(autoencoder, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """uint8 [N, H, W, 3] → the autoencoder's uint8 reconstructions (posterior mean, or its tokens decoded)."""
    device = next(autoencoder.parameters()).device
    out = [
        to_uint8(autoencoder.reconstruct(to_tensor(images[i : i + batch_size]).to(device)))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else images[:0].copy()


def psnr(real: np.ndarray, recon: np.ndarray) -> float:
    """Mean over images of per-image PSNR on uint8 pixels (data range 255)."""
    a, b = real.astype(np.float64) / 255.0, recon.astype(np.float64) / 255.0
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean([10.0 * math.log10(1.0 / max(m, 1e-10)) for m in mse]))


def reconstruction_ceiling(
    autoencoder, instruments: Sequence[Instrument], data_cfg: DataConfig, n: int, holdout_n: int = 0, seed: int = 0
) -> dict[str, Any]:
    """Every instrument's scores of the reconstructions of the evaluation set: {"metrics": e.g. prompt_acc and
    attr_acc_* (with _lo/_hi), fd_probe, kid, and psnr; "instruments": the cards of what measured them}."""
    test = prompt_set(data_cfg, "test", n)
    sets = [test]
    if holdout_n and data_cfg.holdout:
        sets.append(prompt_set(data_cfg, "holdout", holdout_n))
    real = np.concatenate([s.images for s in sets])
    prompts = Prompts(
        [c for s in sets for c in s.captions], [a for s in sets for a in s.attributes], list(data_cfg.holdout), n
    )
    recon = reconstruct(autoencoder.eval(), real)
    metrics = score_images([i.bind(test.images, seed) for i in instruments], recon, prompts)
    metrics["psnr"] = psnr(real[:n], recon[:n])
    return {
        "metrics": metrics,
        "instruments": [i.card() for i in instruments],
        "what": "the autoencoder's reconstructions of the evaluation prompts' real renders",
        "n": n,
        "holdout_n": len(prompts) - n,
        "seed": seed,
        "autoencoder": autoencoder.name,
        "weights_hash": autoencoder.weights_hash,
    }
