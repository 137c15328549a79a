"""The paper's six findings, each judged on this study's numbers as confirmed / not confirmed / inconclusive by a
rule written here, and the recommendation table.

Every rule compares like with like (main-grid runs at each objective's primary setting; the ablation autoencoders
feed finding 6 only), decides on effects with standard errors from the stored intervals (`compare.effect`), and
says "barely" or "less" only when an equivalence test (TOST) puts the effect inside a stated margin — a wide
interval is "inconclusive", never a confirmation. Which numbers decide is one parameter, `compare.DecisiveMetrics`
(defaults: fd_probe with KID as a check, prompt_acc), so another instrument plugs in without touching the rules.

How often each rule says "confirmed" when its claim is false, and how often when it holds with a stated effect,
is measured on simulated studies with a known truth (`study/calibration.py`, `benchmarks/calibration.py`); a
rule whose measured false-confirmation bound exceeds 5 % answers "inconclusive" instead (`apply_calibration`).

Training noise: a study's records average its replicate seeds, with intervals that include the seeds' spread
(`study/replicates.py`). Where a record stands on one seed, training noise is unmeasured — its interval covers
the prompts only, and one run's outcome can move with its seed by far more — so findings 2-6, which judge
differences, answer at most "inconclusive", and the quality and prompt-following recommendations name no
significant winner (`apply_replicates`, `recommendations`).
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthscale.study import compare as cmp
from synthscale.study import replicates as rep
from synthscale.study.compare import DEFAULT_METRICS, DecisiveMetrics, Effect, fmt, fmt_interval
from synthscale.study.scaling import Crossover, FitError, PowerLawFit, fit_power_law

CONFIRMED, NOT_CONFIRMED, INCONCLUSIVE = "confirmed", "not confirmed", "inconclusive"
# finding 1: a power law "holds" when it explains the points and predicts the held-out largest-compute points
R2_HOLDS, R2_FAILS = 0.95, 0.80
HOLDOUT_HOLDS, HOLDOUT_FAILS = 0.05, 0.15  # mean |relative error| on the held-out points
# finding 3: "catches up": next-token's FD lead shrinks by more than 10 % (log ratio), significantly
CATCH_UP_MARGIN = math.log(1.1)
# finding 4: "by far the cheapest": at least this many times fewer sampling FLOPs than the next objective
FAR_CHEAPER = 2.0
# finding 4(b)/(c): "barely improves" with more steps = FD within ±20 % (log ratio) of the fewest steps' FD
STEPS_MARGIN = math.log(1.2)
# finding 5: EMA "matters": diffusion's FD gain from EMA ≥ 10 % (log ratio), ≥ 2× and significantly above a token
# method's; "does not matter": within ±10 % (TOST)
EMA_GAIN_MATTERS = math.log(1.1)
# finding 6: prompt following "moves less": the accuracy change within ±0.05 (TOST); quality "moves": FD differs
# significantly
PROMPT_MARGIN = 0.05
QUALITY_MARGIN = math.log(1.1)  # quality "does not move": FD within ±10 % (TOST)
# the calibration's bound on false confirmations (one-sided 95 % upper limit) a rule must meet to confirm
FALSE_CONFIRM_LIMIT = 0.05


@dataclass
class Finding:
    number: int
    claim: str
    verdict: str
    rule: str  # the decision rule, in words
    evidence: list[str] = field(default_factory=list)  # the numbers behind the verdict


def _combine(verdicts: list[str]) -> str:
    """All parts confirmed → confirmed; any part contradicted → not confirmed; else inconclusive."""
    if verdicts and all(v == CONFIRMED for v in verdicts):
        return CONFIRMED
    if any(v == NOT_CONFIRMED for v in verdicts):
        return NOT_CONFIRMED
    return INCONCLUSIVE


def _tally(outcomes: list[int | None]) -> tuple[int, int, int]:
    known = [o for o in outcomes if o is not None]
    return sum(1 for o in known if o == 1), sum(1 for o in known if o == -1), len(known)


def _majority_verdict(outcomes: list[int | None]) -> str:
    """a better than b across matched points: significantly better at most points and significantly worse at
    none → confirmed; significantly worse at least as often as better (and somewhere) → not confirmed."""
    wins, losses, n = _tally(outcomes)
    if n == 0:
        return INCONCLUSIVE
    if wins > n / 2 and losses == 0:
        return CONFIRMED
    if losses >= 1 and losses >= wins:
        return NOT_CONFIRMED
    return INCONCLUSIVE


def _effect_text(e: Effect | None, unit: str = "") -> str:
    if e is None:
        return "not comparable"
    lo, hi = e.est - cmp.Z95 * e.se, e.est + cmp.Z95 * e.se
    return f"{e.est:+.3f}{unit} [{lo:+.3f}, {hi:+.3f}]" + (
        " (a stored interval was missing: ±10 % assumed)" if e.assumed else ""
    )


# ---------------------------------------------------------------------------------------------- "best"


def best_models(data: cmp.StudyData, metric: str) -> dict[float, dict[str, dict[str, Any]]]:
    """The one rule for "best" that the findings, the recommendation and Fig. 5 share: at each matched
    training-compute level, per objective, the main-grid model (best over sizes) with the best `metric` at the
    objective's primary sampling setting (`compare.primary_settings`). Never the best over every setting: a
    maximum over more settings picks lucky draws, and the findings and the recommendation would then disagree."""
    return cmp.matched_best(cmp.main_grid_records(data), metric)


def _quality_text(r: dict[str, Any], metrics: DecisiveMetrics) -> str:
    """The deciding quality number with its interval. The check instrument (KID) is reported by `_check_text`
    as it decides, not by its value: KID's cubic kernel on unnormalised instrument features reads 10³–10⁶ on
    probe features, a magnitude that depends on the features' scale and means nothing to a reader."""
    q = metrics.quality
    return f"{q} {fmt(cmp.value(r, q))} {fmt_interval(cmp.shown_interval(r, q))}"


