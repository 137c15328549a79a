"""Image quality as distances between feature distributions: Fréchet distance and KID, via torchmetrics.

On the shapes domain the features are the attribute probe's ("fd-probe"); real-data users can plug in any other
extractor (e.g. Inception from a local weights file, `evaluate/reference.py`). The reference (real) features are
computed once per `FeatureDistance`, then every generated set is scored against them. Images are uint8; float
images in [0, 1] are rounded and clamped first, as saving them to PNG would.

Numbers compare only at equal sample counts and with the same extractor, so every result names both. Each score
carries a 95 % interval from a bootstrap over the generated images, the reference set held fixed: the resamples'
2.5–97.5 % spread placed around the estimate (a resample with repeated images shifts FD up, by more than its
spread when FD is near 0, so the percentile interval itself would miss the estimate):
`fd_lo/fd_hi` and `kid_lo/kid_hi`; `kid_std` stays what torchmetrics reports, the spread of its subset estimates
(a spread, not a standard error).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from synthscale.evaluate.probes import as_uint8_nhwc

BOOT_MAX_DIM = 512  # wider features (Inception's 2048) get no bootstrap interval by default; the record says so


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
        n_boot: int | None = None,
    ):
        self.extractor, self.name, self.batch_size = extractor, name, batch_size
        self.kid_subsets, self.kid_subset_size, self.seed, self.n_boot = kid_subsets, kid_subset_size, seed, n_boot
        self.resize = "none"  # the probe reads images at the dataset's resolution; other extractors say theirs
        real = self.features(real_images)
        if len(real) < 2:
            raise ValueError(f"the reference set needs at least 2 images, got {len(real)}")
        self.n_real, dim = real.shape
        if n_boot is None:  # each resample is a dim × dim eigen-decomposition: cheap for the probe's 25, not 2048
            self.n_boot = 200 if dim <= BOOT_MAX_DIM else 0
        self.fid = FrechetInceptionDistance(feature=_Precomputed(dim), reset_real_features=False)
        with warnings.catch_warnings():  # "KID keeps all features in memory": intended, they are small
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(
                feature=_Precomputed(dim), subsets=kid_subsets, reset_real_features=False
            )
        self.fid.update(real, real=True)
        self.kid.update(real, real=True)
        self._real = _RealStats(real.double().numpy())

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
        out = {"fd": float(self.fid.compute()), "kid": float(kid), "kid_std": float(kid_std)}
        if self.n_boot > 0:
            out.update(self._real.bootstrap(fake.double().numpy(), self.n_boot, self.seed, out["fd"], out["kid"]))
        return out

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
            "interval": (
                f"95 % bootstrap over generated images (spread around the estimate), {self.n_boot} resamples, "
                f"seed {self.seed}"
                if self.n_boot
                else "none (no bootstrap: kid_std is the spread of subset estimates, not a standard error)"
            ),
        }


class ProbeQuality(FeatureDistance):
    """fd-probe and KID over the attribute probe's penultimate features. `score` → {"fd_probe", "fd_probe_lo",
    "fd_probe_hi", "kid", "kid_lo", "kid_hi", "kid_std"}."""

    def __init__(self, probe, real_images, **kwargs):
        super().__init__(probe.features, f"probe:{probe.key}", real_images, **kwargs)

    def score(self, images) -> dict[str, float]:
        s = super().score(images)
        return {k.replace("fd", "fd_probe", 1) if k.startswith("fd") else k: v for k, v in s.items()}


class _RealStats:
    """The reference set's mean, covariance square root and KID kernel terms, computed once, so a bootstrap
    resample of the generated features costs one small eigen-decomposition and two kernel means."""

    def __init__(self, real: np.ndarray):
        self.real, self.dim = real, real.shape[1]
        self.mu = real.mean(0)
        cov = np.atleast_2d(np.cov(real, rowvar=False))
        w, v = np.linalg.eigh(cov)
        self.sqrt_cov = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        self.trace = float(np.trace(cov))
        k_rr = self._kernel(real, real)
        m = len(real)
        self.k_rr = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))

    def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:  # KID's cubic polynomial kernel
        return (a @ b.T / self.dim + 1.0) ** 3

    def frechet(self, fake: np.ndarray) -> float:
        cov = np.atleast_2d(np.cov(fake, rowvar=False))
        inner = self.sqrt_cov @ cov @ self.sqrt_cov  # same spectrum as cov_real · cov_fake, but symmetric
        root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0, None)).sum()
        return float(((fake.mean(0) - self.mu) ** 2).sum() + np.trace(cov) + self.trace - 2 * root_trace)

    def bootstrap(self, fake: np.ndarray, n_boot: int, seed: int, fd: float, kid: float) -> dict[str, float]:
        """95 % bootstrap intervals around the estimates `fd` and `kid`: est + (q2.5 − mean, q97.5 − mean) of the
        statistic over resampled generated sets (FD; KID as the unbiased MMD² on all images)."""
        rng = np.random.default_rng(seed)
        k_ff, k_fr = self._kernel(fake, fake), self._kernel(fake, self.real).mean(1)
        n = len(fake)
        fds, kids = np.empty(n_boot), np.empty(n_boot)
        for b in range(n_boot):
            idx = rng.integers(0, n, n)
            sub = k_ff[np.ix_(idx, idx)]
            kids[b] = self.k_rr + (sub.sum() - np.trace(sub)) / (n * (n - 1)) - 2 * k_fr[idx].mean()
            fds[b] = self.frechet(fake[idx])
        fd_q, kid_q = np.percentile(fds, [2.5, 97.5]) - fds.mean(), np.percentile(kids, [2.5, 97.5]) - kids.mean()
        return {
            "fd_lo": max(0.0, fd + float(fd_q[0])),
            "fd_hi": fd + float(fd_q[1]),
            "kid_lo": kid + float(kid_q[0]),
            "kid_hi": kid + float(kid_q[1]),
        }


def fd_probe(probe, real_images, fake_images, **kwargs) -> dict[str, float]:
    """One-off fd-probe / KID of `fake_images` against `real_images` (see ProbeQuality to reuse the reference)."""
    return ProbeQuality(probe, real_images, **kwargs).score(fake_images)
