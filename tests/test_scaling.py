import dataclasses

import numpy as np
import pytest

from synthscale.study import simulate
from synthscale.study.scaling import FitError, crossover, fit_power_law, frontier, holdout_validation


def _law(c, E, A, alpha):
    return E + A * np.power(c, -alpha)


def test_exact_power_law_is_recovered():
    c = np.logspace(12, 16, 10)
    fit = fit_power_law(c, _law(c, 1.5, 300.0, 0.15), n_boot=0)
    assert fit.E == pytest.approx(1.5, rel=1e-4)
    assert fit.A == pytest.approx(300.0, rel=1e-3)
    assert fit.alpha == pytest.approx(0.15, rel=1e-4)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert np.abs(fit.residuals).max() < 1e-6


@pytest.mark.parametrize(
    "E,A,alpha,lo,hi", [(1.5, 300.0, 0.15, 12, 16), (0.2, 4e6, 0.35, 18, 22), (3.0, 1e6, 0.6, 9, 11)]
)
def test_noisy_data_recovers_alpha_within_5_percent(E, A, alpha, lo, hi):
    rng = np.random.default_rng(0)
    c = np.logspace(lo, hi, 24)
    values = _law(c, E, A, alpha) * np.exp(rng.normal(0.0, 0.003, len(c)))
    fit = fit_power_law(c, values, n_boot=60, seed=1)
    assert abs(fit.alpha - alpha) / alpha < 0.05
    assert fit.E == pytest.approx(E, rel=0.1)
    for name, est in (("E", fit.E), ("A", fit.A), ("alpha", fit.alpha)):
        lo_, hi_ = fit.intervals[name]
        assert lo_ < hi_ and lo_ <= est * (1 + 1e-9) and est <= hi_ * (1 + 1e-9)
    band = fit.band(c)
    assert np.all(band[0] <= fit.predict(c) + 1e-9) and np.all(fit.predict(c) <= band[1] + 1e-9)


def test_an_outlier_barely_moves_the_huber_fit():
    c = np.logspace(12, 16, 16)
    values = _law(c, 1.5, 300.0, 0.15)
    values[5] *= 1.5  # one corrupted point
    fit = fit_power_law(c, values, n_boot=0)
    assert fit.alpha == pytest.approx(0.15, rel=0.02)


def test_holdout_predicts_a_true_law_and_flags_a_broken_one():
    c = np.logspace(12, 16, 12)
    good = holdout_validation(c, _law(c, 1.0, 50.0, 0.1))
    assert len(good.points) == 2 and good.n_train == 10  # a fifth of 12 distinct computes, rounded
    assert good.mean_abs_rel_error < 1e-4
    broken = _law(c, 1.0, 50.0, 0.1)
    broken[-2:] *= 1.3  # the law stops holding at the largest compute
    assert holdout_validation(c, broken).mean_abs_rel_error > 0.2
    assert holdout_validation(c[:5], _law(c[:5], 1.0, 50.0, 0.1)) is not None  # 4 left to fit: enough
    assert holdout_validation(c[:4], _law(c[:4], 1.0, 50.0, 0.1)) is None  # 3 left: too few


def test_crossover_is_found_where_the_curves_cross():
    rng = np.random.default_rng(2)
    c = np.logspace(11, 15, 16)
    slow = lambda x: _law(x, 1.0, 50.0, 0.1)  # noqa: E731  flatter: better at low compute
    fast = lambda x: _law(x, 0.5, 2e4, 0.3)  # noqa: E731  steeper: better at high compute
    grid = np.logspace(11, 15, 100001)
    truth = grid[np.argmin(np.abs(slow(grid) - fast(grid)))]
    fa = fit_power_law(c, slow(c) * np.exp(rng.normal(0, 0.002, 16)), n_boot=40)
    fb = fit_power_law(c, fast(c) * np.exp(rng.normal(0, 0.002, 16)), n_boot=40)
    x = crossover(fa, fb, "slow", "fast")
    assert x.compute == pytest.approx(truth, rel=0.05)
    assert x.interval[0] <= truth <= x.interval[1]
    assert x.a_better_below is True and x.p_cross > 0.9
    assert "cross at" in x.describe()
    # a failed refit is a NaN row, and refit i of one curve still meets refit i of the other
    failed = np.array(fa.boot)
    failed[:10] = np.nan
    with_failures = crossover(dataclasses.replace(fa, boot=failed), fb)
    aligned = crossover(dataclasses.replace(fa, boot=fa.boot[10:]), dataclasses.replace(fb, boot=fb.boot[10:]))
    assert (with_failures.p_cross, with_failures.interval) == (aligned.p_cross, aligned.interval)


