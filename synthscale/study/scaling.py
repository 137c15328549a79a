"""Scaling-law fits: L(C) = E + A·C^(−α), with Chinchilla's loss and optimiser (Hoffmann et al. 2022, approach 3).

The loss is modelled in log space as log L̂ = LSE(a − α·x, e) with x = log(C / c_ref), E = exp(e),
A = exp(a)·c_ref^α, and the fit minimises the summed Huber loss (δ = 1e-3) of log L̂ − log L with L-BFGS-B
from a grid of starts, keeping the best. c_ref (the smallest compute) keeps the numbers well scaled: FLOPs
span 1e9–1e22 and exp(a) would otherwise over- or underflow.

The study fits every milestone of every run. Milestones of one run share its noise (same weights, seed, data
order), so the bootstrap resamples whole runs (`groups`), never points as if independent; without groups it
resamples points. Every refit screens the main fit's grid of starts (plus its optimum) and needs as many distinct
compute values as the main fit; a failed refit stays in `boot` as a row of NaN, so the i-th refits of two fits
stay paired. Intervals are percentile 95 %. Validation refits without the largest-compute points and reports how
well the curve predicts them; `crossover` finds where two fitted curves cross, with a bootstrap interval,
inside the compute range both were measured on.
scipy.optimize does the minimising; the objective and its gradient are written out here because they are the
method (three lines of algebra), not something a library provides.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize

HUBER_DELTA = 1e-3  # Chinchilla's δ: residuals in log space beyond 0.1 % count linearly (robust to outliers)
MIN_POINTS = 4  # three parameters: fewer points leave nothing to check the curve against
# grid of starts (α, E as a fraction of the smallest value, exp(a) as a fraction of the value at c_ref)
_ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
_E_FRACTIONS = (1e-3, 0.3, 0.6, 0.9)
_A_FRACTIONS = (0.1, 0.5, 1.0)
_DESCENTS = 8  # L-BFGS-B runs from the best-scoring starts of the grid
_BOOT_DESCENTS = 2  # per bootstrap refit: the best 2 of the screened grid + the main optimum
MIN_GROUPS = 4  # a run bootstrap over fewer runs has too few distinct resamples (3 runs: 10) to be an interval


def _one_blas_thread():
    """L-BFGS-B calls BLAS on 3×3 problems; OpenBLAS worker threads then spin on a busy 2-core machine and one
    minimise takes ~35× longer (measured 235 ms vs 7 ms). threadpoolctl limits them for the fit's duration."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # still correct, only slower
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class FitError(ValueError):
    """Data a power law cannot be fitted to (too few points, non-positive values); the message says which."""


@dataclass
class HoldoutPoint:
    compute: float
    actual: float
    predicted: float

    @property
    def rel_error(self) -> float:
        return (self.predicted - self.actual) / self.actual


@dataclass
class Holdout:
    """The fit on all but the largest-compute points, and how it predicts those."""

    n_train: int
    points: list[HoldoutPoint]

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean([abs(p.rel_error) for p in self.points]))


