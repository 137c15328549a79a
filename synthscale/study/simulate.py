"""Synthetic studies with a known truth, for calibrating the decision rules and checking the fits' intervals.

A simulated study is what `compare.load_study` returns — records, runs, autoencoders — drawn from stated curves
with noise shaped like a real study's: each run has its own offset (seed, data order), milestones of one run
follow each other (AR(1) noise along the run, as checkpoints of one training run do), and every evaluated number
carries evaluation noise at the study's sample count with the 95 % interval an evaluation would store. The rules
in `findings.py` then judge it exactly as they judge a real study, so how often they say "confirmed" when the
claim is false (and when it holds) is measured, not assumed.

TEST DATA: nothing here comes from training; never present a simulated number as a finding.
"""

from __future__ import annotations

import numpy as np


def run_noise(rng: np.random.Generator, n_runs: int, n_milestones: int, sd_run: float, sd_step: float, rho: float):
    """[n_runs, n_milestones] log-scale noise: a per-run offset (sd_run) plus AR(1) noise along the milestones
    (stationary sd sd_step, lag-one correlation rho)."""
    eps = np.empty((n_runs, n_milestones))
    eps[:, 0] = rng.normal(0.0, sd_step, n_runs)
    for t in range(1, n_milestones):
        eps[:, t] = rho * eps[:, t - 1] + np.sqrt(1 - rho**2) * rng.normal(0.0, sd_step, n_runs)
    return rng.normal(0.0, sd_run, (n_runs, 1)) + eps


def loss_runs(
    rng: np.random.Generator,
    law: tuple[float, float, float] = (2.0, 3.0, 0.3),
    n_runs: int = 6,
    milestones: np.ndarray | None = None,
    sd_run: float = 0.02,
    sd_step: float = 0.01,
    rho: float = 0.7,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(compute, loss, run) of `n_runs` runs along L(C) = E + A·(C/C₀)^−α (C₀ the first milestone), each with
    its own offset and AR(1) noise in log space."""
    c = np.logspace(11, 13, 9) if milestones is None else np.asarray(milestones, dtype=float)
    E, A, alpha = law
    truth = E + A * (c / c[0]) ** -alpha
    noise = run_noise(rng, n_runs, len(c), sd_run, sd_step, rho)
    loss = truth[None, :] * np.exp(noise)
    return np.tile(c, n_runs), loss.ravel(), np.repeat(np.arange(n_runs), len(c))
