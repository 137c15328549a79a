"""Views over a study's stored records that the fits, plots, findings and report share: which sampling setting
stands for an objective, which records share a compute level, and when one number is better than another.

Records are the dicts `ResultsStore.records()` returns (EvalRecord fields + config_hash).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthscale.evaluate.instruments import quality_metrics
from synthscale.study.results import ResultsStore

# metrics where smaller is better (loss, latency and every instrument's Fréchet distance and KID); every other
# metric (accuracies, R-precision, CLIP score, throughput) is better when larger
LOWER_IS_BETTER = {"loss", "latency_s", *quality_metrics()}
# two matched-compute records: training FLOPs within ±0.06 decades (±15 %); milestones are 0.25 decades apart
LEVEL_TOLERANCE_DEX = 0.06
# without a measured interval (older fd_probe records, latency), a relative difference is given a standard error
# of REL_MARGIN / 1.96 per number: a difference counts only beyond ~14 % (10 % on either number)
REL_MARGIN = 0.10
Z95 = 1.959964  # two-sided 5 %
Z90 = 1.644854  # one-sided 5 %: each side of a TOST equivalence test


@dataclass(frozen=True)
class DecisiveMetrics:
    """Which stored numbers the findings decide on: `quality` (lower is better, > 0: compared as log ratios),
    `quality_check` (a second quality instrument that must agree wherever both records measured it with an
    interval; None: no check) and `prompt` (an accuracy-like score in [0, 1], compared as differences). Each
    number's interval comes from `<name>_lo/_hi` or `<name>_std` in the record (see `interval`). Another
    instrument plugs in here — e.g. DecisiveMetrics(quality="fd_clip", prompt="r_precision") — without
    touching the rules."""

    quality: str = "fd_probe"
    prompt: str = "prompt_acc"
    quality_check: str | None = "kid"


DEFAULT_METRICS = DecisiveMetrics()


def lower_is_better(metric: str) -> bool:
    """Distances, KID, losses and latencies: smaller is better (any `fd_<instrument>` too)."""
    return metric in LOWER_IS_BETTER or metric.startswith("fd_")


def _log_scale(metric: str) -> bool:
    """Positive, scale-free numbers compare as log ratios; KID (can be ≤ 0) and accuracies as differences."""
    return metric.startswith("fd") or metric in ("loss", "latency_s", "throughput_ips")


@dataclass(frozen=True)
class Effect:
    """How much better a is than b on one metric, in comparable units (log ratio or difference; > 0: a better)
    with its standard error from the two records' stored intervals. `assumed`: at least one record stored no
    interval and REL_MARGIN stood in for it."""

    est: float
    se: float
    assumed: bool = False

    @property
    def z(self) -> float:
        return self.est / self.se if self.se > 0 else math.copysign(math.inf, self.est) if self.est else 0.0

    def significant(self, z: float = Z95) -> int:
        """+1: a significantly better; −1: b; 0: neither (two-sided at 5 % by default)."""
        return 1 if self.est > z * self.se else -1 if self.est < -z * self.se else 0

    def equivalent(self, margin: float) -> bool:
        """TOST at 5 %: the 90 % interval lies inside (−margin, margin)."""
        return -margin < self.est - Z90 * self.se and self.est + Z90 * self.se < margin

    def exceeds(self, margin: float) -> bool:
        """|effect| is significantly beyond `margin` (one-sided 2.5 % on the side of the estimate)."""
        return abs(self.est) - Z95 * self.se > margin

    def minus(self, other: Effect) -> Effect:
        """The difference of two independent effects."""
        return Effect(self.est - other.est, math.hypot(self.se, other.se), self.assumed or other.assumed)


def _se(r: dict[str, Any], metric: str) -> tuple[float, bool] | None:
    """Standard error of one record's number, on its comparison scale, and whether it was assumed."""
    v, iv = value(r, metric), interval(r, metric)
    if v is None:
        return None
    if iv is not None and all(math.isfinite(x) for x in iv):
        if _log_scale(metric) and iv[0] > 0 and v > 0:
            return (math.log(iv[1]) - math.log(iv[0])) / (2 * Z95), False
        width = (iv[1] - iv[0]) / (2 * Z95)
        return (width / v if _log_scale(metric) and v > 0 else width), False
    if _log_scale(metric):
        return REL_MARGIN / Z95, True
    return None


