"""Choosing a sampling setting (CFG scale, and temperature where the objective samples with one) on validation
prompts, by one rule for every paradigm.

The rule: every candidate is scored twice on the validation prompts — by the deciding quality instrument's
Fréchet distance (lower is better) and by the deciding prompt-following metric (higher is better). Each score is
rescaled across the candidates so the best candidate gets 0 and the worst 1, and the candidate with the lowest sum
wins; ties go to the lower Fréchet distance, then the smaller CFG scale. Why both: guidance and temperature trade
prompt following against diversity, so choosing by either number alone tunes every paradigm toward one of the
study's two verdicts and against the other, and which paradigm that favours depends on where its trade-off curve
lies. Rescaling needs no exchange rate between a distance and an accuracy; each number moves the choice by its
spread among the candidates, and the same rule applies to every paradigm. (Ranks would not do: along a monotone
trade-off every candidate's rank sum is the same.) With one of the two instruments missing, the other decides.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def rule_text(quality: str | None, following: str | None) -> str:
    if quality and following:
        return (
            f"lowest sum of {quality} (lower better) and {following} (higher better) on validation prompts, each "
            f"rescaled across the candidates to 0 (best) … 1 (worst); ties: lower {quality}, then smaller CFG"
        )
    only = quality or following
    return f"{'lowest' if quality else 'highest'} {only} on validation prompts; ties: smaller CFG"


def choose(scores: list[dict[str, Any]], quality: str | None, following: str | None) -> int:
    """Index of the winning candidate among `scores` (dicts with cfg_scale and the two metrics), by the rule above.
    Also writes each candidate's combined `badness` into its dict."""
    if not scores:
        raise ValueError("no candidates to choose from")
    if not (quality or following):
        raise ValueError("choosing a sampling setting needs an instrument that measures quality or prompt following")
    total = np.zeros(len(scores))
    if quality:
        total += _rescaled([_finite(s[quality], np.nan) for s in scores])
    if following:
        total += _rescaled([-_finite(s[following], np.nan) for s in scores])
    for s, t in zip(scores, total):
        s["badness"] = float(t)
    tiebreak = [(t, _finite(s[quality], np.inf) if quality else 0.0, s["cfg_scale"]) for t, s in zip(total, scores)]
    return min(range(len(scores)), key=lambda i: tiebreak[i])


def _rescaled(values: list[float]) -> np.ndarray:
    """Lower-is-better values mapped to 0 (the best) … 1 (the worst); all equal: 0; NaN (a metric that could not
    be computed): 2, worse than any measured candidate."""
    x = np.asarray(values, dtype=float)
    ok = np.isfinite(x)
    if not ok.any():
        return np.zeros(len(x))
    lo, hi = x[ok].min(), x[ok].max()
    out = np.where(ok, (x - lo) / (hi - lo) if hi > lo else 0.0, 2.0)
    return out


def _finite(x: Any, worst: float) -> float:
    """A metric as a float; NaN, infinite or missing (e.g. a diverged sampler) becomes `worst`."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return worst
    return x if np.isfinite(x) else worst
