"""Image–caption agreement from embeddings: R-precision (AttnGAN's definition) and a CLIP-score-style mean
cosine, each with a percentile-bootstrap 95 % interval over images.

R-precision: for each image, its own caption and `candidates - 1` other captions drawn at random from the
*distinct* captions of the prompt set (so class-label captions that repeat count once, and an image is never
asked to beat its own caption's duplicate); a hit when its own caption has the highest cosine. Ties are split
(a tie among k counts 1/k), so an encoder that sees nothing scores chance, 1/candidates, not 0 or 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from synthscale.evaluate.alignment import _mean_ci

CANDIDATES = 100  # AttnGAN: the own caption and 99 others


class UndefinedMetric(ValueError):
    """A metric that cannot be computed on this prompt set (e.g. R-precision when every caption is the same)."""


def _unit(x) -> torch.Tensor:
    return F.normalize(torch.as_tensor(x, dtype=torch.float64), dim=-1)


def distinct_captions(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct captions (first-seen order) and, per item, the index of its caption among them."""
    index: dict[str, int] = {}
    ids = np.array([index.setdefault(c, len(index)) for c in captions], dtype=np.int64)
    return list(index), ids


def r_precision_hits(
    image_emb, caption_emb, caption_ids: np.ndarray, candidates: int = CANDIDATES, seed: int = 0
) -> tuple[np.ndarray, int]:
    """Per image: 1 if its own caption ranks first among it and `candidates - 1` other distinct captions (ties
    split). image_emb [N, D]; caption_emb [C, D], one row per distinct caption; caption_ids [N] index rows.
    Fewer than `candidates` distinct captions: all of them compete. Returns (hits [N], candidates used)."""
    n_captions = len(caption_emb)
    if n_captions < 2:
        raise UndefinedMetric(
            f"R-precision is undefined with {n_captions} distinct caption(s): an image's own caption has no rival"
        )
    k = min(candidates, n_captions)
    sims = (_unit(image_emb) @ _unit(caption_emb).T).numpy()  # [N, C]
    rng = np.random.default_rng(seed)
    hits = np.empty(len(sims))
    for i, own in enumerate(np.asarray(caption_ids)):
        others = rng.choice(n_captions - 1, size=k - 1, replace=False)
        others = others + (others >= own)  # every distinct caption but its own
        rival = sims[i, others]
        best = rival.max()
        own_sim = sims[i, own]
        hits[i] = 1.0 if own_sim > best else (1.0 / (1 + np.sum(rival == best)) if own_sim == best else 0.0)
    return hits, k


def r_precision(
    image_emb,
    caption_emb,
    caption_ids: np.ndarray,
    candidates: int = CANDIDATES,
    n_boot: int = 1000,
    seed: int = 0,
    name: str = "r_precision",
) -> dict[str, float]:
    """{name, name_lo, name_hi, name + "_candidates"}: R-precision with its bootstrap interval."""
    hits, k = r_precision_hits(image_emb, caption_emb, caption_ids, candidates, seed)
    mean, lo, hi = _mean_ci(hits, n_boot, seed, name)
    return {name: mean, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_candidates": float(k)}


def cosine_score(
    image_emb, caption_emb, n_boot: int = 1000, seed: int = 0, name: str = "clipscore"
) -> dict[str, float]:
    """CLIP-score style: 100 × cosine of each image with its own caption (rows paired), mean and interval."""
    if len(image_emb) != len(caption_emb):
        raise ValueError(f"got {len(image_emb)} image and {len(caption_emb)} caption embeddings; pair them")
    values = (100 * (_unit(image_emb) * _unit(caption_emb)).sum(-1)).numpy()
    mean, lo, hi = _mean_ci(values, n_boot, seed, name)
    return {name: mean, f"{name}_lo": lo, f"{name}_hi": hi}