def _check_text(a: dict[str, Any], b: dict[str, Any], metrics: DecisiveMetrics) -> str:
    """The quality check a vs b, scale-free: the difference over its standard error (z > 0: a better)."""
    m = metrics.quality_check
    if not m:
        return ""
    if not (cmp.interval(a, m) and cmp.interval(b, m)):
        return f"; {m} check not measured with an interval"
    e = cmp.effect(a, b, m)
    return "" if e is None else f"; {m} check z = {e.z:+.1f}"


# ---------------------------------------------------------------------------------------------- 1: power law


def fit_points(data: cmp.StudyData, objective: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every milestone of every main-grid run of one objective (primary setting, main autoencoder): compute,
    `metric` and the run of each point, so the bootstrap can resample whole runs. All points, not the compute
    frontier: a running minimum over noisy milestones picks lucky draws and biases the curve."""
    main = data.main_autoencoders.get(objective)
    rs = [
        r
        for r in cmp.primary_records(data)
        if r["objective"] == objective
        and r["autoencoder"] == main
        and r["train_flops"] > 0
        and (cmp.value(r, metric) or 0.0) > 0
    ]  # log-space fit: positive values only
    c = np.array([r["train_flops"] for r in rs], dtype=float)
    v = np.array([cmp.value(r, metric) for r in rs], dtype=float)
    return c, v, np.array([r["run"] for r in rs])


def fit_laws(data: cmp.StudyData, metric: str, n_boot: int = 200, seed: int = 0):
    """Per objective, `metric`'s power law over `fit_points`, bootstrapped by run: ({objective: fit},
    {objective: why there is no fit})."""
    fits, errors = {}, {}
    for obj in data.objectives:
        c, v, runs = fit_points(data, obj, metric)
        if len(c) == 0:
            errors[obj] = f"no {metric} measured"
            continue
        try:  # each fit its own bootstrap stream, so two fits' refits are independent draws
            fit_seed = [seed, zlib.crc32(f"{obj}/{metric}".encode())]
            fits[obj] = fit_power_law(c, v, metric=metric, n_boot=n_boot, seed=fit_seed, holdout=None, groups=runs)
        except FitError as e:
            errors[obj] = str(e)
    return fits, errors


def finding_power_law(data: cmp.StudyData, fits: dict[str, PowerLawFit], errors: dict[str, str]) -> Finding:
    f = Finding(
        1,
        "Every objective's final loss follows a predictable power law in training FLOPs.",
        INCONCLUSIVE,
        f"Per objective, L(C) = E + A·C^−α fitted to every milestone of every main-grid run, its interval from "
        f"a bootstrap over whole runs: holds when R² ≥ {R2_HOLDS}, the 95 % interval of α excludes 0 and the "
        f"fit without the largest-compute points predicts them within {HOLDOUT_HOLDS:.0%} (mean |relative "
        f"error|); fails when R² < {R2_FAILS} or that error exceeds {HOLDOUT_FAILS:.0%}. Confirmed when it holds "
        f"for every objective.",
    )
    verdicts = []
    for obj in data.objectives:
        fit = fits.get(obj)
        if fit is None:
            f.evidence.append(f"{obj}: no fit — {errors.get(obj, 'no loss measured')}")
            verdicts.append(INCONCLUSIVE)
            continue
        v = power_law_verdict(fit)
        a_iv = fit.intervals.get("alpha")
        ho = fit.holdout.mean_abs_rel_error if fit.holdout else None
        ho_text = "not computed (too few points)" if ho is None else f"{ho:.1%} on {len(fit.holdout.points)} point(s)"
        iv_text = fmt_interval(a_iv) if a_iv else f"(no interval: {fit.interval_note or 'too few refits'})"
        f.evidence.append(
            f"{obj}: α = {fit.alpha:.3f} {iv_text}, E = {fmt(fit.E)}, R² = {fit.r2:.4f}, {fit.n} points of "
            f"{fit.n_groups or '?'} runs; hold-out error {ho_text} → {v}"
        )
        verdicts.append(v)
    f.verdict = _combine(verdicts)
    return f


def power_law_verdict(fit: PowerLawFit) -> str:
    a_iv = fit.intervals.get("alpha")
    ho = fit.holdout.mean_abs_rel_error if fit.holdout else None
    if fit.r2 < R2_FAILS or (ho is not None and ho > HOLDOUT_FAILS):
        return NOT_CONFIRMED
    if fit.r2 >= R2_HOLDS and a_iv is not None and a_iv[0] > 0 and ho is not None and ho <= HOLDOUT_HOLDS:
        return CONFIRMED
    return INCONCLUSIVE


# ---------------------------------------------------------------------------------------------- 2: prompts

# paradigms, not objective names: `roles` maps them to the objectives that declare them (the registry)
PROMPT_PARTS = (("next-token", "diffusion"), ("masked-token", "diffusion"), ("next-token", "masked-token"))


def roles(data: cmp.StudyData) -> dict[str, str]:
    """Paradigm → the study's objective that stands for it in the findings (declared by each objective)."""
    from synthscale.objectives import by_paradigm

    return by_paradigm(data.objectives)


