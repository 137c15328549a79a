"""Replicate seeds: a grid cell's runs that differ only in their seed (init, data order, sampling), averaged into
one record whose intervals include training noise.

A cell is (objective, size, data size, budget, autoencoder, every other config field) × (milestone, weights,
steps, CFG): the runs' stored configs with the seed left out. Its record's value of each metric is the mean over
seeds; its 95 % interval comes from a two-level bootstrap:

1. resample the seeds (with replacement), their deviations from the mean shrunk so that they carry only the
   between-seed spread the evaluation noise does not explain (σ̂_b² = max(s² − mean se², 0), s² the seeds'
   sample variance), and scaled by √(k/(k−1)) so the resampled mean's variance is unbiased;
2. within each drawn seed, redraw its evaluation number. The records keep no per-prompt or per-image scores, only
   each number's own 95 % interval (a bootstrap over prompts/images), so this inner level is parametric: normal
   with the standard error that interval implies. A share of prompts (whole-prompt, attribute, task accuracy) takes
   at least Agresti–Coull's standard error for its prompt count, and its interval is clipped to [0, 1]: every
   prompt scoring 0 gives a zero-width bootstrap, not a rate known to be exactly 0.

The bootstrap means' standard deviation is then √((σ̂_b² + mean se²)/k), and the interval is mean ± t(k−1) × that
(Student's t: with three seeds the spread itself is known to only two degrees of freedom, and a normal quantile
would cover ~80 % instead of 95 %). tests/test_replicates.py checks the coverage in simulation.

One seed: training noise is unmeasured. The record keeps its evaluation-only interval, and no verdict on a
difference may go beyond "inconclusive" (`findings.apply_replicates` states and applies the rule).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import defaultdict
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from synthscale.study.compare import setting

N_BOOT = 400
Z95 = 1.959964
MIN_SEEDS = 2  # seeds per compared cell before a verdict on a difference may be more than "inconclusive"
SUFFIXES = ("_lo", "_hi", "_std")


def run_seeds(runs: list[dict[str, Any]]) -> dict[str, int]:
    """Run id → its seed (RunConfig.seed in the stored config; 0 where the config is not stored)."""
    return {r["run"]: int((r.get("config") or {}).get("seed", 0)) for r in runs}


def _cell_of_run(run: dict[str, Any] | None, run_id: str) -> str:
    """What keys a run's cell: its stored config without the seed (runs without a config are their own cell)."""
    cfg = (run or {}).get("config")
    if not cfg:
        return f"run:{run_id}"
    return json.dumps({k: v for k, v in cfg.items() if k != "seed"}, sort_keys=True, default=str)


def _moments(values, ses) -> tuple[int, float, float, float]:
    """(k, mean, sample variance, mean se²) in plain Python: a handful of seeds, called by the thousand."""
    k = len(values)
    mean = sum(values) / k
    s2 = sum((v - mean) ** 2 for v in values) / (k - 1) if k > 1 else 0.0
    return k, mean, s2, sum(e * e for e in ses) / k


def seed_sd(values, ses) -> float:
    """The between-seed (training) standard deviation beyond evaluation noise: √max(s² − mean se², 0)."""
    if len(values) < 2:
        return math.nan
    _, _, s2, m = _moments(values, ses)
    return math.sqrt(max(s2 - m, 0.0))


def two_level_interval(
    values: np.ndarray, ses: np.ndarray, rng: np.random.Generator, n_boot: int = N_BOOT
) -> tuple[float, float]:
    """95 % interval of the mean over seeds of `values` (one per seed, each with evaluation standard error
    `ses`): resample seeds, then redraw each drawn seed's number (the module docstring). Needs ≥ 2 seeds.
    n_boot=0: the closed form the bootstrap's sd converges to, √((σ̂_b² + mean se²)/k) (simulated studies by the
    thousand, where Monte-Carlo draws would only add time)."""
    if len(values) < 2:
        raise ValueError("a two-level interval needs at least two seeds; one seed has only its evaluation interval")
    k, mean, s2, m = _moments(values, ses)
    between = max(s2 - m, 0.0)
    if n_boot == 0:
        sd = math.sqrt((between + m) / k)
    else:
        y, se = np.asarray(values, float), np.asarray(ses, float)
        shrink = math.sqrt(k / (k - 1) * between / s2) if s2 > 0 else 0.0
        resid = shrink * (y - mean)
        idx = rng.integers(0, k, (n_boot, k))
        draws = mean + resid[idx] + rng.standard_normal((n_boot, k)) * se[idx]
        sd = float(draws.mean(axis=1).std(ddof=1))
    half = t95(k - 1) * sd
    return mean - half, mean + half


@functools.lru_cache
def t95(df: int) -> float:
    """Student's t two-sided 95 % quantile."""
    return float(student_t.ppf(0.975, df))


_PROPORTION = re.compile(r"(holdout_)?(prompt_acc|attr_acc_\w+|task_acc_\w+)")


def proportion_n(r: dict[str, Any], name: str) -> int | None:
    """How many prompts a share-of-prompts metric (whole-prompt, attribute or task accuracy) was counted over; None
    for any other metric or a record that does not say."""
    m = _PROPORTION.fullmatch(name)
    n = ((r.get("instruments") or {}).get("prompts") or {}).get("holdout" if m and m.group(1) else "test")
    return int(n) if m and isinstance(n, int) and n > 0 else None