def test_no_crossing_within_range_is_said():
    c = np.logspace(11, 15, 10)
    fa = fit_power_law(c, _law(c, 1.0, 50.0, 0.1), n_boot=20)
    fb = fit_power_law(c, _law(c, 2.0, 100.0, 0.1), n_boot=20)  # above fa everywhere
    x = crossover(fa, fb, "a", "b")
    assert x.compute is None and x.interval is None
    assert x.describe().startswith("no crossing within range")


def test_frontier_keeps_points_no_cheaper_point_beats():
    c = [1, 1, 2, 3, 4, 5]
    v = [5.0, 4.0, 4.5, 3.0, 3.5, 2.0]
    assert frontier(c, v).tolist() == [1, 3, 5]
    assert frontier(c, [1.0, 2.0, 1.5, 3.0, 3.0, 2.5], lower_is_better=False).tolist() == [1, 3]


def test_unfittable_data_is_a_clear_error():
    with pytest.raises(FitError, match="distinct compute"):
        fit_power_law([1e12, 1e13, 1e14], [3.0, 2.0, 1.5])
    with pytest.raises(FitError, match="> 0"):
        fit_power_law([1e12, 1e13, 1e14, 1e15], [3.0, 2.0, 0.0, 1.0])
    with pytest.raises(FitError, match="compute values but"):
        fit_power_law([1e12, 1e13], [1.0])


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    c = np.logspace(12, 16, 24)
    covered = []
    for i in range(25):
        fit = fit_power_law(c, _law(c, 1.5, 300.0, 0.15) * np.exp(rng.normal(0, 0.003, 24)), n_boot=100, seed=i)
        lo, hi = fit.intervals["alpha"]
        covered.append(lo <= 0.15 <= hi)
    assert np.mean(covered) >= 0.8  # measured 0.96


def _frontier_and_run_fits(seed: int, n_boot: int):
    """One simulated objective: 6 runs on one true law, a per-run offset and AR(1) noise along each run."""
    c, v, runs = simulate.loss_runs(np.random.default_rng(seed), law=TRUE_LAW, sd_run=0.02, sd_step=0.01, rho=0.7)
    k = frontier(c, v)
    env = fit_power_law(c[k], v[k], n_boot=n_boot, seed=seed)  # the envelope, resampled as if independent
    by_run = fit_power_law(c, v, n_boot=n_boot, seed=seed, groups=runs)
    return env, by_run


TRUE_LAW = (2.0, 3.0, 0.3)


def test_the_run_bootstrap_covers_the_exponent_the_envelope_fit_misses():
    """A running minimum over noisy milestones picks lucky draws (flattening the tail) and its point bootstrap
    treats milestones of one run as independent: narrow and off. All milestones, resampled by run, are not."""
    env, by_run = _frontier_and_run_fits(seed=5, n_boot=40)
    lo, hi = by_run.intervals["alpha"]
    assert lo <= TRUE_LAW[2] <= hi and by_run.n_groups == 6 and by_run.n == 54
    e_lo, e_hi = env.intervals["alpha"]
    assert not e_lo <= TRUE_LAW[2] <= e_hi
    assert e_hi - e_lo < hi - lo


def test_a_run_bootstrap_needs_enough_runs_and_keeps_failed_refits_aligned():
    c, v, runs = simulate.loss_runs(np.random.default_rng(1), n_runs=3)
    fit = fit_power_law(c, v, n_boot=20, groups=runs)
    assert fit.intervals["alpha"] is None and "3 run(s)" in fit.interval_note and fit.band(c) is None
    assert fit.boot.shape == (20, 3)  # one row per requested refit, NaN where a refit failed
    with pytest.raises(FitError, match="group labels"):
        fit_power_law(c, v, groups=runs[:-1])


@pytest.mark.slow
def test_the_run_bootstrap_covers_the_true_exponent_near_its_nominal_rate():
    covered_run, covered_env = [], []
    for seed in range(40):
        env, by_run = _frontier_and_run_fits(seed, n_boot=60)
        lo, hi = by_run.intervals["alpha"]
        covered_run.append(lo <= TRUE_LAW[2] <= hi)
        e_lo, e_hi = env.intervals["alpha"]
        covered_env.append(e_lo <= TRUE_LAW[2] <= e_hi)
    # measured: 0.975 by run, 0.85 for the envelope with a point bootstrap (nominal 0.95)
    assert np.mean(covered_run) >= 0.85
    assert np.mean(covered_env) < np.mean(covered_run)
