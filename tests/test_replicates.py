"""Replicate seeds: cells aggregate over seeds only, and the two-level bootstrap covers a known mean."""

from __future__ import annotations

import numpy as np
import pytest

from synthscale.study import compare as cmp
from synthscale.study import replicates as rep


def test_two_level_interval_covers_a_known_mean_at_the_nominal_rate():
    """Simulated studies with seed noise and prompt noise: the 95 % interval of the mean over 3 seeds covers the
    true mean 95 % ± a few points of the time (a normal quantile would cover ~80 %; prompts-only intervals less)."""
    rng = np.random.default_rng(0)
    truth, seed_sd, n_prompts, sims = 0.4, 0.08, 256, 600
    covered, prompts_only = 0, 0
    for _ in range(sims):
        p = np.clip(truth + rng.normal(0, seed_sd, 3), 0.01, 0.99)  # each seed's own true accuracy
        acc = rng.binomial(n_prompts, p) / n_prompts
        se = np.sqrt(acc * (1 - acc) / n_prompts)
        lo, hi = rep.two_level_interval(acc, se, rng)
        covered += lo <= truth <= hi
        prompts_only += abs(acc.mean() - truth) <= 1.96 * np.sqrt(np.mean(se**2) / 3)
    assert 0.92 <= covered / sims <= 0.985, covered / sims
    assert prompts_only / sims < 0.7  # the prompts-only interval ignores training noise


def test_two_level_interval_covers_when_prompt_noise_dominates():
    rng = np.random.default_rng(1)
    covered, sims = 0, 400
    for _ in range(sims):
        acc = rng.binomial(64, 0.3, 4) / 64
        lo, hi = rep.two_level_interval(acc, np.sqrt(acc * (1 - acc) / 64), rng)
        covered += lo <= 0.3 <= hi
    assert covered / sims >= 0.93


def test_one_seed_has_no_two_level_interval():
    with pytest.raises(ValueError, match="two seeds"):
        rep.two_level_interval(np.array([0.5]), np.array([0.03]), np.random.default_rng(0))


def _record(run: str, acc: float, milestone: int = 0) -> dict:
    return dict(
        run=run,
        objective="flow",
        size="2x64",
        milestone=milestone,
        weights="ema",
        steps=10,
        cfg_scale=3.0,
        train_flops=1e12,
        metrics={"prompt_acc": acc, "prompt_acc_lo": acc - 0.05, "prompt_acc_hi": acc + 0.05},
    )


def test_aggregate_averages_seeds_of_one_cell_only():
    cfg = {"objective": {"name": "flow"}, "model": {"size": "2x64"}}
    runs = [
        {"run": "a", "config": {**cfg, "seed": 0}},
        {"run": "a-s1", "config": {**cfg, "seed": 1}},
        {"run": "a-s2", "config": {**cfg, "seed": 2}},
        {"run": "b", "config": {**cfg, "model": {"size": "4x128"}, "seed": 0}},
    ]
    records = [_record("a", 0.2), _record("a-s1", 0.5), _record("a-s2", 0.35), _record("b", 0.6)]
    out = {r["run"]: r for r in rep.aggregate(records, runs)}
    assert set(out) == {"a", "b"}  # the seeds of a collapse into the lowest seed's run id; b is another cell
    a = out["a"]
    assert a["seeds"] == [0, 1, 2] and a["metrics"]["prompt_acc"] == pytest.approx(0.35)
    lo, hi = a["metrics"]["prompt_acc_lo"], a["metrics"]["prompt_acc_hi"]
    assert lo < 0.2 and hi > 0.5  # training noise (0.2 … 0.5) is in the interval, not only the prompts' ±0.05
    assert out["b"]["seeds"] == [0] and out["b"]["metrics"]["prompt_acc_lo"] == pytest.approx(0.55)
    assert rep.seeds_per_cell(list(out.values())) == 1 and not rep.training_noise_measured(list(out.values()))
    assert rep.training_noise_measured([a])
    sd, df = rep.measured_spread([a], "prompt_acc", logit=True)["flow"]
    assert sd > 0.5 and df == 2 and rep.sd_upper(sd, df) > 2 * sd  # two degrees of freedom: a loose upper limit


