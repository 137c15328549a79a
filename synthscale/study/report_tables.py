"""The report's tables and fixed texts, each computed from the analysis (study/report.py) and laid out by
study/report_sections.py. A table is (head, rows) of strings; nothing here knows HTML or Markdown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from synthscale.study import calibration
from synthscale.study import compare as cmp
from synthscale.study import findings as fnd
from synthscale.study import instruments as ins
from synthscale.study.compare import fmt, fmt_interval
from synthscale.study.scaling import Crossover, PowerLawFit

if TYPE_CHECKING:
    from synthscale.study.report import Analysis

Table = tuple[list[str], list[list[str]]]


def runs_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    head = ["run", "objective", "size", "D", "autoencoder", "N", "budget FLOPs", "status", "error"]
    rows = [
        [
            r["run"],
            r["objective"],
            r["size"],
            str(r["data_size"]),
            r["autoencoder"],
            "—" if r["params"] is None else f"{r['params']:,}",
            fmt(r["budget_flops"]),
            r["status"],
            (r["error"] or "").strip(),
        ]
        for r in data.runs
    ]
    return head, rows


CEILING_COLUMNS = ("prompt_acc", "attr_acc_shape", "attr_acc_colour", "attr_acc_size", "attr_acc_position", "fd_probe")


def autoencoder_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    """Reconstruction metrics, then the ceiling (reconstructions scored by the probe) with intervals where measured."""
    names = sorted(
        k for k in {k for a in data.autoencoders for k in a["metrics"]} if not k.startswith(cmp.CEILING_PREFIX)
    )
    ceil_cols = [
        c for c in CEILING_COLUMNS if any(f"{cmp.CEILING_PREFIX}{c}" in a["metrics"] for a in data.autoencoders)
    ]

    def ceiling_cell(a: dict[str, Any], metric: str) -> str:
        rec = {"metrics": {k[len(cmp.CEILING_PREFIX) :]: v for k, v in a["metrics"].items()}}
        iv = cmp.shown_interval(rec, metric)
        return fmt(cmp.value(rec, metric)) + (f" {fmt_interval(iv)}" if iv else "")

    return (
        ["autoencoder", "kind", *names, *(f"ceiling {c}" for c in ceil_cols)],
        [
            [a["name"], a["kind"], *(fmt(a["metrics"].get(k)) for k in names), *(ceiling_cell(a, c) for c in ceil_cols)]
            for a in data.autoencoders
        ],
    )


CEILING_TEXT = (
    "A generator can at best produce what its autoencoder decodes: each paradigm's ceiling is its main autoencoder's "
    "reconstructions of the evaluation images, scored by the same instruments. A best model whose value (or "
    "interval) reaches its ceiling's interval is capped by its autoencoder: its number measures the autoencoder, "
    "not the paradigm."
)


def ceiling_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    """Per objective: its main autoencoder's ceiling and its best model's value, and whether the model is capped."""
    rows = []
    for obj in data.objectives:
        ceil = cmp.ceiling(data, obj)
        if ceil is None:
            continue
        # the best model by the findings' rule (main grid, primary setting), at any compute level
        recs = [
            r for r in cmp.main_grid_records(data) if r["objective"] == obj and r["autoencoder"] == ceil["autoencoder"]
        ]
        for metric in ("prompt_acc", "fd_probe"):
            best = cmp.best_per_objective(recs, metric).get(obj)
            if best is None or cmp.value(ceil, metric) is None:
                continue
            verdict = {True: "capped by its autoencoder", False: "below its ceiling"}[cmp.capped(best, ceil, metric)]
            rows.append(
                [
                    obj,
                    ceil["autoencoder"],
                    metric,
                    fmt(cmp.value(ceil, metric)) + iv_text(cmp.shown_interval(ceil, metric)),
                    fmt(cmp.value(best, metric)) + iv_text(cmp.shown_interval(best, metric)),
                    f"{best['size']} @ {best['train_flops']:.3g} FLOPs ({cmp.describe_setting(cmp.setting(best))})",
                    verdict,
                ]
            )
    return ["objective", "autoencoder", "metric", "ceiling", "best model", "which", "verdict"], rows


def iv_text(iv: tuple[float, float] | None) -> str:
    return f" {fmt_interval(iv)}" if iv else ""


def fit_table(fits: dict[str, PowerLawFit], errors: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    head = [
        "objective",
        "points (runs)",
        "E [95 %]",
        "A [95 %]",
        "α [95 %]",
        "R² (log)",
        "max |residual| (log)",
        "hold-out |error|",
        "bootstrap refits",
    ]
    rows = []
    for obj, f in fits.items():
        iv = f.intervals
        ho = (
            f"{f.holdout.mean_abs_rel_error:.1%} on {len(f.holdout.points)} (fit on {f.holdout.n_train})"
            if f.holdout
            else "too few points"
        )
        rows.append(
            [
                obj,
                f"{f.n} ({f.n_groups})",
                f"{fmt(f.E)} {fmt_interval(iv['E'])}",
                f"{fmt(f.A)} {fmt_interval(iv['A'])}",
                f"{f.alpha:.4f} {fmt_interval(iv['alpha'], 4)}",
                f"{f.r2:.4f}",
                f"{np.abs(f.residuals).max():.3g}",
                ho,
                f"{f.n_boot}/{f.n_boot_requested}" + (f" — no interval: {f.interval_note}" if f.interval_note else ""),
            ]
        )
    rows += [[obj, "—", "—", "—", "—", "—", "—", "—", f"no fit: {e}"] for obj, e in errors.items()]
    return head, rows


def residual_table(fits: dict[str, PowerLawFit]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for obj, f in fits.items():
        for c, v, p, r in zip(f.compute, f.values, f.predict(f.compute), f.residuals):
            rows.append([obj, fmt(c), fmt(v, 4), fmt(p, 4), f"{r:+.4f}", "fit"])
        for hp in f.holdout.points if f.holdout else []:
            rows.append(
                [
                    obj,
                    fmt(hp.compute),
                    fmt(hp.actual, 4),
                    fmt(hp.predicted, 4),
                    f"{hp.rel_error:+.2%}",
                    "held out (relative error)",
                ]
            )
    return ["objective", "training FLOPs", "measured", "fitted", "residual", "role"], rows


def crossover_table(crossovers: dict[tuple[str, str], Crossover]) -> tuple[list[str], list[list[str]]]:
    return (
        ["curves", "range (FLOPs)", "better at the low end", "crossing"],
        [
            [
                f"{c.a} vs {c.b}",
                f"[{c.lo:.3g}, {c.hi:.3g}]",
                "—" if c.a_better_below is None else (c.a if c.a_better_below else c.b),
                c.describe(),
            ]
            for c in crossovers.values()
        ],
    )


def instrument_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    """Each instrument: what it measures, whether it decides, and what real images score with it (its ceiling
    and sanity check, at the evaluation's n)."""
    head = [
        "instrument",
        "measures",
        "decides",
        "real test images (ceiling)",
        "real val vs test",
        "corrupted val vs test (blur / channel shuffle / noise)",
        "sanity",
    ]
    deciding = {d.name for d in a.deciders.values() if d}
    rows = []
    for card in a.instruments.values():
        c = card.get("ceiling") or {}
        measures = ", ".join(f"{ins.metric_name(m)} ({m})" for m in (card.get("quality"), card.get("following")) if m)
        real = c.get("real_test", {})
        following = card.get("following")
        ceiling = (
            f"{following} {fmt(real[following])} {fmt_interval(cmp.shown_interval({'metrics': real}, following))}"
            if following in real
            else "—"
        )
        fd = card.get("quality")
        val = fmt(c.get("real_val", {}).get(fd)) if fd else "—"
        corrupted = " / ".join(fmt(v.get(fd)) for v in c.get("corrupted", {}).values()) if fd else "—"
        sanity = c.get("sanity")
        verdict = "—" if not sanity else ("passed" if sanity["passed"] else f"failed: {', '.join(sanity['failed'])}")
        notes = "; ".join(card.get("notes") or [])
        rows.append(
            [
                card["name"] + (f" ({notes})" if notes else ""),
                measures,
                "yes" if card["name"] in deciding else "no",
                ceiling + (f" (n={c['n']})" if c.get("n") else ""),
                val + (f" (n={c['n_val']})" if c.get("n_val") else ""),
                corrupted,
                verdict,
            ]
        )
    return head, rows


def agreement_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
    head = ["role", "deciding", "other instrument", "rank correlation (Spearman, +1: same order)", "records", "agree"]
    rows = []
    for role, rs in a.agreement.items():
        d = a.deciders[role]
        for r in rs:
            rho = "—" if r["rho"] is None else f"{r['rho']:+.2f} (p={r['p']:.2g})"
            agree = "—" if r["agree"] is None else ("yes" if r["agree"] else "no")
            rows.append(
                [
                    ins.ROLES[role],
                    f"{d.metric} ({d.name})",
                    f"{r['metric']} ({r['instrument']})",
                    rho,
                    str(r["n"]),
                    agree,
                ]
            )
    return head, rows


def deciders_text(a: Analysis) -> str:
    parts = [d.describe() for d in a.deciders.values() if d]
    return "; ".join(parts) if parts else "no instrument scored these records"


def rec_table(recs: list[fnd.Recommendation]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in recs:
        tie = f" (tie: {', '.join(r.tie_with)})" if r.tie_with else ""
        win = "not measured" if r.winner is None else r.winner + tie
        rows.append([f"{r.budget:.3g}", r.criterion, win, r.detail])
    if not rows:
        rows = [["—", "anything", "not measured", "no evaluation records: nothing to compare"]]
    return ["budget (training FLOPs)", "best for", "paradigm", "numbers (each paradigm's best model)"], rows


def holdout_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    """Prompt following on test prompts vs prompts naming held-out attribute combinations (compositional
    generalisation, which no anchor measures), at each main-grid run's last milestone, primary setting."""
    last: dict[str, dict[str, Any]] = {}
    for r in cmp.main_grid_records(data):
        if r["run"] not in last or r["milestone"] > last[r["run"]]["milestone"]:
            last[r["run"]] = r

    def cell(r, m):
        v = cmp.value(r, m)
        return "—" if v is None else f"{fmt(v)} {fmt_interval(cmp.shown_interval(r, m))}"

    rows = [
        [
            r["objective"],
            r["size"],
            fmt(r["train_flops"]),
            cell(r, "prompt_acc"),
            cell(r, "holdout_prompt_acc"),
            cell(r, "holdout_gap"),
        ]
        for r in sorted(last.values(), key=lambda r: (r["objective"], r["params"]))
        if cmp.value(r, "holdout_prompt_acc") is not None
    ]
    head = ["objective", "size", "training FLOPs", "test prompts [95 %]", "held-out combinations [95 %]", "gap [95 %]"]
    return head, rows


def settings_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    main = data.main_autoencoders
    return (
        ["objective", "primary sampling setting", "main autoencoder"],
        [[o, cmp.describe_setting(s), main.get(o, "—")] for o, s in sorted(data.settings.items())],
    )


def calibration_text(table: dict[str, Any] | None) -> str:
    if not table or not table.get("findings"):
        return (
            "No calibration table is stored (run benchmarks/calibration.py): no rule's false-confirmation rate is "
            "measured, so no finding can be confirmed."
        )
    stored = table.get("stored_version")
    note = (
        "no stored table: finding 1 is not calibrated"
        if stored is None
        else "the rules have changed since it was written: rerun it"
        if stored != calibration.rules_version()
        else f"rules version {stored}"
    )
    return (
        f"How often each rule says 'confirmed' on simulated studies with a known truth (study/simulate.py), each "
        f"judged by the function this report calls: where the claim is false (the worst of its claim-false "
        f"scenarios, at the claim's boundary) and where it holds with the stated effect. Findings 2-6 are "
        f"simulated here at this study's design ({table.get('design_text', '')}; FD standard error "
        f"{table['design']['fd_se']:.0%} per record at 128 images; training noise between runs and along "
        f"milestones that no interval shows); finding 1 (loss fits, slow) comes from the table "
        f"`python benchmarks/calibration.py --store` wrote ({note}). A rule confirms only when the upper bound "
        f"(one-sided 95 %, Clopper-Pearson) is ≤ {fnd.FALSE_CONFIRM_LIMIT:.0%}."
    )


def cost_table(data: cmp.StudyData) -> Table:
    """What one image costs to sample, per main-grid run at its last milestone and primary setting: the generator
    and the autoencoder decoder apart, then together (the decoder is the same work whatever the paradigm, but
    paradigms on different autoencoders pay different decoders, and at small scale it is a large share)."""
    last: dict[str, dict[str, Any]] = {}
    for r in cmp.main_grid_records(data):
        if r["run"] not in last or r["milestone"] > last[r["run"]]["milestone"]:
            last[r["run"]] = r

    def secs(v: float | None, why: str = "not measured") -> str:
        return why if v is None else f"{v:.3g}"

    rows = []
    for r in sorted(last.values(), key=lambda r: (data.objectives.index(r["objective"]), r["params"])):
        dec = r.get("decode_flops_per_image")
        rows.append(
            [
                r["objective"],
                r["size"],
                r["autoencoder"],
                fmt(r["sample_flops_per_image"]),
                "not recorded" if dec is None else fmt(dec),
                "—" if dec is None else fmt(fnd.sampling_flops(r)),
                secs(cmp.value(r, "latency_s")),
                secs(cmp.value(r, "decode_latency_s"), "not timed" if cmp.value(r, "latency_s") else "not measured"),
                secs(fnd.sampling_latency(r), "—"),
            ]
        )
    head = [
        "objective",
        "size",
        "autoencoder",
        "generator FLOPs/image",
        "decoder FLOPs/image",
        "total FLOPs/image",
        "generator latency (s)",
        "decoder latency (s)",
        "total latency (s)",
    ]
    return head, rows


def how_measured_table(a: Analysis) -> Table:
    """Every instrument setting behind the figures and findings, in one place (the captions say what a figure
    shows; this says how its numbers were measured)."""
    d = a.data
    rows = [
        [
            "sampling setting",
            "; ".join(f"{o}: {cmp.describe_setting(s)}" for o, s in sorted(d.settings.items())) or "no records",
            "each objective's primary setting (the one evaluated at the most milestones): every figure but Fig. 5, "
            "the fits, the findings' rule for the best model and the recommendation",
        ],
        [
            "main autoencoder",
            "; ".join(f"{o}: {ae}" for o, ae in sorted(d.main_autoencoders.items())) or "—",
            "every figure and finding but the autoencoder ablation (Fig. 2, finding 6)",
        ],
        ["deciding instruments", deciders_text(a), "findings 2-6 and the recommendation"],
    ]
    rows += [
        [f"instrument: {k}", " | ".join(v), "as stored with the records"]
        for k, v in cmp.instrument_settings(d.records).items()
    ]
    rows += [
        [
            "training FLOPs",
            "analytic, 2 per multiply-add, training = 3 × forward",
            "the x axis of Figs. 2-4, the matched compute levels",
        ],
        [
            "sampling FLOPs",
            "generator: analytic, classifier-free guidance's second pass included; decoder: torch's FLOP counter on "
            "one decode per autoencoder (its convolutions, 2 per multiply-add)",
            "Fig. 5 (generator), the sampling-cost table and finding 4 (generator + decoder)",
        ],
        [
            "speed",
            "batch-1 latency and best-batch throughput, medians over repeats after one warm-up call; the decoder "
            "timed apart from the generator",
            "the sampling-cost table, finding 4, the recommendation",
        ],
        [
            "intervals",
            "95 %: bootstrap over the generated images (Fréchet distance) and over prompts (accuracies); the loss "
            "fits' bootstrap resamples whole runs",
            "error bars, findings 2-6",
        ],
        [
            "KID",
            "used only as a check on the deciding Fréchet distance, stated as its difference over its standard "
            "error (z); its value over unnormalised instrument features (cubic kernel) has no readable scale",
            "finding 3",
        ],
    ]
    return ["what", "how", "used by"], rows
