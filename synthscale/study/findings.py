"""The paper's six findings (DESIGN.md), each judged on this study's numbers as confirmed / not confirmed /
inconclusive by a rule written here, and the recommendation table. The rules use the measured intervals
(bootstrap bounds, KID ± 1.96·std, fit intervals); where a number has no interval a difference must exceed
`compare.REL_MARGIN` (for quality: fd_probe beyond the margin, and KID's intervals agreeing where measured).
With few points "inconclusive" is the honest answer, and the rules give it.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from synthscale.study import compare as cmp
from synthscale.study.compare import fmt, fmt_interval
from synthscale.study.scaling import Crossover, PowerLawFit

CONFIRMED, NOT_CONFIRMED, INCONCLUSIVE = "confirmed", "not confirmed", "inconclusive"
# finding 1: a power law "holds" when it explains the frontier and predicts the held-out largest-compute points
R2_HOLDS, R2_FAILS = 0.95, 0.80
HOLDOUT_HOLDS, HOLDOUT_FAILS = 0.05, 0.15  # mean |relative error| on the held-out points
# finding 4: "by far the cheapest": at least this many times fewer sampling FLOPs than the next objective
FAR_CHEAPER = 2.0
# finding 5: EMA "matters much more": diffusion's median relative FD gain from EMA is ≥ this, and ≥ 2× the tokens'
EMA_GAIN_MATTERS = 0.10


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
    wins = sum(1 for o in outcomes if o == 1)
    losses = sum(1 for o in outcomes if o == -1)
    return wins, losses, len(outcomes)


def _majority_verdict(outcomes: list[int | None]) -> str:
    """a better than b across matched points: wins at most points and never loses → confirmed; loses at least as
    often as it wins (and loses somewhere) → not confirmed; otherwise inconclusive."""
    wins, losses, n = _tally([o for o in outcomes if o is not None])
    if n == 0:
        return INCONCLUSIVE
    if wins > n / 2 and losses == 0:
        return CONFIRMED
    if losses >= 1 and losses >= wins:
        return NOT_CONFIRMED
    return INCONCLUSIVE


# ---------------------------------------------------------------------------------------------- 1: power law


def finding_power_law(data: cmp.StudyData, fits: dict[str, PowerLawFit], errors: dict[str, str]) -> Finding:
    f = Finding(
        1,
        "Every objective's final loss follows a predictable power law in training FLOPs.",
        INCONCLUSIVE,
        f"Per objective, L(C) = E + A·C^−α fitted to the loss frontier: holds when R² ≥ {R2_HOLDS}, the "
        f"95 % interval of α excludes 0 and the fit without the largest-compute points predicts them "
        f"within {HOLDOUT_HOLDS:.0%} (mean |relative error|); fails when R² < {R2_FAILS} or that error "
        f"exceeds {HOLDOUT_FAILS:.0%}. Confirmed when it holds for every objective.",
    )
    verdicts = []
    for obj in data.objectives:
        fit = fits.get(obj)
        if fit is None:
            f.evidence.append(f"{obj}: no fit — {errors.get(obj, 'no loss measured')}")
            verdicts.append(INCONCLUSIVE)
            continue
        a_iv = fit.intervals.get("alpha")
        ho = fit.holdout.mean_abs_rel_error if fit.holdout else None
        ho_text = "not computed (too few points)" if ho is None else f"{ho:.1%} on {len(fit.holdout.points)} point(s)"
        text = (
            f"{obj}: α = {fit.alpha:.3f} {fmt_interval(a_iv)}, E = {fmt(fit.E)}, R² = {fit.r2:.4f}, "
            f"{fit.n} frontier points; hold-out error {ho_text}"
        )
        if fit.r2 < R2_FAILS or (ho is not None and ho > HOLDOUT_FAILS):
            v = NOT_CONFIRMED
        elif fit.r2 >= R2_HOLDS and a_iv is not None and a_iv[0] > 0 and ho is not None and ho <= HOLDOUT_HOLDS:
            v = CONFIRMED
        else:
            v = INCONCLUSIVE
        verdicts.append(v)
        f.evidence.append(f"{text} → {v}")
    f.verdict = _combine(verdicts)
    return f


# ---------------------------------------------------------------------------------------------- 2: prompts


def finding_prompt_following(data: cmp.StudyData) -> Finding:
    f = Finding(
        2,
        "Token methods (next-token first) follow prompts better than diffusion at equal training compute.",
        INCONCLUSIVE,
        "At each matched training-compute level, each objective's best prompt accuracy (over sizes); a token "
        "method wins a level when its 95 % bootstrap interval lies above diffusion's. Confirmed when both "
        "masked and next-token win most levels and lose none; not confirmed when either loses at least as "
        "many levels as it wins. Next-token vs masked is reported alongside.",
    )
    levels = cmp.matched_best(cmp.primary_records(data), "prompt_acc")
    verdicts = []
    for token in ("autoregressive", "masked"):
        outcomes = []
        for best in levels.values():
            if token in best and "flow" in best:
                outcomes.append(cmp.compare(best[token], best["flow"], "prompt_acc"))
        wins, losses, n = _tally(outcomes)
        v = _majority_verdict(outcomes)
        verdicts.append(v)
        f.evidence.append(f"{token} vs flow: better at {wins}, worse at {losses} of {n} matched levels → {v}")
    ar_vs_m = [
        cmp.compare(b["autoregressive"], b["masked"], "prompt_acc")
        for b in levels.values()
        if "autoregressive" in b and "masked" in b
    ]
    w, l_, n = _tally(ar_vs_m)
    f.evidence.append(f"next-token vs masked: better at {w}, worse at {l_} of {n} levels")
    top = max(levels) if levels else None
    if top is not None:
        f.evidence.append(
            f"at {top:.3g} FLOPs: "
            + ", ".join(
                f"{o} {fmt(cmp.value(r, 'prompt_acc'))} {fmt_interval(cmp.interval(r, 'prompt_acc'))}"
                for o, r in levels[top].items()
            )
        )
    f.verdict = _combine(verdicts) if levels else INCONCLUSIVE
    return f


# ---------------------------------------------------------------------------------------------- 3: quality


def finding_quality_crossover(data: cmp.StudyData, crossovers: dict[tuple[str, str], Crossover]) -> Finding:
    f = Finding(
        3,
        "On image quality next-token leads at low compute; diffusion catches up as compute grows.",
        INCONCLUSIVE,
        "Best quality per objective at the lowest and highest matched training-compute levels; a quality "
        "difference is significant when fd_probe differs by more than 10 % and, where KID was measured, "
        "KID's 95 % intervals (±1.96·std) are apart in the same direction. Confirmed when next-token is "
        "significantly better at the lowest level and, at the highest, either no longer significantly better "
        "or its FD lead (ratio) has at least halved in log terms; not confirmed when diffusion is "
        "significantly better at the lowest level, or next-token leads there and the gap does not shrink.",
    )
    levels = {
        lv: b
        for lv, b in cmp.matched_best(cmp.primary_records(data), "fd_probe").items()
        if "autoregressive" in b and "flow" in b
    }
    if len(levels) < 2:
        f.evidence.append(f"{len(levels)} matched compute level(s) with both next-token and diffusion FD; need ≥ 2")
        return f
    lo, hi = min(levels), max(levels)
    ar_lo, fl_lo = levels[lo]["autoregressive"], levels[lo]["flow"]
    ar_hi, fl_hi = levels[hi]["autoregressive"], levels[hi]["flow"]
    c_lo, c_hi = cmp.compare_quality(ar_lo, fl_lo), cmp.compare_quality(ar_hi, fl_hi)
    r_lo = cmp.value(fl_lo, "fd_probe") / max(cmp.value(ar_lo, "fd_probe"), 1e-12)  # > 1: next-token better
    r_hi = cmp.value(fl_hi, "fd_probe") / max(cmp.value(ar_hi, "fd_probe"), 1e-12)
    names = {
        1: "next-token significantly better",
        -1: "diffusion significantly better",
        0: "no significant difference",
        None: "not comparable",
    }
    f.evidence.append(
        f"lowest level {lo:.3g} FLOPs: next-token {cmp.quality_text(ar_lo)} vs diffusion "
        f"{cmp.quality_text(fl_lo)} (FD ratio {r_lo:.2f}) — {names[c_lo]}"
    )
    f.evidence.append(
        f"highest level {hi:.3g} FLOPs: next-token {cmp.quality_text(ar_hi)} vs diffusion "
        f"{cmp.quality_text(fl_hi)} (FD ratio {r_hi:.2f}) — {names[c_hi]}"
    )
    cross = crossovers.get(("autoregressive", "flow"))
    if cross is not None:
        f.evidence.append(f"fd_probe fits, next-token vs diffusion: {cross.describe()}")
    shrinks = r_hi < r_lo and (c_hi in (0, -1) or math.log(max(r_hi, 1e-12)) <= 0.5 * math.log(r_lo))
    if c_lo == 1 and shrinks:
        f.verdict = CONFIRMED
    elif c_lo == -1 or (c_lo == 1 and r_hi >= r_lo):
        f.verdict = NOT_CONFIRMED
    return f


# ---------------------------------------------------------------------------------------------- 4: inference


def _last_records(data: cmp.StudyData) -> list[dict[str, Any]]:
    """Primary-setting records at each run's last evaluated milestone."""
    prim = cmp.primary_records(data)
    last: dict[str, int] = {}
    for r in prim:
        last[r["run"]] = max(last.get(r["run"], -1), r["milestone"])
    return [r for r in prim if r["milestone"] == last[r["run"]]]