def finding_prompt_following(data: cmp.StudyData, metrics: DecisiveMetrics = DEFAULT_METRICS) -> Finding:
    m = metrics.prompt
    f = Finding(
        2,
        "Token methods (next-token first) follow prompts better than diffusion at equal training compute.",
        INCONCLUSIVE,
        f"Main-grid runs only. At each matched training-compute level, each objective's best {m} over model "
        f"sizes; one objective beats another at a level when the difference is significant (two-sided 5 %, "
        f"standard errors from the stored 95 % intervals). Three parts: next-token vs diffusion, masked vs "
        f'diffusion, next-token vs masked ("next-token first"); a part is confirmed when the first wins most '
        f"levels and loses none, not confirmed when it loses at least as many as it wins. Confirmed when all "
        f"three parts are.",
    )
    levels = best_models(data, m)
    if not levels:
        f.evidence.append(f"no matched compute level measured {m}")
        return f
    parts, role = [], roles(data)
    for a, b in ((role.get(p, p), role.get(q, q)) for p, q in PROMPT_PARTS):
        outcomes = [
            e.significant() if (e := cmp.effect(best[a], best[b], m)) is not None else None
            for best in levels.values()
            if a in best and b in best
        ]
        wins, losses, n = _tally(outcomes)
        v = _majority_verdict(outcomes)
        parts.append(v)
        f.evidence.append(f"{a} vs {b}: significantly better at {wins}, worse at {losses} of {n} matched levels → {v}")
    top = max(levels)
    f.evidence.append(
        f"at {top:.3g} FLOPs: "
        + ", ".join(
            f"{o} {fmt(cmp.value(r, m))} {fmt_interval(cmp.shown_interval(r, m))}" for o, r in levels[top].items()
        )
    )
    f.verdict = _combine(parts)
    return f


# ---------------------------------------------------------------------------------------------- 3: quality


def finding_quality_crossover(
    data: cmp.StudyData, crossovers: dict[tuple[str, str], Crossover], metrics: DecisiveMetrics = DEFAULT_METRICS
) -> Finding:
    q = metrics.quality
    f = Finding(
        3,
        "On image quality next-token leads at low compute; diffusion catches up as compute grows.",
        INCONCLUSIVE,
        f"Main-grid runs only; best {q} per objective (over sizes) at the lowest and highest matched "
        f"training-compute levels. Next-token's lead is log({q} diffusion / {q} next-token). Confirmed when "
        f"next-token is significantly better at the lowest level (two-sided 5 %; where {metrics.quality_check} "
        f"was measured it must agree) and its lead shrinks from the lowest to the highest level by more than "
        f"{math.exp(CATCH_UP_MARGIN) - 1:.0%} (log ratio), significantly (one-sided 2.5 %); not confirmed when "
        f"diffusion is significantly better at the lowest level or the lead grows significantly.",
    )
    role = roles(data)
    nt, dif = role.get("next-token", "next-token"), role.get("diffusion", "diffusion")
    levels = {lv: b for lv, b in best_models(data, q).items() if nt in b and dif in b}
    if len(levels) < 2:
        f.evidence.append(f"{len(levels)} matched compute level(s) with both next-token and diffusion {q}; need ≥ 2")
        return f
    lo, hi = min(levels), max(levels)
    ar_lo, fl_lo, ar_hi, fl_hi = (levels[lv][o] for lv in (lo, hi) for o in (nt, dif))
    lead_lo, lead_hi = cmp.effect(ar_lo, fl_lo, q), cmp.effect(ar_hi, fl_hi, q)
    c_lo = cmp.compare_quality(ar_lo, fl_lo, metrics)
    names = {1: "next-token significantly better", -1: "diffusion significantly better", 0: "no significant difference"}
    for label, lv, ar, fl, lead in (("lowest", lo, ar_lo, fl_lo, lead_lo), ("highest", hi, ar_hi, fl_hi, lead_hi)):
        f.evidence.append(
            f"{label} level {lv:.3g} FLOPs: next-token {ar['size']} {_quality_text(ar, metrics)} vs diffusion "
            f"{fl['size']} {_quality_text(fl, metrics)}; next-token's lead {_effect_text(lead)}"
            f"{_check_text(ar, fl, metrics)} — {names.get(cmp.compare_quality(ar, fl, metrics), 'not comparable')}"
        )
    cross = crossovers.get((nt, dif))
    if cross is not None:
        f.evidence.append(f"{q} fits, next-token vs diffusion: {cross.describe()}")
    if lead_lo is None or lead_hi is None:
        return f
    shrink = lead_lo.minus(lead_hi)
    f.evidence.append(f"the lead shrinks by {_effect_text(shrink)} (log ratio) from the lowest to the highest level")
    if c_lo == 1 and shrink.est - cmp.Z95 * shrink.se > CATCH_UP_MARGIN:
        f.verdict = CONFIRMED
    elif c_lo == -1 or shrink.significant() == -1:
        f.verdict = NOT_CONFIRMED
    return f