def test_plots_draw_each_seed_faintly_beside_the_mean():
    from synthscale.study import plots

    drawn = []

    class Axes:  # records what a figure would draw
        def errorbar(self, x, y, **kw):
            drawn.append(("mean", list(x), list(y), kw))

        def plot(self, x, y, **kw):
            drawn.append(("mean", list(x), list(y), kw))

        def scatter(self, x, y, **kw):
            drawn.append(("seeds", list(x), list(y), kw))

    cell = _record("a", 0.35)
    cell["seed_values"] = {"prompt_acc": [0.2, 0.5, 0.35]}
    plain = _record("b", 0.6, milestone=1)  # one seed: nothing faint
    style = lambda key: ("C0", "-", "o", key)  # noqa: E731
    plots._draw_metric_vs(Axes(), {"flow": [cell, plain]}, "prompt_acc", "train_flops", style)
    means = [d for d in drawn if d[0] == "mean"]
    seeds = [d for d in drawn if d[0] == "seeds"]
    assert len(means) == 1 and means[0][2] == [0.35, 0.6]
    assert len(seeds) == 1 and seeds[0][1:3] == ([1e12] * 3, [0.2, 0.5, 0.35]) and seeds[0][3]["alpha"] < 0.5


def test_seeds_whose_validation_chose_other_cfg_scales_are_one_cell():
    """With `cfg_scale: best` each seed's milestone samples at the scale its own validation prompts chose: the
    setting is the choosing, so the seeds still average into one cell (and a fixed scale stays its own cell)."""
    cfg = {"objective": {"name": "flow"}, "model": {"size": "2x64"}}
    runs = [{"run": f"a-s{s}", "config": {**cfg, "seed": s}} for s in range(3)]
    chosen = []
    for s, scale in enumerate((1.0, 3.0, 3.0)):
        r = dict(_record(f"a-s{s}", 0.2 + 0.1 * s), cfg_scale=scale)
        r["instruments"] = {"cfg_selection": {"by": "validation", "applied": ["cfg_scale"]}}
        chosen.append(r)
    fixed = dict(_record("a-s0", 0.9), steps=20)
    out = rep.aggregate([*chosen, fixed], runs)
    assert sorted(len(r["seeds"]) for r in out) == [1, 3]
    [cell] = [r for r in out if len(r["seeds"]) == 3]
    assert cell["metrics"]["prompt_acc"] == pytest.approx(0.3)


def test_seeds_that_all_score_zero_still_have_an_interval_above_zero():
    """0 of 256 prompts on every seed: each record's bootstrap interval is [0, 0], but the rate is not known to be
    exactly 0, so the cell's interval reaches above 0 (Agresti–Coull) and stays within [0, 1]."""
    cfg = {"objective": {"name": "flow"}, "model": {"size": "2x64"}}
    runs = [{"run": f"a-s{s}", "config": {**cfg, "seed": s}} for s in range(3)]
    records = []
    for s in range(3):
        r = _record(f"a-s{s}", 0.0)
        r["metrics"] = {"prompt_acc": 0.0, "prompt_acc_lo": 0.0, "prompt_acc_hi": 0.0, "fd_probe": 50.0 + s}
        r["instruments"] = {"prompts": {"test": 256, "holdout": 32}}
        records.append(r)
    [cell] = rep.aggregate(records, runs)
    m = cell["metrics"]
    assert m["prompt_acc"] == 0.0 and m["prompt_acc_lo"] == 0.0 and 0.003 < m["prompt_acc_hi"] < 0.05
    assert m["fd_probe_lo"] < 50.0  # not a proportion: not clipped, no floor
    assert rep.proportion_n(records[0], "holdout_prompt_acc") == 32 and rep.proportion_n(records[0], "fd_probe") is None


def test_a_positive_metrics_interval_is_shown_without_its_impossible_part():
    """Flow's FD over three seeds that do or do not break through (13, 66, 72): the t-interval the rules decide on
    reaches below 0; the report shows it from 0, with the same upper end. KID (can be < 0) is shown as stored."""
    cfg = {"objective": {"name": "flow"}, "model": {"size": "2x64"}}
    runs = [{"run": f"a-s{s}", "config": {**cfg, "seed": s}} for s in range(3)]
    records = []
    for s, fd in enumerate((13.0, 66.0, 72.0)):
        r = _record(f"a-s{s}", 0.0)
        r["metrics"] = {"fd_probe": fd, "fd_probe_lo": fd * 0.9, "fd_probe_hi": fd * 1.1, "kid": 0.001 * (s - 1)}
        records.append(r)
    [cell] = rep.aggregate(records, runs)
    lo, hi = cmp.interval(cell, "fd_probe")
    assert lo < 0 < hi
    assert cmp.shown_interval(cell, "fd_probe") == (0.0, hi)
    assert cmp.shown_interval(cell, "kid") == cmp.interval(cell, "kid") and cmp.interval(cell, "kid")[0] < 0
