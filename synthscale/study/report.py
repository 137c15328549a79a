"""`synthscale report STUDY_DIR`: fits, figures, findings and recommendation from a study's results store, written
as one self-contained HTML file (figures and sample grids embedded as base64) and a Markdown summary beside it
(figures as PNG files next to it). Every number is computed here from the stored records; nothing is written
by hand, and a study without data for a part says so in that part.
"""

from __future__ import annotations

import base64
import html
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthscale import atomic
from synthscale.study import calibration, controls, plots
from synthscale.study import compare as cmp
from synthscale.study import findings as fnd
from synthscale.study import instruments as ins
from synthscale.study.compare import fmt, fmt_interval
from synthscale.study.scaling import Crossover, PowerLawFit, crossover

CROSSOVER_PAIRS = (("autoregressive", "flow"), ("masked", "flow"), ("autoregressive", "masked"))


@dataclass
class Analysis:
    data: cmp.StudyData
    loss_fits: dict[str, PowerLawFit]
    loss_errors: dict[str, str]  # objective → why it has no loss fit
    fd_fits: dict[str, PowerLawFit]
    fd_errors: dict[str, str]
    crossovers: dict[tuple[str, str], Crossover]  # of the deciding quality metric's fits
    findings: list[fnd.Finding]
    recommendations: list[fnd.Recommendation]
    plots: list[plots.Plot]
    samples: list[dict[str, Any]]  # sample-grid artifacts at matched compute, with "label"
    samples_note: str
    reconstructions: list[dict[str, Any]]  # autoencoder reconstruction grids
    calibration: dict[str, Any] | None = None  # the stored calibration table of the decision rules
    deciders: dict[str, ins.Decider | None] = field(default_factory=dict)  # role → the instrument deciding it
    instruments: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind → the card records carry
    agreement: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # role → others' rank agreement

    @property
    def quality_metric(self) -> str:
        d = self.deciders.get("quality")
        return d.metric if d else "fd_probe"


def _sample_grids(data: cmp.StudyData, metric: str = "fd_probe") -> tuple[list[dict[str, Any]], str]:
    """Sample-grid artifacts at matched compute: the highest compute level where the most objectives have one;
    per objective the grid at its primary setting when there is one, of the model with the best `metric` there
    (at small budgets the largest model is often the under-trained one)."""
    flops = {(r["run"], r["milestone"]): (r["train_flops"], r["params"]) for r in data.records}
    fd = {
        (r["run"], r["milestone"], r["weights"], r["steps"], r["cfg_scale"]): r["metrics"].get(metric)
        for r in data.records
    }
    grids = []
    for a in data.artifacts:
        if a["kind"] == "samples" and (a["run"], a["milestone"]) in flops and Path(a["path"]).is_file():
            objective = next((r["objective"] for r in data.runs if r["run"] == a["run"]), None) or next(
                r["objective"] for r in data.records if r["run"] == a["run"]
            )
            c, n = flops[(a["run"], a["milestone"])]
            score = fd.get((a["run"], a["milestone"], a["weights"], a["steps"], a["cfg_scale"]))
            grids.append(
                dict(
                    a,
                    objective=objective,
                    train_flops=c,
                    params=n,
                    fd_probe=score if score is not None and math.isfinite(score) else math.inf,
                )
            )
    if not grids:
        return [], "no sample grids were stored (artifacts of kind 'samples')"
    by_level = cmp.by_level(grids)
    lv = max(by_level, key=lambda k: (len({g["objective"] for g in by_level[k]}), k))
    chosen = []
    for obj in data.objectives:
        cands = [g for g in by_level[lv] if g["objective"] == obj]
        if not cands:
            continue
        prim = data.settings.get(obj)
        g = max(cands, key=lambda g: ((g["weights"], g["steps"], g["cfg_scale"]) == prim, -g["fd_probe"], g["params"]))
        size = next((r["size"] for r in data.runs if r["run"] == g["run"]), "")
        g["label"] = (
            f"{obj} {size} @ {g['train_flops']:.3g} training FLOPs — {g['weights']} weights, "
            f"{g['steps']} steps, CFG {g['cfg_scale']:g}"
            + (f", {metric.replace('_', '-')} {g['fd_probe']:.3g}" if math.isfinite(g["fd_probe"]) else "")
        )
        chosen.append(g)
    missing = [o for o in data.objectives if o not in {g["objective"] for g in chosen}]
    note = f"at {lv:.3g} training FLOPs" + (f"; no grid at this compute for {', '.join(missing)}" if missing else "")
    return chosen, note