# ---------------------------------------------------------------------------------------------- 4: inference


def _last_records(data: cmp.StudyData) -> list[dict[str, Any]]:
    """Main-grid primary-setting records at each run's last evaluated milestone."""
    prim = cmp.main_grid_records(data)
    last: dict[str, int] = {}
    for r in prim:
        last[r["run"]] = max(last.get(r["run"], -1), r["milestone"])
    return [r for r in prim if r["milestone"] == last[r["run"]]]


def step_sweeps(data: cmp.StudyData) -> dict[str, list[list[dict[str, Any]]]]:
    """Per objective, every group of main-grid records that differ only in sampling steps (≥ 2 step counts)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    main = data.main_autoencoders
    for r in data.records:
        if r["autoencoder"] == main.get(r["objective"]):
            groups[(r["objective"], r["run"], r["milestone"], r["weights"], r["cfg_scale"])].append(r)
    out: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for (obj, *_), rs in groups.items():
        if len({r["steps"] for r in rs}) > 1:
            out[obj].append(sorted(rs, key=lambda r: r["steps"]))
    return dict(out)


def sampling_flops(r: dict[str, Any]) -> float | None:
    """Sampling FLOPs per image as a user pays them: the generator's plus the autoencoder decoder's; None for a
    record written before the decoder was counted (`decode_flops_per_image` missing)."""
    decode = r.get("decode_flops_per_image")
    return None if decode is None else r["sample_flops_per_image"] + decode


def sampling_latency(r: dict[str, Any]) -> float | None:
    """Batch-1 seconds per image, generator plus decoder; None unless both were timed."""
    gen, dec = cmp.value(r, "latency_s"), cmp.value(r, "decode_latency_s")
    return None if gen is None or dec is None else gen + dec


def _cost_part(data: cmp.StudyData, f: Finding) -> str:
    """(a): next-token's sampling FLOPs (decoder included) ≥ FAR_CHEAPER× below every other objective's, size by
    size, and its latency (decoder included) not significantly higher where measured. Records without the
    decoder's count compare the generators alone and can at most be inconclusive: the decoder can cost as much
    as a whole next-token sample, so it can move the ratio across the bar."""
    by_size: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in _last_records(data):  # the cheapest record per (size, objective) at the last milestone
        cur = by_size[r["size"]].get(r["objective"])
        if cur is None or r["sample_flops_per_image"] < cur["sample_flops_per_image"]:
            by_size[r["size"]][r["objective"]] = r
    verdicts, nt = [], roles(data).get("next-token")
    for size, objs in sorted(by_size.items()):
        if nt not in objs or len(objs) < 2:
            continue
        ar = objs[nt]
        others = {o: r for o, r in objs.items() if o != nt}
        with_decoder = all(sampling_flops(r) is not None for r in objs.values())
        cost = sampling_flops if with_decoder else (lambda r: r["sample_flops_per_image"])
        ratio = min(cost(r) for r in others.values()) / cost(ar)
        timed = all(sampling_latency(r) is not None for r in objs.values())
        lat = {
            o: cmp.effect(_latency_record(ar, timed), _latency_record(r, timed), "latency_s") for o, r in others.items()
        }
        slower = any(e is not None and e.significant() == -1 for e in lat.values())  # > 0: next-token faster
        v = NOT_CONFIRMED if ratio < 1 or slower else CONFIRMED if ratio >= FAR_CHEAPER else INCONCLUSIVE
        if v == CONFIRMED and not with_decoder:
            v = INCONCLUSIVE
        verdicts.append(v)
        flops_text = ", ".join(
            f"{o} {fmt(cost(r))}"
            + (
                f" (generator {fmt(r['sample_flops_per_image'])} + decoder {fmt(r['decode_flops_per_image'])})"
                if with_decoder
                else ""
            )
            for o, r in objs.items()
        )
        lat_text = ", ".join(
            f"{o} {fmt(sampling_latency(r) if timed else cmp.value(r, 'latency_s'))} s" for o, r in objs.items()
        )
        f.evidence.append(
            f"(a) size {size}: sampling FLOPs/image "
            + ("(decoder included) " if with_decoder else "(generator only: the decoder's FLOPs were not recorded) ")
            + flops_text
            + f"; next-token {ratio:.1f}× below the next cheapest; batch-1 latency "
            + ("(decoder included) " if timed else "(generator only: the decoder was not timed) ")
            + lat_text
            + f" → {v}"
        )
    if not verdicts:
        f.evidence.append("(a) no model size has next-token and another objective at the last milestone")
        return INCONCLUSIVE
    return _combine(verdicts)


def _latency_record(r: dict[str, Any], with_decoder: bool) -> dict[str, Any]:
    """A record-like view of one latency for `compare.effect`: generator plus decoder, or the generator's alone."""
    if not with_decoder:
        return r
    return {"metrics": {"latency_s": sampling_latency(r)}}