def effect(a: dict[str, Any], b: dict[str, Any], metric: str) -> Effect | None:
    """a vs b on `metric` (positive: a better); None when either did not measure it, or, for a metric compared
    as a difference, stored no interval."""
    va, vb, sa, sb = value(a, metric), value(b, metric), _se(a, metric), _se(b, metric)
    if va is None or vb is None or sa is None or sb is None:
        return None
    if _log_scale(metric):
        if va <= 0 or vb <= 0:
            return None
        est = math.log(vb) - math.log(va)  # lower-is-better log metrics: log(b / a) > 0 when a is lower
    else:
        est = vb - va
    if not lower_is_better(metric):
        est = -est
    return Effect(est, math.hypot(sa[0], sb[0]), sa[1] or sb[1])


@dataclass
class StudyData:
    """Everything a study stored, read once."""

    path: Path
    meta: dict[str, str]
    runs: list[dict[str, Any]]
    autoencoders: list[dict[str, Any]]
    records: list[dict[str, Any]]
    artifacts: list[dict[str, Any]]
    settings: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # objective → primary setting
    main_autoencoders: dict[str, str] = field(default_factory=dict)  # objective → its main grid's autoencoder
    # the per-seed records `records` averages (study/replicates.py): faint points in the plots, measured spread
    seed_records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The study's name: meta 'study' (a name, or the study config as JSON with a name), else the folder's."""
        raw = self.meta.get("study", "")
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        if isinstance(parsed, dict):
            parsed = parsed.get("name", "")
        return str(parsed) if parsed else self.path.name

    @property
    def objectives(self) -> list[str]:
        present = {r["objective"] for r in self.records} | {r["objective"] for r in self.runs}
        from synthscale.objectives import OBJECTIVES

        order = list(OBJECTIVES)  # the registry's order
        return [o for o in order if o in present] + sorted(present - set(order))


def load_study(study_dir: str | Path) -> StudyData:
    """A study's stored results; `records` holds one record per grid cell, the mean over its replicate seeds with
    intervals that include training noise (`replicates.aggregate`), `seed_records` the records as stored."""
    from synthscale.study.replicates import aggregate

    with ResultsStore.of(study_dir, create=False) as store:
        runs, stored = store.runs(), store.records()
        data = StudyData(Path(study_dir), store.meta(), runs, store.autoencoders(), [], store.artifacts())
    data.seed_records, data.records = stored, aggregate(stored, runs)
    data.settings = primary_settings(data.records)
    data.main_autoencoders = main_autoencoders(data.meta, data.runs, data.records)
    return data


# ---------------------------------------------------------------------------------------------- settings


CFG_CHOSEN = "best"  # a setting's CFG when each milestone's scale was chosen on validation prompts


def setting(r: dict[str, Any]) -> tuple[str, int, float | str]:
    """(weights, steps, CFG) of a record; CFG is CFG_CHOSEN where the record's scale was chosen on validation
    prompts (it then differs between milestones, and the setting is the choosing, not one scale)."""
    selection = (r.get("instruments") or {}).get("cfg_selection") or {}
    chosen = selection and "cfg_scale" in selection.get("applied", ["cfg_scale"])
    return (r["weights"], r["steps"], CFG_CHOSEN if chosen else r["cfg_scale"])


def describe_setting(s: tuple[str, int, float | str]) -> str:
    cfg = "CFG chosen on validation" if s[2] == CFG_CHOSEN else f"CFG {s[2]:g}"
    return f"{s[0]} weights, {s[1]} steps, {cfg}"


def primary_settings(records: list[dict[str, Any]]) -> dict[str, tuple[str, int, float]]:
    """Per objective, the sampling setting (weights, steps, cfg) evaluated at the most (run, milestone) points —
    the one that spans the whole grid rather than a sweep at the last milestone. Ties prefer EMA weights, then
    more steps, then the larger CFG scale (the usual deployment choice), so the choice is fixed in advance."""
    points: dict[str, dict[tuple, set]] = defaultdict(lambda: defaultdict(set))
    for r in records:
        points[r["objective"]][setting(r)].add((r["run"], r["milestone"]))
    return {
        obj: max(by_setting, key=lambda s: (len(by_setting[s]), s[0] == "ema", s[1], s[2] == CFG_CHOSEN, _num(s[2])))
        for obj, by_setting in points.items()
    }


def _num(x: Any) -> float:
    return x if isinstance(x, (int, float)) else 0.0


def main_autoencoders(
    meta: dict[str, str], runs: list[dict[str, Any]], records: list[dict[str, Any]]
) -> dict[str, str]:
    """Per objective, the autoencoder of its main grid (the others are ablations; losses over different latent
    spaces are not comparable, so fits use the main one only). Meta 'main_autoencoders' (JSON objective → name)
    decides when present; otherwise an autoencoder not named by the study spec's `ablation_autoencoders`, then
    the one with the most runs, then the most records, then the first name."""
    explicit = _json_or(meta.get("main_autoencoders"), {})
    spec = _json_or(meta.get("study"), {})
    ablations = {Path(p).stem for p in spec.get("ablation_autoencoders", [])} if isinstance(spec, dict) else set()
    n_runs = Counter((r["objective"], r["autoencoder"]) for r in runs)
    n_records = Counter((r["objective"], r["autoencoder"]) for r in records)
    out = {}
    for obj in sorted({o for o, _ in n_records} | {o for o, _ in n_runs}):
        if isinstance(explicit, dict) and obj in explicit:
            out[obj] = explicit[obj]
            continue
        names = sorted({a for o, a in (n_records | n_runs) if o == obj})
        out[obj] = max(
            names, key=lambda a: (a not in ablations, n_runs[(obj, a)], n_records[(obj, a)], -names.index(a))
        )
    return out


def _json_or(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def primary_records(data: StudyData) -> list[dict[str, Any]]:
    """One record per (run, milestone): the one at its objective's primary setting."""
    return [r for r in data.records if data.settings.get(r["objective"]) == setting(r)]