def analyse(
    study_dir: str | Path, n_boot: int = 200, seed: int = 0, metrics: cmp.DecisiveMetrics | None = None
) -> Analysis:
    """Fits, findings, recommendation and figures of a study. `metrics` names the numbers the findings decide
    on; by default those of the deciding instruments of the study's records (study/instruments.py: exact labels
    first, pretrained next, in-domain otherwise)."""
    data = cmp.load_study(study_dir)
    metrics = metrics or ins.decisive_metrics(data.records)
    table = calibration.for_study(data, calibration.load_table())
    loss_fits, loss_errors = fnd.fit_laws(data, "loss", n_boot, seed)
    fd_fits, fd_errors = fnd.fit_laws(data, metrics.quality, n_boot, seed)
    crossovers = {
        (a, b): crossover(fd_fits[a], fd_fits[b], a, b) for a, b in CROSSOVER_PAIRS if a in fd_fits and b in fd_fits
    }
    samples, samples_note = _sample_grids(data, metrics.quality)
    deciders = {role: ins.decider(data.records, role) for role in ins.ROLES}
    agreement = {role: ins.agreement(data.records, role) for role in ins.ROLES}
    findings = fnd.all_findings(data, loss_fits, loss_errors, crossovers, metrics, calibration=table or {})
    _name_instruments(findings, deciders, agreement)
    recon = [a for a in data.artifacts if a["kind"] == "reconstructions" and Path(a["path"]).is_file()]
    return Analysis(
        data,
        loss_fits,
        loss_errors,
        fd_fits,
        fd_errors,
        crossovers,
        _with_ceiling_evidence(findings, data),
        fnd.recommendations(data, metrics),
        plots.all_plots(data, loss_fits),
        samples,
        samples_note,
        recon,
        table,
        deciders,
        ins.instrument_cards(data.records),
        agreement,
    )


def _name_instruments(findings: list[fnd.Finding], deciders: dict, agreement: dict) -> None:
    """Every finding on generated images names the instruments it decided with, and whether the others agree
    (finding 1 is about the objectives' own losses)."""
    lines = []
    for role, d in deciders.items():
        if d is None:
            continue
        line = d.describe()
        for row in agreement.get(role, []):
            if row["rho"] is None:
                line += f"; {row['metric']} ({row['label']}): too few records to compare"
            else:
                verdict = "agrees" if row["agree"] else "does not agree"
                line += (
                    f"; {row['metric']} ({row['label']}) {verdict}: rank correlation {row['rho']:+.2f} over {row['n']}"
                )
        lines.append(line)
    for f in findings:
        if f.number != 1 and lines:
            f.evidence.append("instruments — " + " | ".join(lines))


# ---------------------------------------------------------------------------------------------- tables


def _runs_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
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


def _autoencoder_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    """Reconstruction metrics, then the ceiling (reconstructions scored by the probe) with intervals where measured."""
    names = sorted(
        k for k in {k for a in data.autoencoders for k in a["metrics"]} if not k.startswith(cmp.CEILING_PREFIX)
    )
    ceil_cols = [
        c for c in CEILING_COLUMNS if any(f"{cmp.CEILING_PREFIX}{c}" in a["metrics"] for a in data.autoencoders)
    ]

    def ceiling_cell(a: dict[str, Any], metric: str) -> str:
        rec = {"metrics": {k[len(cmp.CEILING_PREFIX) :]: v for k, v in a["metrics"].items()}}
        iv = cmp.interval(rec, metric)
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