def _steps_part(
    data: cmp.StudyData, f: Finding, label: str, paradigm: str, barely: bool, metrics: DecisiveMetrics
) -> str:
    """(b) barely improves (barely=True) or (c) depends on steps: the quality effect of the most steps over the
    fewest, per sweep of the objective that stands for `paradigm`."""
    q, effects, obj = metrics.quality, [], roles(data).get(paradigm, paradigm)
    for rs in step_sweeps(data).get(obj, []):
        e = cmp.effect(rs[-1], rs[0], q)  # most steps vs fewest; > 0: more steps better
        effects.append(e)
        by_steps = ", ".join(f"{r['steps']}: {fmt(cmp.value(r, q))}" for r in rs)
        f.evidence.append(
            f"{label} {obj} {rs[0]['size']} @ {rs[0]['train_flops']:.3g} FLOPs ({rs[0]['weights']}): {q} by steps "
            f"{by_steps}; gain of the most over the fewest steps {_effect_text(e)} (log ratio)"
        )
    effects = [e for e in effects if e is not None]
    if not effects:
        f.evidence.append(f"{label} no {obj} steps sweep measured")
        return INCONCLUSIVE
    if barely:  # within ±margin in every sweep (TOST); beyond it significantly in any: contradicted
        if any(e.exceeds(STEPS_MARGIN) and e.est > 0 for e in effects):
            return NOT_CONFIRMED
        return CONFIRMED if all(e.equivalent(STEPS_MARGIN) for e in effects) else INCONCLUSIVE
    if all(e.significant() == 1 for e in effects):
        return CONFIRMED
    return NOT_CONFIRMED if any(e.equivalent(STEPS_MARGIN) for e in effects) else INCONCLUSIVE


def finding_inference(data: cmp.StudyData, metrics: DecisiveMetrics = DEFAULT_METRICS) -> Finding:
    f = Finding(
        4,
        "Next-token prediction (KV cache) is by far the cheapest at inference; masked-token barely "
        "improves with more steps; diffusion quality depends on steps.",
        INCONCLUSIVE,
        f"Main-grid runs only. (a) At each model size, next-token's sampling FLOPs per image at its primary "
        f"setting, the autoencoder decoder's included, are ≥ {FAR_CHEAPER:g}× below every other objective's and "
        f"its batch-1 latency (decoder included where timed) is not significantly higher: confirmed; another "
        f"objective cheaper or significantly faster: not confirmed; without the decoder's count at most "
        f"inconclusive. "
        f"(b) Masked: the {metrics.quality} gain of the most over the fewest steps lies within "
        f"±{math.exp(STEPS_MARGIN) - 1:.0%} (TOST, 90 % interval) in every sweep: confirmed; a gain "
        f"significantly beyond it in any sweep: not confirmed. (c) Diffusion: the gain is significantly "
        f"positive in every sweep: confirmed; within ±{math.exp(STEPS_MARGIN) - 1:.0%} (TOST) in any sweep: not "
        f"confirmed. Confirmed when (a)–(c) are; not confirmed when any part is contradicted.",
    )
    parts = [
        _cost_part(data, f),
        _steps_part(data, f, "(b)", "masked-token", True, metrics),
        _steps_part(data, f, "(c)", "diffusion", False, metrics),
    ]
    f.evidence.append(f"parts (a), (b), (c): {', '.join(parts)}")
    f.verdict = _combine(parts)
    return f


