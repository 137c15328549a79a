"""Image quality as distances between feature distributions: Fréchet distance and KID, via torchmetrics.

On the shapes domain the features are the attribute probe's ("fd-probe"); real-data users can plug in any other
extractor (e.g. Inception from a local weights file, `evaluate/reference.py`). The reference (real) features are
computed once per `FeatureDistance`, then every generated set is scored against them. Images are uint8; float
images in [0, 1] are rounded and clamped first, as saving them to PNG would.

Numbers compare only at equal sample counts and with the same extractor, so every result names both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from synthscale.evaluate.probes import as_uint8_nhwc


class _Precomputed(nn.Module):
    """torchmetrics' metrics take a feature module; ours are computed once outside it, so this one passes them on."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class FeatureDistance:
    """Fréchet distance and KID of image sets against one real reference set.

    extractor: uint8 [N, H, W, 3] → float [N, D]; name: how records name it (e.g. "probe:<key>").
    KID uses `kid_subsets` random subsets of `kid_subset_size` (default: half the smaller set, at most 1000) drawn
    from `seed`, so the same inputs give the same numbers.
    """

    def __init__(
        self,
        extractor: Callable[[torch.Tensor], torch.Tensor],
        name: str,
        real_images,
        batch_size: int = 256,
        kid_subsets: int = 100,
        kid_subset_size: int | None = None,
        seed: int = 0,
    ):
        self.extractor, self.name, self.batch_size = extractor, name, batch_size
        self.kid_subsets, self.kid_subset_size, self.seed = kid_subsets, kid_subset_size, seed
        self.resize = "none"  # the probe reads images at the dataset's resolution; other extractors say theirs
        real = self.features(real_images)
        if len(real) < 2:
            raise ValueError(f"the reference set needs at least 2 images, got {len(real)}")
        self.n_real, dim = real.shape
        self.fid = FrechetInceptionDistance(feature=_Precomputed(dim), reset_real_features=False)
        with warnings.catch_warnings():  # "KID keeps all features in memory": intended, they are small
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(
                feature=_Precomputed(dim), subsets=kid_subsets, reset_real_features=False
            )
        self.fid.update(real, real=True)
        self.kid.update(real, real=True)

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        x = as_uint8_nhwc(images)
        parts = [self.extractor(x[i : i + self.batch_size]).float() for i in range(0, len(x), self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, 0)

    def score(self, images) -> dict[str, float]:
        """{"fd": Fréchet distance, "kid": KID mean over subsets, "kid_std": its std} of `images` vs the reference."""
        fake = self.features(images)
        if len(fake) < 2:
            raise ValueError(f"scoring needs at least 2 images, got {len(fake)}")
        self.fid.reset(), self.kid.reset()  # keeps the real statistics (reset_real_features=False)
        self.fid.update(fake, real=False)
        self.kid.update(fake, real=False)
        # default: half the smaller set (≤ 1000), so the subsets differ and kid_std measures something
        self.kid.subset_size = self.kid_subset_size or max(2, min(1000, self.n_real // 2, len(fake) // 2))
        if self.kid.subset_size > min(self.n_real, len(fake)):
            raise ValueError(
                f"kid_subset_size {self.kid.subset_size} exceeds the images given "
                f"({self.n_real} real, {len(fake)} generated); lower it"
            )
        with torch.random.fork_rng(devices=[]):  # torchmetrics draws KID subsets from the global generator
            torch.manual_seed(self.seed)
            kid, kid_std = self.kid.compute()
        self.n_fake = len(fake)
        return {"fd": float(self.fid.compute()), "kid": float(kid), "kid_std": float(kid_std)}

    def instruments(self) -> dict[str, Any]:
        """What the last score was measured with, for EvalRecord.instruments."""
        return {
            "extractor": self.name,
            "n": getattr(self, "n_fake", None),
            "n_real": self.n_real,
            "resize": self.resize,
            "kid_subsets": self.kid_subsets,
            "kid_subset_size": self.kid.subset_size,
            "kid_seed": self.seed,
        }


class ProbeQuality(FeatureDistance):
    """fd-probe and KID over the attribute probe's penultimate features. `score` → {"fd_probe", "kid", "kid_std"}."""

    def __init__(self, probe, real_images, **kwargs):
        super().__init__(probe.features, f"probe:{probe.key}", real_images, **kwargs)

    def score(self, images) -> dict[str, float]:
        s = super().score(images)
        return {"fd_probe": s.pop("fd"), **s}


def fd_probe(probe, real_images, fake_images, **kwargs) -> dict[str, float]:
    """One-off fd-probe / KID of `fake_images` against `real_images` (see ProbeQuality to reuse the reference)."""
    return ProbeQuality(probe, real_images, **kwargs).score(fake_images)