def main_grid_records(data: StudyData) -> list[dict[str, Any]]:
    """Primary-setting records of main-grid runs only (each objective's main autoencoder): like for like. With
    the ablation runs in, an objective with more ablations would pick its best of more runs (a winner's curse)."""
    main = data.main_autoencoders
    return [r for r in primary_records(data) if r["autoencoder"] == main.get(r["objective"])]


# ---------------------------------------------------------------------------------------------- compute levels


def compute_levels(flops: list[float], tol_dex: float = LEVEL_TOLERANCE_DEX) -> list[float]:
    """Cluster training FLOPs into matched levels (members within tol_dex decades of a level's first value);
    each level is the geometric mean of its members."""
    xs = sorted({math.log10(f) for f in flops if f > 0})
    levels: list[list[float]] = []
    for x in xs:
        if levels and x - levels[-1][0] <= tol_dex:
            levels[-1].append(x)
        else:
            levels.append([x])
    return [10 ** (sum(g) / len(g)) for g in levels]


def level_of(f: float, levels: list[float], tol_dex: float = LEVEL_TOLERANCE_DEX) -> float | None:
    if f <= 0:
        return None
    best = min(levels, key=lambda lv: abs(math.log10(lv) - math.log10(f)), default=None)
    if best is None or abs(math.log10(best) - math.log10(f)) > tol_dex:
        return None
    return best