# ---------------------------------------------------------------------------------------------- 5: EMA


def ema_pairs(data: cmp.StudyData) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Per objective, (ema, raw) record pairs with the same run, milestone, steps and CFG."""
    index = {(r["run"], r["milestone"], r["steps"], r["cfg_scale"], r["weights"]): r for r in data.records}
    out: dict[str, list] = defaultdict(list)
    for (run, ms, steps, cfg, w), r in index.items():
        raw = index.get((run, ms, steps, cfg, "raw"))
        if w == "ema" and raw is not None:
            out[r["objective"]].append((r, raw))
    return dict(out)


def ema_gains(data: cmp.StudyData, metrics: DecisiveMetrics = DEFAULT_METRICS) -> dict[str, tuple[Effect, int]]:
    """Per objective, EMA's quality gain over raw weights (log ratio, > 0: EMA better): the mean over main-grid
    runs of each run's pair at its last milestone at the primary steps and CFG, with a standard error that is
    the larger of the pairs' stored intervals and the spread between runs; and the number of runs."""
    by_obj: dict[str, list[Effect]] = defaultdict(list)
    last: dict[str, int] = {}
    pairs = [
        (e, r)
        for obj, ps in ema_pairs(data).items()
        for e, r in ps
        if e["autoencoder"] == data.main_autoencoders.get(obj)
        and cmp.setting(e)[1:] == data.settings.get(obj, ("", 0, 0.0))[1:]
    ]
    for e, _ in pairs:
        last[e["run"]] = max(last.get(e["run"], -1), e["milestone"])
    for e, r in pairs:
        if e["milestone"] == last[e["run"]] and (g := cmp.effect(e, r, metrics.quality)) is not None:
            by_obj[e["objective"]].append(g)
    out = {}
    for obj, gs in by_obj.items():
        k = len(gs)
        mean = sum(g.est for g in gs) / k
        se = math.sqrt(sum(g.se**2 for g in gs)) / k
        if k >= 2:
            spread = math.sqrt(sum((g.est - mean) ** 2 for g in gs) / (k - 1) / k)
            se = max(se, spread)
        out[obj] = (Effect(mean, se, any(g.assumed for g in gs)), k)
    return out


def finding_ema(data: cmp.StudyData, metrics: DecisiveMetrics = DEFAULT_METRICS) -> Finding:
    f = Finding(
        5,
        "EMA matters much more for diffusion than for the token methods.",
        INCONCLUSIVE,
        f"EMA's gain per objective: log({metrics.quality} raw / {metrics.quality} EMA), the mean over main-grid "
        f"runs at each run's last milestone (primary steps and CFG). Confirmed when diffusion's gain is ≥ "
        f"{math.exp(EMA_GAIN_MATTERS) - 1:.0%}, ≥ 2× each token method's and significantly above it (two-sided "
        f"5 %); not confirmed when a token method's gain is significantly above diffusion's, or diffusion's "
        f"gain lies within ±{math.exp(EMA_GAIN_MATTERS) - 1:.0%} (TOST).",
    )
    gains = ema_gains(data, metrics)
    for obj, (g, k) in gains.items():
        f.evidence.append(f"{obj}: EMA gain {_effect_text(g)} (log ratio) over {k} run(s)")
    role = roles(data)
    tokens = [o for p in ("masked-token", "next-token") if (o := role.get(p)) in gains]
    if role.get("diffusion") not in gains or not tokens:
        f.evidence.append("need EMA/raw pairs for diffusion and at least one token method")
        return f
    g_flow = gains[role["diffusion"]][0]
    diffs = {t: g_flow.minus(gains[t][0]) for t in tokens}
    for t, d in diffs.items():
        f.evidence.append(f"diffusion's gain minus {t}'s: {_effect_text(d)}")
    if any(d.significant() == -1 for d in diffs.values()) or g_flow.equivalent(EMA_GAIN_MATTERS):
        f.verdict = NOT_CONFIRMED
    elif g_flow.est >= EMA_GAIN_MATTERS and all(
        d.significant() == 1 and g_flow.est >= 2 * max(gains[t][0].est, 0.0) for t, d in diffs.items()
    ):
        f.verdict = CONFIRMED
    return f


# ---------------------------------------------------------------------------------------------- 6: autoencoder