@dataclass
class PowerLawFit:
    """L(C) = E + A·C^(−α) with 95 % bootstrap intervals (None when too few bootstrap refits succeeded)."""

    metric: str
    compute: np.ndarray  # the fitted points
    values: np.ndarray
    E: float
    A: float
    alpha: float
    c_ref: float
    r2: float  # of log L in log space
    objective_value: float  # summed Huber loss at the optimum
    n_boot: int  # bootstrap refits that succeeded
    n_boot_requested: int
    intervals: dict[str, tuple[float, float] | None]  # E, A, alpha
    boot: np.ndarray = field(repr=False)  # [n_boot_requested, 3]: (E, A·c_ref^-α, α) per refit, NaN where it failed
    holdout: Holdout | None = None
    n_groups: int = 0  # runs the bootstrap resampled (0: it resampled points)
    interval_note: str = ""  # why there are no intervals, when there are none

    @property
    def n(self) -> int:
        return len(self.compute)

    @property
    def residuals(self) -> np.ndarray:
        """log L − log L̂ per fitted point."""
        return np.log(self.values) - np.log(self.predict(self.compute))

    def predict(self, compute) -> np.ndarray:
        c = np.asarray(compute, dtype=float)
        return self.E + self.A * np.power(c, -self.alpha)

    def band(self, compute, level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise bootstrap interval of the fitted curve at `compute`."""
        if self.intervals.get("alpha") is None:
            return None
        ok = self.boot[np.isfinite(self.boot).all(1)]
        curves = _curves(ok, np.asarray(compute, dtype=float) / self.c_ref)  # [n_boot, len(compute)]
        q = (1 - level) / 2 * 100
        return np.percentile(curves, q, axis=0), np.percentile(curves, 100 - q, axis=0)


@dataclass
class Crossover:
    """Where curve a − curve b changes sign inside [lo, hi]. `compute` is None when the fitted curves do not
    cross there; `p_cross` is the share of paired bootstrap refits that cross inside the range."""

    a: str
    b: str
    lo: float
    hi: float
    compute: float | None
    interval: tuple[float, float] | None
    p_cross: float
    a_better_below: bool | None  # lower is better: is curve a below curve b at lo?

    def describe(self) -> str:
        if self.compute is None:
            return (
                f"no crossing within range [{self.lo:.3g}, {self.hi:.3g}] FLOPs (bootstrap: {self.p_cross:.0%} cross)"
            )
        iv = f"95 % interval [{self.interval[0]:.3g}, {self.interval[1]:.3g}]" if self.interval else "no interval"
        return f"curves cross at {self.compute:.3g} FLOPs ({iv}; {self.p_cross:.0%} of bootstrap refits cross)"


# ---------------------------------------------------------------------------------------------- the fit


def _loss_and_grad(theta: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    a, e, alpha = theta
    u = a - alpha * x  # log of the power-law term, per point
    m = np.maximum(u, e)
    lse = m + np.log(np.exp(u - m) + np.exp(e - m))  # log(exp(u) + exp(e)) without overflow
    w = np.exp(u - lse)  # share of the power-law term in L̂
    r = lse - y
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    g = np.where(small, r, delta * np.sign(r))  # dHuber/dr
    grad = np.array([(g * w).sum(), (g * (1 - w)).sum(), -(g * w * x).sum()])
    return float(loss), grad


def _minimise(x: np.ndarray, y: np.ndarray, starts, bounds, delta: float) -> tuple[np.ndarray, float]:
    best, best_f = None, math.inf
    for s in starts:
        res = minimize(
            _loss_and_grad,
            np.asarray(s, dtype=float),
            args=(x, y, delta),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12},
        )
        if np.all(np.isfinite(res.x)) and res.fun < best_f:
            best, best_f = res.x, float(res.fun)
    return best, best_f


def _check(compute, values, metric: str, groups=None):
    c = np.asarray(compute, dtype=float).ravel()
    v = np.asarray(values, dtype=float).ravel()
    if c.shape != v.shape:
        raise FitError(f"{metric}: {len(c)} compute values but {len(v)} metric values")
    g = None if groups is None else np.asarray(groups).ravel()
    keep = np.isfinite(c) & np.isfinite(v)
    c, v = c[keep], v[keep]
    g = None if g is None else g[keep]
    if np.any(c <= 0) or np.any(v <= 0):
        raise FitError(f"{metric}: a power law needs compute > 0 and values > 0 (the fit is in log space)")
    if len(np.unique(c)) < MIN_POINTS:
        raise FitError(f"{metric}: {len(np.unique(c))} distinct compute values; a 3-parameter fit needs ≥ {MIN_POINTS}")
    order = np.argsort(c, kind="stable")
    return c[order], v[order], (None if g is None else g[order])


def start_grid(c: np.ndarray, v: np.ndarray, c_ref: float) -> list[tuple[float, float, float]]:
    """The 84 starts (a, e, α) the fit screens, placed from the data's scale."""
    y = np.log(v)
    y0, lo_y = float(y[np.argmin(c)]), float(y.min())
    return [
        (y0 + math.log(fa), lo_y + math.log(fe), al)
        for al, fe, fa in itertools.product(_ALPHAS, _E_FRACTIONS, _A_FRACTIONS)
    ]


def _fit_core(c: np.ndarray, v: np.ndarray, c_ref: float, delta: float, grid=None, descents: int = _DESCENTS, extra=()):
    """Screen `grid` (default: `start_grid` of this data) by objective value and descend from the `descents` most
    promising starts plus `extra` ones: the same optimum as descending from all 84 (checked on noisy synthetic
    data) at a tenth of the cost."""
    x, y = np.log(c / c_ref), np.log(v)
    lo_y, hi_y = float(y.min()), float(y.max())
    bounds = [(-60.0, 60.0), (lo_y - 30.0, hi_y + 1.0), (0.0, 10.0)]  # a, e, α
    grid = start_grid(c, v, c_ref) if grid is None else grid
    scores = [_loss_and_grad(np.array(s), x, y, delta)[0] for s in grid]
    starts = [grid[i] for i in np.argsort(scores, kind="stable")[:descents]] + list(extra)
    starts = [tuple(np.clip(s, [b[0] for b in bounds], [b[1] for b in bounds])) for s in starts]
    return _minimise(x, y, starts, bounds, delta)


def fit_power_law(
    compute,
    values,
    *,
    metric: str = "loss",
    n_boot: int = 200,
    seed: int = 0,
    delta: float = HUBER_DELTA,
    holdout: int | None = 0,
    groups=None,
) -> PowerLawFit:
    """Fit L(C) = E + A·C^(−α) to (compute, value) points. `n_boot` bootstrap refits give the 95 % intervals:
    `groups` (one label a point, e.g. its run) resamples whole groups, and needs ≥ MIN_GROUPS of them for an
    interval; without groups points are resampled. `holdout` > 0 also refits without the points at the
    `holdout` largest compute values and stores how well that curve predicts them (None: a fifth of the
    distinct compute values, at least one)."""
    with _one_blas_thread():
        return _fit_power_law(compute, values, metric, n_boot, seed, delta, holdout, groups)


def _fit_power_law(compute, values, metric, n_boot, seed, delta, holdout, groups) -> PowerLawFit:
    if groups is not None and len(np.ravel(groups)) != len(np.ravel(compute)):
        raise FitError(f"{metric}: {len(np.ravel(groups))} group labels for {len(np.ravel(compute))} points")
    c, v, g = _check(compute, values, metric, groups)
    c_ref = float(c[0])
    theta, f = _fit_core(c, v, c_ref, delta)
    a, e, alpha = theta
    y, yhat = np.log(v), np.log(np.exp(a - alpha * np.log(c / c_ref)) + np.exp(e))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - yhat) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")

    boot = _bootstrap(c, v, g, theta, c_ref, delta, n_boot, seed)
    ok = boot[np.isfinite(boot).all(1)]
    intervals: dict[str, tuple[float, float] | None] = {"E": None, "A": None, "alpha": None}
    n_groups = len(np.unique(g)) if g is not None else 0
    note = ""
    if g is not None and n_groups < MIN_GROUPS:
        note = f"{n_groups} run(s): a bootstrap over whole runs needs ≥ {MIN_GROUPS}"
    elif len(ok) < max(20, n_boot // 2):  # fewer successes than that: an interval would mislead
        note = f"{len(ok)} of {n_boot} bootstrap refits succeeded"
    else:
        a_raw = ok[:, 1] * np.power(c_ref, ok[:, 2])
        for name, col in (("E", ok[:, 0]), ("A", a_raw), ("alpha", ok[:, 2])):
            intervals[name] = (float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5)))

    fit = PowerLawFit(
        metric=metric,
        compute=c,
        values=v,
        E=math.exp(e),
        A=math.exp(a) * c_ref**alpha,
        alpha=float(alpha),
        c_ref=c_ref,
        r2=r2,
        objective_value=f,
        n_boot=len(ok),
        n_boot_requested=n_boot,
        intervals=intervals,
        boot=boot,
        n_groups=n_groups,
        interval_note=note,
    )
    if holdout is None or holdout > 0:
        fit.holdout = holdout_validation(c, v, holdout, delta=delta, metric=metric)
    return fit