def by_level(records: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    levels = compute_levels([r["train_flops"] for r in records])
    out: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        lv = level_of(r["train_flops"], levels)
        if lv is not None:
            out[lv].append(r)
    return dict(sorted(out.items()))


def best_per_objective(records: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """The record with the best value of `metric` for each objective (records without it are skipped)."""
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        v = value(r, metric)
        if v is None:
            continue
        cur = best.get(r["objective"])
        if cur is None or better(v, value(cur, metric), metric):
            best[r["objective"]] = r
    return best


def matched_best(records: list[dict[str, Any]], metric: str) -> dict[float, dict[str, dict[str, Any]]]:
    """At each matched compute level, the best record of each objective for `metric`."""
    return {lv: best_per_objective(rs, metric) for lv, rs in by_level(records).items()}


# ---------------------------------------------------------------------------------------------- comparing


def value(r: dict[str, Any], metric: str) -> float | None:
    v = r["metrics"].get(metric)
    return None if v is None or not math.isfinite(v) else float(v)


def better(a: float, b: float, metric: str) -> bool:
    return a < b if lower_is_better(metric) else a > b


def interval(r: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """The 95 % interval a record measured for `metric`: `<metric>_lo/_hi` (bootstrap bounds) or
    value ± 1.96·`<metric>_std`; None when it measured none."""
    m = r["metrics"]
    if f"{metric}_lo" in m and f"{metric}_hi" in m:
        return (m[f"{metric}_lo"], m[f"{metric}_hi"])
    v = value(r, metric)
    if v is not None and f"{metric}_std" in m:
        return (v - Z95 * m[f"{metric}_std"], v + Z95 * m[f"{metric}_std"])
    return None


def shown_interval(r: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """`interval` as the report shows it: cut to the values the metric can take. Over a few scattered seeds the
    t-interval of a positive number (FD, loss, latency, throughput) can reach below 0, where no value exists
    (throughput "185 [-16.4, 386]" images/s); the part below 0 is dropped, which keeps its coverage. The rules
    decide on `interval` itself."""
    iv = interval(r, metric)
    return (max(iv[0], 0.0), iv[1]) if iv is not None and _log_scale(metric) else iv


def compare(a: dict[str, Any], b: dict[str, Any], metric: str) -> int | None:
    """+1 when a is significantly better than b on `metric`, −1 when b is, 0 when the difference is not
    significant, None when either did not measure it. Significant: the 95 % intervals do not overlap, or, when
    an interval is missing, the values differ by more than REL_MARGIN."""
    va, vb = value(a, metric), value(b, metric)
    if va is None or vb is None:
        return None
    ia, ib = interval(a, metric), interval(b, metric)
    if ia is not None and ib is not None:
        if ia[1] < ib[0]:
            lower = 1  # a below b
        elif ib[1] < ia[0]:
            lower = -1
        else:
            return 0
    else:
        scale = max(abs(va), abs(vb))
        if scale == 0 or abs(va - vb) <= REL_MARGIN * scale:
            return 0
        lower = 1 if va < vb else -1
    return lower if lower_is_better(metric) else -lower


def compare_quality(a: dict[str, Any], b: dict[str, Any], metrics: DecisiveMetrics = DEFAULT_METRICS) -> int | None:
    """Quality, a vs b: +1 / −1 when the decisive quality number differs significantly (two-sided 5 %, see
    `effect`), 0 when not; when both records also measured the check instrument with an interval, the
    difference counts only if it agrees, so two instruments that disagree give 0. Falls back to the check
    instrument alone without the decisive one."""
    q = effect(a, b, metrics.quality)
    check = None
    if metrics.quality_check and interval(a, metrics.quality_check) and interval(b, metrics.quality_check):
        check = effect(a, b, metrics.quality_check)
    q_sig = None if q is None else q.significant()
    c_sig = None if check is None else check.significant()
    if q_sig is None:
        return c_sig
    if c_sig is None:
        return q_sig
    return q_sig if q_sig == c_sig else 0


# ---------------------------------------------------------------------------------------------- labels


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "not measured"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def fmt_interval(iv: tuple[float, float] | None, digits: int = 3) -> str:
    return "—" if iv is None else f"[{fmt(iv[0], digits)}, {fmt(iv[1], digits)}]"


# what the report's "How measured" table names of a record's instruments (the last part of a dotted key); the full
# set is in the store
_SETTING_KEYS = {"extractor", "n", "n_real", "resize", "split", "prompts", "batches", "device", "threads", "seed"}


def instrument_settings(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The instrument settings behind a set of records, dotted key → its values (the three most common, then
    '…'), e.g. {'extractor': ['probe:ab12'], 'n': ['256']}."""
    seen: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        for k, v in _flatten(r.get("instruments") or {}).items():
            if v is not None and k.rsplit(".", 1)[-1] in _SETTING_KEYS:
                seen[k][str(v)] += 1
    return {k: [v for v, _ in seen[k].most_common(3)] + (["…"] if len(seen[k]) > 3 else []) for k in sorted(seen)}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------------- autoencoder ceilings

CEILING_PREFIX = "ceiling_"


def ceiling(data: StudyData, objective: str, autoencoder: str | None = None) -> dict[str, Any] | None:
    """What an autoencoder (default: the objective's main-grid one) scores on its own reconstructions of the
    evaluation images, as a record-like {"autoencoder", "metrics"} (so `value` and `interval` read it); None where
    it was not measured."""
    name = autoencoder or data.main_autoencoders.get(objective)
    for a in data.autoencoders:
        if a["name"] == name:
            m = {k[len(CEILING_PREFIX) :]: v for k, v in a["metrics"].items() if k.startswith(CEILING_PREFIX)}
            return {"autoencoder": name, "metrics": m} if m else None
    return None


def capped(r: dict[str, Any], ceil: dict[str, Any] | None, metric: str) -> bool | None:
    """Whether a model is at its autoencoder's ceiling on `metric`: its value (or its interval) reaches the
    ceiling's interval (or value), so more generator compute cannot show through. None when either is unmeasured."""
    v, c = value(r, metric), (value(ceil, metric) if ceil else None)
    if v is None or c is None:
        return None
    lo, hi = interval(r, metric) or (v, v)
    clo, chi = interval(ceil, metric) or (c, c)
    return lo <= chi if metric in LOWER_IS_BETTER else hi >= clo