def _ceiling_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    """Per objective: its main autoencoder's ceiling and its best model's value, and whether the model is capped."""
    rows = []
    for obj in data.objectives:
        ceil = cmp.ceiling(data, obj)
        if ceil is None:
            continue
        recs = [r for r in data.records if r["objective"] == obj and r["autoencoder"] == ceil["autoencoder"]]
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
                    fmt(cmp.value(ceil, metric)) + _iv_text(cmp.interval(ceil, metric)),
                    fmt(cmp.value(best, metric)) + _iv_text(cmp.interval(best, metric)),
                    f"{best['size']} @ {best['train_flops']:.3g} FLOPs ({cmp.describe_setting(cmp.setting(best))})",
                    verdict,
                ]
            )
    return ["objective", "autoencoder", "metric", "ceiling", "best model", "which", "verdict"], rows


CEILING_FINDINGS = {2: "prompt_acc", 3: "fd_probe"}  # prompt following (2), image quality (3)


def _with_ceiling_evidence(findings: list[fnd.Finding], data: cmp.StudyData) -> list[fnd.Finding]:
    """Findings about prompt following or quality say where a paradigm's best model stands against its
    autoencoder's ceiling: a paradigm capped by its autoencoder measures the autoencoder there."""
    rows = _ceiling_table(data)[1]
    for f in findings:
        metric = CEILING_FINDINGS.get(f.number)
        f.evidence += [
            f"ceiling: {obj} best {best} vs its autoencoder {ae}'s reconstructions {ceil} — {verdict}"
            for obj, ae, m, ceil, best, _which, verdict in rows
            if m == metric
        ]
    return findings


def _iv_text(iv: tuple[float, float] | None) -> str:
    return f" {fmt_interval(iv)}" if iv else ""


def _fit_table(fits: dict[str, PowerLawFit], errors: dict[str, str]) -> tuple[list[str], list[list[str]]]:
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


def _residual_table(fits: dict[str, PowerLawFit]) -> tuple[list[str], list[list[str]]]:
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


def _crossover_table(crossovers: dict[tuple[str, str], Crossover]) -> tuple[list[str], list[list[str]]]:
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


def _instrument_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
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
            f"{following} {fmt(real[following])} {fmt_interval(cmp.interval({'metrics': real}, following))}"
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


def _agreement_table(a: Analysis) -> tuple[list[str], list[list[str]]]:
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


def _deciders_text(a: Analysis) -> str:
    parts = [d.describe() for d in a.deciders.values() if d]
    return "; ".join(parts) if parts else "no instrument scored these records"