def autoencoder_contrasts(data: cmp.StudyData, metrics: DecisiveMetrics = DEFAULT_METRICS):
    """(objective, size, level, main record, ablation record) for runs that differ only in the autoencoder, each
    ablation against its objective's main autoencoder at matched compute (primary setting)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in cmp.primary_records(data):
        groups[(r["objective"], r["size"], r["data_size"])].append(r)
    out = []
    for (obj, size, _), rs in sorted(groups.items()):
        main = data.main_autoencoders.get(obj)
        if len({r["autoencoder"] for r in rs}) < 2 or main not in {r["autoencoder"] for r in rs}:
            continue
        for lv, recs in cmp.by_level(rs).items():
            mains = [r for r in recs if r["autoencoder"] == main]
            for other in (r for r in recs if r["autoencoder"] != main):
                if mains:
                    out.append((obj, size, lv, mains[0], other))
    return out


def _mean_effect(effects: list[Effect]) -> Effect:
    """The mean of one pair's effects over its milestones. Evaluation noise is independent between milestones
    (its part of the standard error shrinks as √k); training noise is shared along a run and does not average
    out: the spread of the per-milestone effects beyond what evaluation noise explains counts in full, not
    divided by √k."""
    k = len(effects)
    mean = sum(e.est for e in effects) / k
    var = sum(e.se**2 for e in effects) / k**2
    if k >= 2:
        spread2 = sum((e.est - mean) ** 2 for e in effects) / (k - 1)
        var += max(0.0, spread2 - sum(e.se**2 for e in effects) / k)
    return Effect(mean, math.sqrt(var), any(e.assumed for e in effects))


def finding_autoencoder(data: cmp.StudyData, metrics: DecisiveMetrics = DEFAULT_METRICS) -> Finding:
    q, p = metrics.quality, metrics.prompt
    f = Finding(
        6,
        "Autoencoder quality (and latent size) strongly moves FID, less so prompt following.",
        INCONCLUSIVE,
        f"Runs that differ only in the autoencoder: each ablation vs the main one, its effect on {q} (log ratio) "
        f"and on {p} (difference) averaged over the matched compute levels of the pair. Quality moves when the "
        f"mean {q} effect is significant (two-sided 5 %); prompt following stays when the mean {p} change lies "
        f"within ±{PROMPT_MARGIN:g} (TOST, 90 % interval) and moves when it is significantly beyond that "
        f"margin. Confirmed when, in most pairs, quality moves and prompt following stays, and prompt following "
        f"moves in none; not confirmed when prompt following moves in most pairs or quality stays within "
        f"±{math.exp(QUALITY_MARGIN) - 1:.0%} (TOST) in most.",
    )
    pairs: dict[tuple, list[tuple[float, Effect | None, Effect | None]]] = defaultdict(list)
    for obj, size, lv, main, other in autoencoder_contrasts(data, metrics):
        pairs[(obj, size, main["autoencoder"], other["autoencoder"])].append(
            (lv, cmp.effect(main, other, q), cmp.effect(main, other, p))
        )
    if not pairs:
        f.evidence.append("no runs that differ only in their autoencoder")
        return f
    q_moves = q_stays = p_stays = p_moves = 0
    for (obj, size, main_ae, ae), rows in pairs.items():
        qs, ps = [r[1] for r in rows if r[1] is not None], [r[2] for r in rows if r[2] is not None]
        qe = _mean_effect(qs) if qs else None
        pe = _mean_effect(ps) if ps else None
        q_moves += qe is not None and qe.significant() != 0
        q_stays += qe is not None and qe.equivalent(QUALITY_MARGIN)
        p_stays += pe is not None and pe.equivalent(PROMPT_MARGIN)
        p_moves += pe is not None and pe.exceeds(PROMPT_MARGIN)
        f.evidence.append(
            f"{obj} {size}, {main_ae} vs {ae} over {len(rows)} level(s): {q} effect {_effect_text(qe)} (log ratio, "
            f"> 0: {main_ae} better); {p} effect {_effect_text(pe)}"
        )
    n = len(pairs)
    ae_desc = ", ".join(f"{a['name']} ({a['kind']}, PSNR {fmt(a['metrics'].get('psnr'))})" for a in data.autoencoders)
    f.evidence.append(
        f"over {n} pair(s): quality moves in {q_moves}, stays in {q_stays}; prompt following stays within "
        f"±{PROMPT_MARGIN:g} in {p_stays}, moves beyond it in {p_moves}. Autoencoders: {ae_desc}"
    )
    if p_moves > n / 2 or q_stays > n / 2:
        f.verdict = NOT_CONFIRMED
    elif q_moves > n / 2 and p_stays > n / 2 and p_moves == 0:
        f.verdict = CONFIRMED
    return f


def all_findings(
    data: cmp.StudyData,
    loss_fits: dict[str, PowerLawFit],
    loss_errors: dict[str, str],
    crossovers: dict[tuple[str, str], Crossover],
    metrics: DecisiveMetrics = DEFAULT_METRICS,
    calibration: dict[str, Any] | None = None,
) -> list[Finding]:
    """The six findings on `metrics`; with a `calibration` table, a confirmation from a rule whose measured
    false-confirmation bound exceeds FALSE_CONFIRM_LIMIT becomes "inconclusive"."""
    found = [
        finding_power_law(data, loss_fits, loss_errors),
        finding_prompt_following(data, metrics),
        finding_quality_crossover(data, crossovers, metrics),
        finding_inference(data, metrics),
        finding_ema(data, metrics),
        finding_autoencoder(data, metrics),
    ]
    found = apply_calibration(found, calibration) if calibration else found
    return apply_replicates(found, data)


# findings that judge a difference between objectives, settings or autoencoders (finding 1 judges a fit's shape)
DIFFERENCE_FINDINGS = (2, 3, 4, 5, 6)
UNREPLICATED = (
    f"training noise is unmeasured (fewer than {rep.MIN_SEEDS} seeds per grid cell): intervals cover the prompts "
    f"only, so a verdict on a difference is at most inconclusive — run the study with `seeds: [0, 1, 2]`"
)


def apply_replicates(found: list[Finding], data: cmp.StudyData) -> list[Finding]:
    """The single-seed rule: without replicate seeds a finding on a difference is at most inconclusive."""
    if rep.training_noise_measured(data.records):
        return found
    for f in found:
        if f.number in DIFFERENCE_FINDINGS and f.verdict != INCONCLUSIVE:
            f.evidence.append(f"the rule said {f.verdict}, but {UNREPLICATED}")
            f.verdict = INCONCLUSIVE
    return found


def apply_calibration(found: list[Finding], calibration: dict[str, Any]) -> list[Finding]:
    """Downgrade confirmations the calibration does not support (bound above the limit, or never measured)."""
    for f in found:
        row = calibration.get("findings", {}).get(str(f.number))
        bound = None if row is None else row.get("false_confirm_upper")
        if f.verdict == CONFIRMED and (bound is None or bound > FALSE_CONFIRM_LIMIT):
            f.verdict = INCONCLUSIVE
            why = "was not calibrated" if bound is None else f"confirms falsely up to {bound:.1%} of the time"
            f.evidence.append(f"the rule said confirmed, but it {why} in simulation (limit {FALSE_CONFIRM_LIMIT:.0%})")
    return found


# ---------------------------------------------------------------------------------------------- recommendation


@dataclass
class Recommendation:
    criterion: str
    metric: str
    budget: float  # matched training-compute level
    winner: str | None  # objective, None when not measured
    tie_with: list[str]  # objectives not significantly different from the winner
    detail: str  # the numbers
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)  # objective → its best record (best_models)


def _describe_candidate(objective: str, r: dict[str, Any], metric: str, quality: str = "fd_probe") -> str:
    iv = cmp.shown_interval(r, metric)
    text = f"{objective}: {fmt(cmp.value(r, metric))}" + (f" {fmt_interval(iv)}" if iv else "")
    text += f" ({r['size']}, {r['autoencoder']}, {cmp.describe_setting(cmp.setting(r))}"
    if metric in ("latency_s", "throughput_ips"):  # speed at what quality: the trade-off stays visible
        text += f"; {quality} {fmt(cmp.value(r, quality))}"
    return text + ")"


CRITERIA = (
    ("image quality", "fd_probe"),
    ("prompt following", "prompt_acc"),
    ("latency (batch 1)", "latency_s"),
    ("throughput", "throughput_ips"),
)


def recommendations(data: cmp.StudyData, metrics: DecisiveMetrics = DEFAULT_METRICS) -> list[Recommendation]:
    """At each measured budget (a compute level holding a run's last milestone), for each criterion the objective
    whose best model — by `best_models`, the findings' rule: main grid, primary setting — is best; others within
    the significance rule of `compare.compare` are listed as ties. Quality and prompt following are `metrics`'."""
    decisive = {"fd_probe": metrics.quality, "prompt_acc": metrics.prompt}
    last: dict[str, int] = {}
    for r in data.records:
        last[r["run"]] = max(last.get(r["run"], -1), r["milestone"])
    budgets = {
        lv
        for lv, recs in cmp.by_level(cmp.main_grid_records(data)).items()
        if any(r["milestone"] == last[r["run"]] for r in recs)
    }
    replicated = rep.training_noise_measured(data.records)  # else no winner is significant (apply_replicates)
    out = []
    for criterion, default in CRITERIA:
        metric = decisive.get(default, default)
        levels = best_models(data, metric)
        for lv in sorted(budgets):
            best = levels.get(lv, {})
            if not best:
                out.append(Recommendation(criterion, metric, lv, None, [], "not measured"))
                continue
            ranked = sorted(
                best.items(), key=lambda kv: cmp.value(kv[1], metric), reverse=not cmp.lower_is_better(metric)
            )
            winner, wr = ranked[0]
            # what a trained model scores moves with its seed; its sampling speed barely does
            noisy = not replicated and metric not in ("latency_s", "throughput_ips")
            ties = [o for o, r in ranked[1:] if noisy or cmp.compare(wr, r, metric) == 0]
            detail = "; ".join(_describe_candidate(o, r, metric, metrics.quality) for o, r in ranked)
            out.append(Recommendation(criterion, metric, lv, winner, ties, detail, dict(best)))
    return sorted(out, key=lambda r: r.budget)
