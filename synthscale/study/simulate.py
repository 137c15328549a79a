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

import math
from dataclasses import dataclass
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------- whole studies

OBJECTIVES = ("flow", "masked", "autoregressive")
IMAGE_TOKENS = 16


@dataclass(frozen=True)
class Design:
    """The grid and the noise a simulated study has: by default the embedded default study's grid (two sizes,
    six milestones from 1e11 to 3e12 FLOPs, 128 evaluation images, diffusion's autoencoder ablation at both
    sizes, the same step sweeps). Noise: `fd_se` is the relative standard error of one FD at 128 images (the
    records' intervals say so, as a bootstrap over images would); training noise (per run, and AR(1) along its
    milestones) is in no single run's interval — as in a real study — and is what the rules must survive. With
    `seeds` ≥ 2 every cell is drawn once per seed and averaged by `replicates.aggregate`, whose intervals take in
    the seeds' spread; `calibration.study_design` sets the run sds to what a study measured across its seeds."""

    sizes: tuple[tuple[str, int], ...] = (("2x64", 110_000), ("4x128", 820_000))
    milestones: tuple[float, ...] = (1e11, 2.154e11, 4.642e11, 1e12, 2.154e12, 3e12)
    n_images: int = 128
    fd_se: float = 0.05  # log scale, at 128 images; scales as 1/√n
    fd_run_sd: float = 0.05
    fd_step_sd: float = 0.03
    prompt_run_sd: float = 0.10  # logit scale
    prompt_step_sd: float = 0.05
    rho: float = 0.6
    seeds: int = 1  # replicate seeds per grid cell, averaged as a real study's are (study/replicates.py)
    loss_run_sd: float = 0.01
    loss_step_sd: float = 0.005
    sweep: tuple[tuple[str, tuple[int, ...]], ...] = (("flow", (4, 10, 20, 50)), ("masked", (4, 8, 16)))
    default_steps: tuple[tuple[str, int], ...] = (("flow", 10), ("masked", 8), ("autoregressive", IMAGE_TOKENS))
    ablation: tuple[str, ...] = ("flow",)  # objectives trained again with a second autoencoder, at every size
    # the decoder's FLOPs per image: finding 4(a) is exact arithmetic on FLOPs, not noise, so the calibration holds
    # it true (no decoder) and measures what noise can do to parts (b) and (c); records say it was counted
    decode_flops: float = 0.0


@dataclass(frozen=True)
class Truth:
    """The curves a simulated study is drawn from. Defaults: every claim holds, with these effects —
    prompt accuracy at the highest compute diffusion 0.45, masked 0.60, next-token 0.75 (half of that above
    0.5·ceiling at the lowest); FD: next-token 40 % better at the lowest compute, diffusion better at the
    highest; more steps: diffusion's FD falls by log 0.5, masked's not at all; EMA: diffusion's FD gain
    log 0.3, the token methods' 0.02; the ablation autoencoder: FD log −0.3, prompt accuracy unchanged;
    loss: a power law."""

    prompt_ceiling: tuple[tuple[str, float], ...] = (("flow", 0.45), ("masked", 0.60), ("autoregressive", 0.75))
    fd_law: tuple[tuple[str, tuple[float, float, float]], ...] = (
        ("flow", (4.0, 150.0, 0.60)),
        ("masked", (6.0, 90.0, 0.40)),
        ("autoregressive", (8.0, 90.0, 0.30)),
    )
    steps_gain: tuple[tuple[str, float], ...] = (("flow", 0.5), ("masked", 0.0))  # log FD, fewest → most steps
    ema_gain: tuple[tuple[str, float], ...] = (("flow", 0.3), ("masked", 0.02), ("autoregressive", 0.02))
    ae_fd: float = -0.3  # log FD change of the ablation autoencoder
    ae_prompt: float = 0.0  # prompt-accuracy change of the ablation autoencoder, at every milestone
    loss_law: tuple[float, float, float] = (2.0, 3.0, 0.3)
    loss_break: float = 0.0  # log departure from the power law reached at the largest compute (0: a power law)


def _curve(law: tuple[float, float, float], x: np.ndarray) -> np.ndarray:
    E, A, alpha = law
    return E + A * x**-alpha


def _logit(p):
    return np.log(p / (1 - p))


def _sample_flops(objective: str, n_params: int, steps: int) -> float:
    per_pass = 2.0 * 2 * n_params * IMAGE_TOKENS  # CFG doubles
    return per_pass * (1.1 if objective == "autoregressive" else steps)