def _bootstrap(c, v, g, theta, c_ref, delta, n_boot, seed) -> np.ndarray:
    """[n_boot, 3] refits (E, A·c_ref^-α, α) on resampled groups (or points); NaN rows where a resample has fewer
    distinct compute values than a fit needs, or the refit fails."""
    boot = np.full((n_boot, 3), np.nan)
    if g is not None and len(np.unique(g)) < MIN_GROUPS:
        return boot  # no interval can come of it: skip the refits
    rng = np.random.default_rng(seed)
    grid = start_grid(c, v, c_ref)  # the main fit's grid, so refits search as widely as it did
    labels = np.unique(g) if g is not None else None
    members = [np.flatnonzero(g == lab) for lab in labels] if labels is not None else None
    for i in range(n_boot):
        if members is not None:
            idx = np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))])
        else:
            idx = rng.integers(0, len(c), len(c))
        if len(np.unique(c[idx])) < MIN_POINTS:  # the main fit's minimum
            continue
        th, _ = _fit_core(c[idx], v[idx], c_ref, delta, grid, _BOOT_DESCENTS, extra=[tuple(theta)])
        if th is not None:
            boot[i] = (math.exp(th[1]), math.exp(th[0]), th[2])
    return boot


def holdout_validation(
    compute, values, n_holdout: int | None = None, *, delta: float = HUBER_DELTA, metric: str = "loss"
) -> Holdout | None:
    """Refit without the points at the `n_holdout` largest distinct compute values (default: a fifth, ≥ 1) and
    predict them. None when what is left is too few to fit."""
    with _one_blas_thread():
        return _holdout(compute, values, n_holdout, delta, metric)