def _value_se(metrics: dict[str, Any], name: str, n: int | None = None) -> tuple[float, float] | None:
    """A record's number and the standard error its stored interval implies (0 without one). For a share of `n`
    prompts the error is at least Agresti–Coull's: a bootstrap over prompts that all score 0 (or 1) has zero width,
    yet 0 of 256 does not say the rate is exactly 0."""
    v = metrics.get(name)
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    lo, hi, std = (metrics.get(name + s) for s in SUFFIXES)
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo) and math.isfinite(hi):
        se = max(float(hi) - float(lo), 0.0) / (2 * Z95)
    elif isinstance(std, (int, float)) and math.isfinite(std):
        se = float(std)
    else:
        se = 0.0
    if n:
        p = (float(v) * n + 2) / (n + 4)
        se = max(se, math.sqrt(p * (1 - p) / (n + 4)))
    return float(v), se


def _metric_names(records: list[dict[str, Any]]) -> list[str]:
    names = {k for r in records for k in r["metrics"] if not k.endswith(SUFFIXES)}
    return sorted(names)


def aggregate(
    records: list[dict[str, Any]], runs: list[dict[str, Any]], seed: int = 0, n_boot: int = N_BOOT
) -> list[dict[str, Any]]:
    """One record per cell (see the module docstring): fields of its lowest-seed record (so its run id, artifacts
    and sample grids are that run's), metrics averaged over seeds with two-level intervals, plus `seeds` (the
    seeds averaged), `seed_values` (metric → per-seed values) and `seed_sd` (metric → between-seed sd beyond
    evaluation noise; NaN with one seed). A cell with one seed keeps its record's numbers and intervals."""
    by_id = {r["run"]: r for r in runs}
    seeds = run_seeds(runs)
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        # the setting names a CFG chosen on validation as the choosing: each seed's own scale still meets its cell
        key = (_cell_of_run(by_id.get(r["run"]), r["run"]), r["milestone"], *setting(r))
        cells[key].append(r)
    rng = np.random.default_rng(seed)
    out = []
    for members in cells.values():
        members = sorted(members, key=lambda r: seeds.get(r["run"], 0))
        first = members[0]
        agg = dict(first, seeds=[seeds.get(r["run"], 0) for r in members], seed_values={}, seed_sd={})
        if len(members) == 1:
            agg["metrics"] = dict(first["metrics"])
            out.append(agg)
            continue
        metrics: dict[str, float] = {}
        for name in _metric_names(members):
            n = proportion_n(first, name)
            pairs = [p for r in members if (p := _value_se(r["metrics"], name, n)) is not None]
            if not pairs:
                continue
            y, se = [p[0] for p in pairs], [p[1] for p in pairs]
            metrics[name] = sum(y) / len(y)
            agg["seed_values"][name] = y
            if len(y) >= 2:
                lo, hi = two_level_interval(y, se, rng, n_boot)
                metrics[name + "_lo"], metrics[name + "_hi"] = (max(lo, 0.0), min(hi, 1.0)) if n else (lo, hi)
                agg["seed_sd"][name] = seed_sd(y, se)
        agg["metrics"] = metrics
        agg["train_flops"] = sum(r["train_flops"] for r in members) / len(members)
        out.append(agg)
    return out


def seeds_per_cell(records: list[dict[str, Any]]) -> int:
    """The fewest seeds behind any record (1 where a record carries no `seeds`: nothing says it was replicated)."""
    return min((len(r.get("seeds") or [0]) for r in records), default=1)


def training_noise_measured(records: list[dict[str, Any]]) -> bool:
    """Whether every record averages ≥ MIN_SEEDS seeds, so its interval includes training noise."""
    return bool(records) and seeds_per_cell(records) >= MIN_SEEDS


def measured_spread(records: list[dict[str, Any]], metric: str, logit: bool = False) -> dict[str, tuple[float, int]]:
    """Per objective, the between-seed sd of `metric`, pooled over its cells (the pooled sample variance), on the
    log scale (`logit`: the logit scale, for accuracies) — what the calibration simulates as
    training noise. Evaluation noise is left in (conservative: the simulation adds its own on top). Cells with
    one seed do not count; an objective without replicated cells is left out. Each value is (sd, degrees of
    freedom: the sum of seeds − 1 over the pooled cells)."""
    pooled: dict[str, list[float]] = defaultdict(list)
    df: dict[str, int] = defaultdict(int)
    for r in records:
        ys = (r.get("seed_values") or {}).get(metric)
        if not ys or len(ys) < 2:
            continue
        y = np.asarray(ys, float)
        if logit:
            y = np.log(np.clip(y, 1e-3, 1 - 1e-3) / (1 - np.clip(y, 1e-3, 1 - 1e-3)))
        elif np.all(y > 0):
            y = np.log(y)
        else:
            continue
        pooled[r["objective"]].append(float(np.var(y, ddof=1)) * (len(y) - 1))
        df[r["objective"]] += len(y) - 1
    return {o: (math.sqrt(sum(v) / df[o]), df[o]) for o, v in sorted(pooled.items())}


def sd_upper(sd: float, df: int, level: float = 0.95) -> float:
    """One-sided upper confidence limit of a standard deviation estimated with `df` degrees of freedom."""
    from scipy.stats import chi2

    return sd * math.sqrt(df / float(chi2.ppf(1 - level, df)))