def simulate_study(rng: np.random.Generator, truth: Truth | None = None, design: Design | None = None):
    """A `compare.StudyData` drawn from `truth` on `design`'s grid (see the module docstring)."""
    from synthscale.study import compare as cmp  # the study's own views decide settings and main autoencoders

    truth, design = truth or Truth(), design or Design()

    from synthscale.study.replicates import aggregate

    runs, records = [], []
    grid = [(o, s, "main") for o in OBJECTIVES for s in design.sizes]
    grid += [(o, s, "ablation") for o in design.ablation for s in design.sizes]
    for objective, (size, n_params), ae in grid:
        for seed in range(design.seeds):
            run = f"{objective}-{size}-{ae}" + (f"-s{seed}" if seed else "")
            config = {"cell": f"{objective}-{size}-{ae}", "seed": seed}
            where = dict(objective=objective, size=size, autoencoder=f"{objective}-{ae}", params=n_params)
            runs.append(dict(where, run=run, config=config))
            records += _run_records(rng, truth, design, run, objective, size, n_params, ae)
    data = cmp.StudyData(Path("simulated"), {"notes": "SIMULATED"}, runs, [], aggregate(records, runs, n_boot=0), [])
    data.seed_records = records
    data.settings = cmp.primary_settings(records)
    data.main_autoencoders = {o: f"{o}-main" for o in OBJECTIVES}
    return data


def _run_records(rng, truth: Truth, design: Design, run, objective, size, n_params, ae) -> list[dict]:
    c = np.asarray(design.milestones, dtype=float)
    x = c / c[0]
    small = size == design.sizes[0][0] and len(design.sizes) > 1  # the small model: 8 % worse FD, as in the fixture
    fd = _curve(dict(truth.fd_law)[objective], x) * (1.08 if small else 1.0) * math.exp(truth.ae_fd * (ae != "main"))
    fd = fd * np.exp(run_noise(rng, 1, len(c), design.fd_run_sd, design.fd_step_sd, design.rho)[0])
    ceiling = dict(truth.prompt_ceiling)[objective]
    p_true = np.clip(ceiling * (1 - 0.5 * x**-0.35) + truth.ae_prompt * (ae != "main"), 0.01, 0.99)
    p_logit = _logit(p_true) + run_noise(rng, 1, len(c), design.prompt_run_sd, design.prompt_step_sd, design.rho)[0]
    loss = _curve(truth.loss_law, x) * np.exp(truth.loss_break * np.clip(np.log(x) / np.log(x[-1]) * 3 - 2, 0, 1))
    loss = loss * np.exp(run_noise(rng, 1, len(c), design.loss_run_sd, design.loss_step_sd, design.rho)[0])
    fd_se = design.fd_se * math.sqrt(128 / design.n_images)
    default = dict(design.default_steps)[objective]
    sweep = dict(design.sweep).get(objective, (default,))
    ema_gain, raw_noise = dict(truth.ema_gain)[objective], rng.normal(0, design.fd_step_sd, len(c))
    out = []
    for m, cm in enumerate(c):
        last = m == len(c) - 1
        for weights in ("ema", "raw"):
            for steps in sweep if last and weights == "ema" else (default,):
                step_gain = dict(truth.steps_gain).get(objective, 0.0)
                step_pos = (np.log(steps) - np.log(default)) / (np.log(sweep[-1]) - np.log(sweep[0]) or 1.0)
                log_fd = math.log(fd[m]) - step_gain * step_pos
                if weights == "raw":
                    log_fd += ema_gain + raw_noise[m]
                metrics = _eval_noise(rng, log_fd, fd_se, p_logit[m], design.n_images)
                if weights == "ema" and steps == default:
                    metrics["loss"] = float(loss[m])
                flops = _sample_flops(objective, n_params, steps)
                if last and weights == "ema" and steps == default:
                    metrics["latency_s"] = flops / 2e9 * math.exp(rng.normal(0, 0.05))
                    metrics["decode_latency_s"] = design.decode_flops / 2e9 * math.exp(rng.normal(0, 0.05))
                where = dict(run=run, objective=objective, size=size, params=n_params, data_size=20000)
                out.append(
                    dict(
                        where,
                        autoencoder=f"{objective}-{ae}",
                        milestone=m,
                        train_flops=float(cm),
                        weights=weights,
                        steps=steps,
                        cfg_scale=3.0,
                        sample_flops_per_image=flops,
                        decode_flops_per_image=design.decode_flops,
                        metrics=metrics,
                        instruments={},
                    )
                )
    return out


def _eval_noise(rng, log_fd: float, fd_se: float, p_logit: float, n: int) -> dict[str, float]:
    """One evaluation: FD with log-normal noise and the interval a bootstrap over images would report; prompt
    accuracy as a binomial count over n prompts with its normal-approximation interval."""
    fd = math.exp(log_fd + rng.normal(0, fd_se))
    p = rng.binomial(n, 1 / (1 + math.exp(-p_logit))) / n
    half = 1.959964 * math.sqrt(max(p * (1 - p), 1 / n) / n)
    return {
        "fd_probe": fd,
        "fd_probe_lo": fd * math.exp(-1.959964 * fd_se),
        "fd_probe_hi": fd * math.exp(1.959964 * fd_se),
        "prompt_acc": p,
        "prompt_acc_lo": max(0.0, p - half),
        "prompt_acc_hi": min(1.0, p + half),
    }