def _holdout(compute, values, n_holdout, delta, metric) -> Holdout | None:
    c, v, _ = _check(compute, values, metric)
    distinct = np.unique(c)
    k = max(1, round(len(distinct) / 5)) if n_holdout is None else n_holdout
    if len(distinct) - k < MIN_POINTS:
        return None
    cut = distinct[-k]
    train, test = c < cut, c >= cut
    theta, _ = _fit_core(c[train], v[train], float(c[0]), delta)
    a, e, alpha = theta
    pred = np.exp(a - alpha * np.log(c[test] / c[0])) + np.exp(e)
    return Holdout(
        n_train=int(train.sum()),
        points=[HoldoutPoint(float(ci), float(vi), float(pi)) for ci, vi, pi in zip(c[test], v[test], pred)],
    )


def _curves(boot: np.ndarray, x_rel: np.ndarray) -> np.ndarray:
    """Curves E + A_ref·(C/c_ref)^-α for every bootstrap row: [n_boot, len(x_rel)]."""
    return boot[:, :1] + boot[:, 1:2] * np.power(x_rel[None, :], -boot[:, 2:3])


# ---------------------------------------------------------------------------------------------- helpers


def frontier(compute, values, lower_is_better: bool = True) -> np.ndarray:
    """Indices of the compute frontier: points that no cheaper-or-equal point beats (sorted by compute)."""
    c = np.asarray(compute, dtype=float)
    v = np.asarray(values, dtype=float) * (1 if lower_is_better else -1)
    order = np.lexsort((v, c))  # by compute, then best value first
    keep, best = [], math.inf
    for i in order:
        if v[i] < best:
            keep.append(int(i))
            best = v[i]
    return np.array(keep, dtype=int)


def _first_crossing(f, lo: float, hi: float, grid: int = 256) -> float | None:
    """Smallest C in [lo, hi] where f changes sign (searched on a log grid, refined with Brent's method)."""
    xs = np.linspace(math.log(lo), math.log(hi), grid)
    d = f(np.exp(xs))
    s = np.sign(d)
    for i in range(grid - 1):
        if s[i] == 0:
            return float(math.exp(xs[i]))
        if s[i] * s[i + 1] < 0:
            return float(math.exp(brentq(lambda t: float(f(np.exp(np.array([t])))[0]), xs[i], xs[i + 1])))
    return None


def crossover(
    fit_a: PowerLawFit,
    fit_b: PowerLawFit,
    name_a: str = "a",
    name_b: str = "b",
    compute_range: tuple[float, float] | None = None,
) -> Crossover:
    """Where fit_a's curve crosses fit_b's, within `compute_range` (default: the range both were measured on).
    The interval pairs the i-th bootstrap refit of each curve (fits with different seeds: independent draws)."""
    if compute_range is None:
        lo = max(fit_a.compute.min(), fit_b.compute.min())
        hi = min(fit_a.compute.max(), fit_b.compute.max())
    else:
        lo, hi = compute_range
    if not lo < hi:
        return Crossover(name_a, name_b, float(lo), float(hi), None, None, 0.0, None)
    diff = lambda c: fit_a.predict(c) - fit_b.predict(c)  # noqa: E731
    at = _first_crossing(diff, lo, hi)
    n = min(len(fit_a.boot), len(fit_b.boot))  # refit i of each: failed ones are NaN rows, so pairs stay aligned
    pairs = [i for i in range(n) if np.isfinite(fit_a.boot[i]).all() and np.isfinite(fit_b.boot[i]).all()]
    crossings, n_pairs = [], len(pairs)
    if fit_a.intervals.get("alpha") is None or fit_b.intervals.get("alpha") is None:
        pairs, n_pairs = [], 0  # a fit without an interval has no bootstrap to pair
    for i in pairs:
        ba, bb = fit_a.boot[i], fit_b.boot[i]

        def d(c, ba=ba, bb=bb):
            return (ba[0] + ba[1] * (c / fit_a.c_ref) ** -ba[2]) - (bb[0] + bb[1] * (c / fit_b.c_ref) ** -bb[2])

        x = _first_crossing(d, lo, hi)
        if x is not None:
            crossings.append(x)
    p_cross = len(crossings) / n_pairs if n_pairs else 0.0
    interval = None
    if at is not None and len(crossings) >= 20:
        interval = (float(np.percentile(crossings, 2.5)), float(np.percentile(crossings, 97.5)))
    return Crossover(name_a, name_b, float(lo), float(hi), at, interval, p_cross, bool(diff(np.array([lo]))[0] < 0))