def step_sweeps(data: cmp.StudyData) -> dict[str, list[list[dict[str, Any]]]]:
    """Per objective, every group of records that differ only in sampling steps (≥ 2 step counts)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in data.records:
        groups[(r["objective"], r["run"], r["milestone"], r["weights"], r["cfg_scale"])].append(r)
    out: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for (obj, *_), rs in groups.items():
        if len({r["steps"] for r in rs}) > 1:
            out[obj].append(sorted(rs, key=lambda r: r["steps"]))
    return dict(out)


def finding_inference(data: cmp.StudyData) -> Finding:
    f = Finding(
        4,
        "Next-token prediction (KV cache) is by far the cheapest at inference; masked-token barely "
        "improves with more steps; diffusion quality depends on steps.",
        INCONCLUSIVE,
        f"(a) At each model size (main autoencoders), next-token's sampling FLOPs per image at its "
        f"primary setting are ≥ {FAR_CHEAPER:g}× below every other objective's (and its batch-1 latency "
        f"lowest where measured): confirmed; another objective cheaper: not confirmed. (b) Masked: quality "
        f"at the most steps is not significantly better than at the fewest in any sweep (significant as in "
        f"finding 3). (c) Diffusion: quality at the most steps is significantly better than at the "
        f"fewest in every sweep. Confirmed when (a)–(c) are; not confirmed when any part is contradicted.",
    )
    parts = []
    # (a) cost per image
    main = data.main_autoencoders
    last = [r for r in _last_records(data) if r["autoencoder"] == main[r["objective"]]]
    by_size: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in last:  # the cheapest record per (size, objective) at the last milestone
        cur = by_size[r["size"]].get(r["objective"])
        if cur is None or r["sample_flops_per_image"] < cur["sample_flops_per_image"]:
            by_size[r["size"]][r["objective"]] = r
    verdicts_a = []
    for size, objs in sorted(by_size.items()):
        if "autoregressive" not in objs or len(objs) < 2:
            continue
        ar = objs["autoregressive"]
        others = {o: r for o, r in objs.items() if o != "autoregressive"}
        ratio = min(r["sample_flops_per_image"] for r in others.values()) / ar["sample_flops_per_image"]
        lat = {o: cmp.value(r, "latency_s") for o, r in objs.items()}
        lat_ok = None
        if lat["autoregressive"] is not None and any(lat[o] is not None for o in others):
            lat_ok = all(lat[o] is None or cmp.compare(ar, others[o], "latency_s") != -1 for o in others)
        if ratio < 1 or lat_ok is False:
            v = NOT_CONFIRMED
        elif ratio >= FAR_CHEAPER and lat_ok is not False:
            v = CONFIRMED
        else:
            v = INCONCLUSIVE
        verdicts_a.append(v)
        f.evidence.append(
            f"(a) size {size}: sampling FLOPs/image "
            + ", ".join(f"{o} {fmt(r['sample_flops_per_image'])}" for o, r in objs.items())
            + f"; next-token {ratio:.1f}× below the next cheapest; latency "
            + ", ".join(f"{o} {fmt(lat[o])} s" for o in objs)
            + f" → {v}"
        )
    parts.append(_combine(verdicts_a) if verdicts_a else INCONCLUSIVE)
    if not verdicts_a:
        f.evidence.append("(a) no model size has next-token and another objective at the last milestone")
    # (b), (c) step sweeps
    sweeps = step_sweeps(data)
    change = {1: "better", -1: "worse", 0: "no significant change", None: "not comparable"}
    for label, obj, want in (("(b)", "masked", 0), ("(c)", "flow", 1)):
        outcomes = []
        for rs in sweeps.get(obj, []):
            o = cmp.compare_quality(rs[-1], rs[0])  # most steps vs fewest
            outcomes.append(o)
            by_steps = ", ".join(f"{r['steps']}: {fmt(cmp.value(r, 'fd_probe'))}" for r in rs)
            f.evidence.append(
                f"{label} {obj} {rs[0]['size']} {rs[0]['autoencoder']} @ {rs[0]['train_flops']:.3g} "
                f"FLOPs: FD by steps {by_steps} — most vs fewest steps: {change[o]}"
            )
        known = [o for o in outcomes if o is not None]
        if not known:
            f.evidence.append(f"{label} no {obj} steps sweep measured")
            parts.append(INCONCLUSIVE)
        elif want == 0:  # barely improves: never significantly better with more steps
            parts.append(CONFIRMED if all(o != 1 for o in known) else NOT_CONFIRMED)
        else:  # depends on steps: significantly better with more steps in every sweep
            parts.append(
                CONFIRMED
                if all(o == 1 for o in known)
                else NOT_CONFIRMED
                if all(o != 1 for o in known)
                else INCONCLUSIVE
            )
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


def finding_ema(data: cmp.StudyData) -> Finding:
    f = Finding(
        5,
        "EMA matters much more for diffusion than for the token methods.",
        INCONCLUSIVE,
        f"Relative FD gain of EMA over raw weights, (FD_raw − FD_ema)/FD_raw, median over pairs with the "
        f"same run, milestone, steps and CFG. Confirmed when diffusion's median gain is ≥ "
        f"{EMA_GAIN_MATTERS:.0%}, ≥ 2× each token method's, and EMA is significantly better (as in "
        f"finding 3) in at least half of diffusion's pairs; not confirmed when a token method "
        f"gains at least as much, or EMA is significantly better in none of diffusion's pairs.",
    )
    pairs = ema_pairs(data)
    gains, sig = {}, {}
    for obj, ps in pairs.items():
        g = [
            (cmp.value(raw, "fd_probe") - cmp.value(ema, "fd_probe")) / cmp.value(raw, "fd_probe")
            for ema, raw in ps
            if cmp.value(ema, "fd_probe") is not None and cmp.value(raw, "fd_probe") is not None
        ]
        if g:
            gains[obj] = statistics.median(g)
            sig[obj] = sum(1 for ema, raw in ps if cmp.compare_quality(ema, raw) == 1) / len(ps)
            f.evidence.append(
                f"{obj}: median EMA gain {gains[obj]:+.1%} over {len(g)} pairs; EMA significantly "
                f"better in {sig[obj]:.0%} of them"
            )
    tokens = [o for o in ("masked", "autoregressive") if o in gains]
    if "flow" not in gains or not tokens:
        f.evidence.append("need EMA/raw pairs for diffusion and at least one token method")
        return f
    g_flow = gains["flow"]
    if any(gains[t] >= g_flow for t in tokens) or sig["flow"] == 0:
        f.verdict = NOT_CONFIRMED
    elif g_flow >= EMA_GAIN_MATTERS and all(g_flow >= 2 * max(gains[t], 0.0) for t in tokens) and sig["flow"] >= 0.5:
        f.verdict = CONFIRMED
    return f


# ---------------------------------------------------------------------------------------------- 6: autoencoder


def finding_autoencoder(data: cmp.StudyData) -> Finding:
    f = Finding(
        6,
        "Autoencoder quality (and latent size) strongly moves FID, less so prompt following.",
        INCONCLUSIVE,
        "Runs that differ only in the autoencoder, compared at each matched compute level (best vs worst "
        "autoencoder by FD). Quality moves when the difference is significant (as in finding "
        "3). Confirmed when quality moves at most levels and the relative prompt-accuracy change is "
        "smaller than the relative FD change at every level; not confirmed when quality moves at none, or "
        "prompt accuracy changes relatively at least as much as FD at most levels. Whether the prompt-"
        "accuracy change is significant (95 % intervals apart) is reported alongside.",
    )
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in cmp.primary_records(data):
        groups[(r["objective"], r["size"], r["data_size"])].append(r)
    q_moves, p_smaller, p_larger, n = 0, 0, 0, 0
    for (obj, size, _), rs in sorted(groups.items()):
        if len({r["autoencoder"] for r in rs}) < 2:
            continue
        levels = cmp.by_level(rs)
        for lv, recs in levels.items():
            by_ae = cmp.best_per_objective([dict(r, objective=r["autoencoder"]) for r in recs], "fd_probe")
            if len(by_ae) < 2:
                continue
            best = min(by_ae.values(), key=lambda r: cmp.value(r, "fd_probe"))
            worst = max(by_ae.values(), key=lambda r: cmp.value(r, "fd_probe"))
            q = cmp.compare_quality(best, worst)
            fd_rel = 1 - cmp.value(best, "fd_probe") / cmp.value(worst, "fd_probe")
            pb, pw = cmp.value(best, "prompt_acc"), cmp.value(worst, "prompt_acc")
            p_rel = abs(pb - pw) / max(pb, pw) if pb is not None and pw is not None and max(pb, pw) > 0 else None
            p_sig = cmp.compare(best, worst, "prompt_acc")
            n += 1
            q_moves += q == 1
            p_smaller += p_rel is not None and p_rel < fd_rel
            p_larger += p_rel is not None and p_rel >= fd_rel
            if lv == max(levels):
                f.evidence.append(
                    f"{obj} {size} @ {lv:.3g} FLOPs: FD {best['autoencoder']} {fmt(cmp.value(best, 'fd_probe'))} vs "
                    f"{worst['autoencoder']} {fmt(cmp.value(worst, 'fd_probe'))} ({fd_rel:.0%} lower); prompt acc "
                    f"{fmt(pb)} vs {fmt(pw)} ({'significant' if p_sig not in (0, None) else 'not significant'})"
                )
    if n == 0:
        f.evidence.append("no runs that differ only in their autoencoder")
        return f
    ae_desc = ", ".join(f"{a['name']} ({a['kind']}, PSNR {fmt(a['metrics'].get('psnr'))})" for a in data.autoencoders)
    f.evidence.append(
        f"over {n} matched levels: quality moves significantly at {q_moves}; prompt accuracy moves "
        f"relatively less than FD at {p_smaller}. Autoencoders: {ae_desc}"
    )
    if q_moves == 0 or p_larger > n / 2:
        f.verdict = NOT_CONFIRMED
    elif q_moves > n / 2 and p_smaller == n:
        f.verdict = CONFIRMED
    return f


def all_findings(
    data: cmp.StudyData,
    loss_fits: dict[str, PowerLawFit],
    loss_errors: dict[str, str],
    crossovers: dict[tuple[str, str], Crossover],
) -> list[Finding]:
    return [
        finding_power_law(data, loss_fits, loss_errors),
        finding_prompt_following(data),
        finding_quality_crossover(data, crossovers),
        finding_inference(data),
        finding_ema(data),
        finding_autoencoder(data),
    ]


# ---------------------------------------------------------------------------------------------- recommendation


@dataclass
class Recommendation:
    criterion: str
    metric: str
    budget: float  # matched training-compute level
    winner: str | None  # objective, None when not measured
    tie_with: list[str]  # objectives not significantly different from the winner
    detail: str  # the numbers


def _describe_candidate(objective: str, r: dict[str, Any], metric: str) -> str:
    iv = cmp.interval(r, metric)
    text = f"{objective}: {fmt(cmp.value(r, metric))}" + (f" {fmt_interval(iv)}" if iv else "")
    text += f" ({r['size']}, {r['autoencoder']}, {cmp.describe_setting(cmp.setting(r))}"
    if metric in ("latency_s", "throughput_ips"):  # speed at what quality: the trade-off stays visible
        text += f"; FD {fmt(cmp.value(r, 'fd_probe'))}"
    return text + ")"


CRITERIA = (
    ("image quality", "fd_probe"),
    ("prompt following", "prompt_acc"),
    ("latency (batch 1)", "latency_s"),
    ("throughput", "throughput_ips"),
)


def recommendations(data: cmp.StudyData) -> list[Recommendation]:
    """At each measured budget (the compute level of runs' last milestones), the objective with the best value
    of each criterion over every model and sampling setting trained to that budget; others within the
    significance rule of `compare.compare` are listed as ties."""
    last: dict[str, int] = {}
    for r in data.records:
        last[r["run"]] = max(last.get(r["run"], -1), r["milestone"])
    final = [r for r in data.records if r["milestone"] == last[r["run"]]]
    out = []
    for lv, recs in cmp.by_level(final).items():
        for criterion, metric in CRITERIA:
            best = cmp.best_per_objective(recs, metric)
            if not best:
                out.append(Recommendation(criterion, metric, lv, None, [], "not measured"))
                continue
            ranked = sorted(
                best.items(), key=lambda kv: cmp.value(kv[1], metric), reverse=metric not in cmp.LOWER_IS_BETTER
            )
            winner, wr = ranked[0]
            ties = [o for o, r in ranked[1:] if cmp.compare(wr, r, metric) == 0]
            detail = "; ".join(_describe_candidate(o, r, metric) for o, r in ranked)
            out.append(Recommendation(criterion, metric, lv, winner, ties, detail))
    return out
