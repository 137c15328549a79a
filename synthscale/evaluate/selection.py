"""Choosing a sampling setting (CFG scale, and temperature where the objective samples with one) on validation
prompts, by one rule for every paradigm.

The rule: each candidate is ranked twice on the validation prompts — by the deciding quality instrument's Fréchet
distance (lower is better) and by the deciding prompt-following metric (higher is better) — and the candidate
with the lowest sum of the two ranks wins; ties go to the lower Fréchet distance, then the smaller CFG scale. Why
both: guidance and temperature trade prompt following against diversity, so choosing by either number alone tunes
every paradigm toward one of the study's two verdicts and against the other, and which paradigm that favours
depends on where its trade-off curve lies. Ranks need no exchange rate between a distance and an accuracy, and the
same rule applies to every paradigm. With one of the two instruments missing, the other decides alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata


def rule_text(quality: str | None, following: str | None) -> str:
    if quality and following:
        return (
            f"lowest sum of ranks by {quality} (lower better) and {following} (higher better) on validation "
            f"prompts; ties: lower {quality}, then smaller CFG"
        )
    only = quality or following
    return f"{'lowest' if quality else 'highest'} {only} on validation prompts; ties: smaller CFG"


def choose(scores: list[dict[str, Any]], quality: str | None, following: str | None) -> int:
    """Index of the winning candidate among `scores` (dicts with cfg_scale and the two metrics), by the rule above.
    Also writes each candidate's `rank_sum` into its dict."""
    if not scores:
        raise ValueError("no candidates to choose from")
    if not (quality or following):
        raise ValueError("choosing a sampling setting needs an instrument that measures quality or prompt following")
    total = np.zeros(len(scores))
    if quality:
        total += rankdata([_finite(s[quality], worst=np.inf) for s in scores])
    if following:
        total += rankdata([-_finite(s[following], worst=-np.inf) for s in scores])
    for s, t in zip(scores, total):
        s["rank_sum"] = float(t)
    tiebreak = [(t, _finite(s[quality], np.inf) if quality else 0.0, s["cfg_scale"]) for t, s in zip(total, scores)]
    return min(range(len(scores)), key=lambda i: tiebreak[i])


def _finite(x: Any, worst: float) -> float:
    """A metric as a float; NaN or missing (e.g. a diverged sampler) ranks last."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return worst
    return x if np.isfinite(x) else worst
