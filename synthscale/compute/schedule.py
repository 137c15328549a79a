"""The learning-rate schedule every trainer uses: linear warm-up, then constant or a cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, peak: float, warmup: int, end: int, final_ratio: float = 0.0, decay: bool = True) -> float:
    """The learning rate at optimizer step `step` (from 0): peak·(step + 1)/warmup over the first `warmup` steps,
    then `peak` (decay=False) or a cosine from `peak` down to peak·final_ratio at step `end`, flat after it.
    A pure function of the step, so a resumed run restores its schedule by restoring the step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if not decay:
        return peak
    progress = min(1.0, (step - warmup) / max(1, end - warmup))
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