def _rec_table(recs: list[fnd.Recommendation]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in recs:
        tie = f" (tie: {', '.join(r.tie_with)})" if r.tie_with else ""
        win = "not measured" if r.winner is None else r.winner + tie
        rows.append([f"{r.budget:.3g}", r.criterion, win, r.detail])
    if not rows:
        rows = [["—", "anything", "not measured", "no evaluation records: nothing to compare"]]
    return ["budget (training FLOPs)", "best for", "paradigm", "numbers (best model per paradigm)"], rows


def _holdout_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    """Prompt following on test prompts vs prompts naming held-out attribute combinations (compositional
    generalisation, which no anchor measures), at each main-grid run's last milestone, primary setting."""
    last: dict[str, dict[str, Any]] = {}
    for r in cmp.main_grid_records(data):
        if r["run"] not in last or r["milestone"] > last[r["run"]]["milestone"]:
            last[r["run"]] = r

    def cell(r, m):
        v = cmp.value(r, m)
        return "—" if v is None else f"{fmt(v)} {fmt_interval(cmp.interval(r, m))}"

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


def _settings_table(data: cmp.StudyData) -> tuple[list[str], list[list[str]]]:
    main = data.main_autoencoders
    return (
        ["objective", "primary sampling setting", "main autoencoder"],
        [[o, cmp.describe_setting(s), main.get(o, "—")] for o, s in sorted(data.settings.items())],
    )


# ---------------------------------------------------------------------------------------------- HTML


def _calibration_text(table: dict[str, Any] | None) -> str:
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


def _calibration_html(table: dict[str, Any] | None) -> str:
    text = f"<p>{_e(_calibration_text(table))}</p>"
    if table and table.get("findings"):
        text += _html_table(*calibration.table_rows(table))
    return text


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
 color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
th,td{border:1px solid #d0d0d0;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f5}tr.failed td{background:#fdecea}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444;margin-top:.3em}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;border-radius:4px}
.v{font-weight:600;padding:.1em .45em;border-radius:3px;white-space:nowrap}
.confirmed{background:#d9f2dd;color:#1b5e20}.not-confirmed{background:#fbdada;color:#8e1b1b}
.inconclusive{background:#eee;color:#444}.skip{color:#8a6d00}
.samples{display:flex;flex-wrap:wrap;gap:1.2em}.samples figure{margin:0;width:360px}
.samples img{width:100%;image-rendering:pixelated}
code{background:#f3f3f5;padding:0 .25em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _html_table(head: list[str], rows: list[list[str]], failed_col: int | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cls = ' class="failed"' if failed_col is not None and row[failed_col] in ("failed", "blocked") else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return "\n".join(out) + "</table>"


def _verdict(v: str) -> str:
    return f'<span class="v {v.replace(" ", "-")}">{_e(v)}</span>'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _html_summary(a: Analysis) -> list[str]:
    """The title, the verdicts, the recommendation and test vs held-out prompt following."""
    d = a.data
    p = []
    p.append(
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>synthscale report — {_e(d.path.name)}"
        f"</title><style>{_CSS}</style></head><body>"
    )
    p.append(f"<h1>synthscale report: {_e(d.name)}</h1>")
    p.append(
        f"<p>Study folder <code>{_e(d.path)}</code>; generated {_e(time.strftime('%Y-%m-%d %H:%M'))}. "
        f"{len(d.runs)} runs, {len(d.records)} evaluation records, {len(d.autoencoders)} autoencoders.</p>"
    )
    if d.meta.get("notes"):
        p.append(f'<p class="banner">{_e(d.meta["notes"])}</p>')
    ctl = controls.report_section(d)
    if ctl.mismatch:
        p.append(f'<p class="banner">Not token-matched: {_e(ctl.mismatch)}.</p>')
    p.append(
        "<h2>Findings on this run</h2><table><tr><th>#</th><th>claim (Kilian et al. 2024)</th><th>verdict</th></tr>"
    )
    for f in a.findings:
        p.append(f"<tr><td>{f.number}</td><td>{_e(f.claim)}</td><td>{_verdict(f.verdict)}</td></tr>")
    p.append(
        "</table><p>Each verdict comes from a rule written in <code>synthscale/study/findings.py</code>, "
        "stated with its evidence below.</p>"
    )
    p.append(
        "<h2>Recommendation</h2><p>At each measured budget, the paradigm with the best value over every model "
        "and sampling setting trained to it; ties are within the measured 95 % intervals (or 10 % where a "
        "number has none).</p>" + _html_table(*_rec_table(a.recommendations))
    )
    p.append(
        "<h2>Comparison controls</h2>"
        + _html_table(ctl.head, ctl.rows)
        + "".join(f"<p>{_e(n)}</p>" for n in ctl.notes)
        + _html_table(ctl.noise_head, ctl.noise_rows)
    )
    head, rows = _holdout_table(d)
    p.append(
        "<h2>Prompt following: test vs held-out combinations</h2><p>Whole-prompt accuracy on test prompts and on "
        "prompts naming attribute combinations held out of training (compositional generalisation), each with its "
        "bootstrap interval, and the held-out gap (held-out − test) with its own; each main-grid run at its last "
        "milestone.</p>"
        + (_html_table(head, rows) if rows else '<p class="skip">Not measured: no record scored held-out prompts.</p>')
    )
    return p


def _html_instruments(a: Analysis) -> list[str]:
    """What scored the images, their ceilings and sanity, and each autoencoder's ceiling."""
    d = a.data
    p = []
    p.append(
        "<h2>Instruments</h2><p>What scored the images, and what real images score with the same instrument: "
        "the ceiling (real test images with their own captions) and the real-vs-real distance a generator cannot "
        "beat; corrupted copies of the same val images must lie far above it (sanity, ≥ 2×). The findings decide "
        f"with: {_e(_deciders_text(a))} (exact labels first, pretrained next, in-domain otherwise).</p>"
        + _html_table(*_instrument_table(a))
    )
    if any(a.agreement.values()):
        p.append(
            "<p>Do the other instruments rank the records as the deciding one does?</p>"
            + _html_table(*_agreement_table(a))
        )
    ceilings = _ceiling_table(d)
    if ceilings[1]:
        p.append(f"<h3>Autoencoder ceilings</h3><p>{_e(CEILING_TEXT)}</p>" + _html_table(*ceilings))
    return p


def _html_grid(a: Analysis) -> list[str]:
    """The runs, the autoencoders with their reconstructions, and each objective's primary setting."""
    d = a.data
    p = []
    p.append("<h2>The grid</h2>" + _html_table(*_runs_table(d), failed_col=7))
    if d.autoencoders:
        p.append(
            "<h3>Autoencoders</h3><p>Reconstruction metrics on held-out images; ceiling columns: the "
            "reconstructions of the evaluation images scored by the attribute probe (95 % intervals).</p>"
            + _html_table(*_autoencoder_table(d))
        )
    if a.reconstructions:
        p.append(
            "<div class=samples>"
            + "".join(
                f"<figure>{_img(Path(r['path']).read_bytes(), r['run'])}<figcaption>{_e(r['caption'] or r['run'])}"
                f"</figcaption></figure>"
                for r in a.reconstructions
            )
            + "</div>"
        )
    p.append(
        "<h3>Sampling setting per objective</h3><p>Figures and fits use each objective's primary setting: "
        "the one evaluated at the most milestones.</p>" + _html_table(*_settings_table(d))
    )
    return p


def _html_figures(a: Analysis) -> list[str]:
    """The figures and the sample grids at matched compute."""
    p = []
    p.append("<h2>Figures</h2>")
    for pl in a.plots:
        if pl.png is None:
            p.append(f'<h3>{_e(pl.title)}</h3><p class="skip">Skipped: {_e(pl.note)}.</p>')
        else:
            p.append(
                f"<h3>{_e(pl.title)}</h3><figure>{_img(pl.png, pl.title)}<figcaption>{_e(pl.caption)}"
                f"</figcaption></figure>"
            )
    p.append("<h3>Samples at matched training compute</h3>")
    if a.samples:
        p.append(f"<p>{_e(a.samples_note)}.</p><div class=samples>")
        for g in a.samples:
            p.append(
                f"<figure>{_img(Path(g['path']).read_bytes(), g['label'])}<figcaption>{_e(g['label'])}"
                f"</figcaption></figure>"
            )
        p.append("</div>")
    else:
        p.append(f'<p class="skip">Skipped: {_e(a.samples_note)}.</p>')
    return p


def _html_fits(a: Analysis) -> list[str]:
    """The loss and quality fits, their crossovers and residuals."""
    p = []
    p.append(
        "<h2>Scaling fits</h2><h3>Loss: L(C) = E + A·C<sup>−α</sup></h3>"
        "<p>Per objective, fitted to every milestone of every main-grid run (Chinchilla's loss and optimiser: "
        "summed Huber, δ = 10<sup>−3</sup>, on log residuals; L-BFGS-B from the 8 best of an 84-point grid of "
        "starts); 95 % percentile bootstrap intervals that resample whole runs (milestones of one run share its "
        "noise), each refit screening the same grid; the hold-out column refits without the largest-compute "
        "fifth of the points and predicts them.</p>" + _html_table(*_fit_table(a.loss_fits, a.loss_errors))
    )
    p.append(
        f"<h3>{_e(a.quality_metric)} (descriptive)</h3><p>The same functional form fitted to every milestone's FD; a "
        "description of the trend, not a law.</p>" + _html_table(*_fit_table(a.fd_fits, a.fd_errors))
    )
    if a.crossovers:
        p.append(
            "<h3>Where the FD curves cross</h3><p>Within the training compute both objectives were measured on; "
            "the interval pairs bootstrap refits.</p>" + _html_table(*_crossover_table(a.crossovers))
        )
    p.append(
        "<details><summary>Residuals and held-out predictions</summary>"
        + _html_table(*_residual_table(a.loss_fits))
        + "</details>"
    )
    return p


def _html_details(a: Analysis) -> list[str]:
    """Each finding's rule and evidence, the rules' calibration and the conventions."""
    p = []
    p.append("<h2>Findings in detail</h2>")
    for f in a.findings:
        p.append(
            f"<h3>{f.number}. {_e(f.claim)} {_verdict(f.verdict)}</h3><p><b>Rule.</b> {_e(f.rule)}</p><ul>"
            + "".join(f"<li>{_e(x)}</li>" for x in f.evidence)
            + "</ul>"
        )
    p.append("<h2>Decision rules: calibration</h2>" + _calibration_html(a.calibration))
    p.append(
        "<h2>Conventions</h2><p>FLOPs are analytic counts, 2 per multiply-add; training = 3 × forward; "
        "sampling FLOPs per image include classifier-free guidance's second pass. Quality is a Fréchet "
        "distance and KID over an instrument's image features, each with a 95 % interval from a bootstrap over the "
        "generated images; prompt following is an instrument's image–caption agreement on test prompts (held-out "
        "attribute combinations apart) with 95 % bootstrap bounds over prompts "
        f"({_e(_deciders_text(a))}; see Instruments). Records written before these intervals existed have none: a "
        "rule then assumes ±10 % for FD and says so. Loss is each objective's own validation loss and is never "
        "compared across objectives.</p></body></html>"
    )
    return p


def render_html(a: Analysis) -> str:
    sections = (_html_summary, _html_instruments, _html_grid, _html_figures, _html_fits, _html_details)
    return "\n".join(part for section in sections for part in section(a))


# ---------------------------------------------------------------------------------------------- Markdown


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(a: Analysis, figure_files: dict[str, str], sample_files: list[str]) -> str:
    d = a.data
    m = [f"# synthscale report: {d.name}", ""]
    if d.meta.get("notes"):
        m += [f"> **{d.meta['notes']}**", ""]
    ctl = controls.report_section(d)
    if ctl.mismatch:
        m += [f"> **Not token-matched: {ctl.mismatch}.**", ""]
    m += [
        (
            f"{len(d.runs)} runs, {len(d.records)} evaluation records, {len(d.autoencoders)} autoencoders. "
            "The HTML report beside this file has every figure embedded."
        ),
        "",
        "## Findings on this run",
        "",
    ]
    m.append(
        _md_table(
            ["#", "claim", "verdict", "evidence"],
            [[str(f.number), f.claim, f"**{f.verdict}**", " · ".join(f.evidence)] for f in a.findings],
        )
    )
    m += [
        "",
        "## Recommendation",
        "",
        _md_table(*_rec_table(a.recommendations)),
        "",
        "## Comparison controls",
        "",
        _md_table(ctl.head, ctl.rows),
        "",
        *[line for n in ctl.notes for line in (n, "")],
        _md_table(ctl.noise_head, ctl.noise_rows),
        "",
        "## Prompt following: test vs held-out combinations",
        "",
        _md_table(*_holdout_table(d)) if _holdout_table(d)[1] else "Not measured: no record scored held-out prompts.",
        "",
    ]
    ceilings = _ceiling_table(d)
    if ceilings[1]:
        m += ["### Autoencoder ceilings", "", CEILING_TEXT, "", _md_table(*ceilings), ""]
    m += [
        "## The grid",
        "",
        _md_table(*_runs_table(d)),
        "",
    ]
    if d.autoencoders:
        m += [_md_table(*_autoencoder_table(d)), ""]
    m += [
        _md_table(*_settings_table(d)),
        "",
        "## Instruments",
        "",
        f"The findings decide with: {_deciders_text(a)} (exact labels first, pretrained next, in-domain otherwise). "
        "Real images scored by the same instruments (ceiling, real-vs-real distance, sanity):",
        "",
        _md_table(*_instrument_table(a)),
        "",
    ]
    if any(a.agreement.values()):
        m += [_md_table(*_agreement_table(a)), ""]
    m += ["## Figures", ""]
    for pl in a.plots:
        if pl.png is None:
            m += [f"**{pl.title}** — skipped: {pl.note}.", ""]
        else:
            m += [f"![{pl.title}]({figure_files[pl.key]})", "", f"*{pl.title}.* {pl.caption}", ""]
    if a.samples:
        m += [f"**Samples at matched training compute** ({a.samples_note}):", ""]
        m += [f"![{g['label']}]({f}) {g['label']}  " for g, f in zip(a.samples, sample_files)] + [""]
    else:
        m += [f"**Samples** — skipped: {a.samples_note}.", ""]
    m += [
        "## Scaling fits",
        "",
        "Loss, L(C) = E + A·C^−α over every milestone of every main-grid run (95 % intervals: bootstrap over runs):",
        "",
        _md_table(*_fit_table(a.loss_fits, a.loss_errors)),
        "",
        f"{a.quality_metric} (descriptive):",
        "",
        _md_table(*_fit_table(a.fd_fits, a.fd_errors)),
        "",
    ]
    if a.crossovers:
        m += [_md_table(*_crossover_table(a.crossovers)), ""]
    m += ["## Decision rules", ""] + [f"{f.number}. {f.rule}" for f in a.findings] + [""]
    m += [_calibration_text(a.calibration), ""]
    if a.calibration and a.calibration.get("findings"):
        m += [_md_table(*calibration.table_rows(a.calibration)), ""]
    return "\n".join(m)


# ---------------------------------------------------------------------------------------------- entry point


def build_report(
    study_dir: str | Path, out_dir: str | Path | None = None, n_boot: int = 200, seed: int = 0
) -> dict[str, Path]:
    """Analyse a study and write `report.html` (self-contained) and `report.md` (+ figure PNGs) into out_dir
    (default STUDY_DIR/report). Returns {"html": path, "markdown": path}."""
    out = Path(out_dir) if out_dir is not None else Path(study_dir) / "report"
    a = analyse(study_dir, n_boot=n_boot, seed=seed)
    figure_files = {}
    for pl in a.plots:
        if pl.png is not None:
            atomic.write_bytes(out / "figures" / f"{pl.key}.png", pl.png)
            figure_files[pl.key] = f"figures/{pl.key}.png"
    sample_files = [os.path.relpath(g["path"], out) for g in a.samples]
    html_path, md_path = out / "report.html", out / "report.md"
    atomic.write_text(html_path, render_html(a))
    atomic.write_text(md_path, render_markdown(a, figure_files, sample_files))
    return {"html": html_path, "markdown": md_path}
