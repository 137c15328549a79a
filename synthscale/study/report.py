"""`synthscale report STUDY_DIR`: fits, figures, findings and recommendation from a study's results store, written
as one self-contained HTML file (figures and sample grids embedded as base64) and a Markdown file with the same
content beside it (figures as PNG files next to it). Every number is computed from the stored records; nothing
is written by hand, and a study without data for a part says so in that part.

This module analyses; report_tables.py turns the analysis into tables, report_sections.py lays the sections out
once as a document, and report_doc.py writes that document as HTML and as Markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthscale import atomic
from synthscale.study import calibration, plots
from synthscale.study import compare as cmp
from synthscale.study import findings as fnd
from synthscale.study import instruments as ins
from synthscale.study.report_doc import to_html, to_markdown
from synthscale.study.report_sections import build_document
from synthscale.study.report_tables import ceiling_table
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
    per objective the grid of a main-grid model at its primary setting when there is one, of the model with the
    best `metric` there — the findings' rule for the best model (at small budgets the largest model is often the
    under-trained one)."""
    flops = {(r["run"], r["milestone"]): (r["train_flops"], r["params"]) for r in data.records}
    recs = {(r["run"], r["milestone"], r["weights"], r["steps"], r["cfg_scale"]): r for r in data.records}
    grids = []
    for a in data.artifacts:
        if a["kind"] == "samples" and (a["run"], a["milestone"]) in flops and Path(a["path"]).is_file():
            objective = next((r["objective"] for r in data.runs if r["run"] == a["run"]), None) or next(
                r["objective"] for r in data.records if r["run"] == a["run"]
            )
            if next(r["autoencoder"] for r in data.records if r["run"] == a["run"]) != data.main_autoencoders.get(
                objective
            ):
                continue  # main-grid models only, as the findings' rule for the best model
            c, n = flops[(a["run"], a["milestone"])]
            rec = recs.get((a["run"], a["milestone"], a["weights"], a["steps"], a["cfg_scale"]))
            score = rec["metrics"].get(metric) if rec else None
            grids.append(
                dict(
                    a,
                    setting=cmp.setting(rec) if rec else None,
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
        g = max(cands, key=lambda g: (g["setting"] == prim, -g["fd_probe"], g["params"]))
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


CEILING_FINDINGS = {2: "prompt_acc", 3: "fd_probe"}  # prompt following (2), image quality (3)


def _with_ceiling_evidence(findings: list[fnd.Finding], data: cmp.StudyData) -> list[fnd.Finding]:
    """Findings about prompt following or quality say where a paradigm's best model stands against its
    autoencoder's ceiling: a paradigm capped by its autoencoder measures the autoencoder there."""
    rows = ceiling_table(data)[1]
    for f in findings:
        metric = CEILING_FINDINGS.get(f.number)
        f.evidence += [
            f"ceiling: {obj} best {best} vs its autoencoder {ae}'s reconstructions {ceil} — {verdict}"
            for obj, ae, m, ceil, best, _which, verdict in rows
            if m == metric
        ]
    return findings


# ---------------------------------------------------------------------------------------------- entry point


def build_report(
    study_dir: str | Path, out_dir: str | Path | None = None, n_boot: int = 200, seed: int = 0
) -> dict[str, Path]:
    """Analyse a study and write `report.html` (self-contained) and `report.md` (+ figure PNGs) into out_dir
    (default STUDY_DIR/report). Returns {"html": path, "markdown": path}."""
    out = Path(out_dir) if out_dir is not None else Path(study_dir) / "report"
    a = analyse(study_dir, n_boot=n_boot, seed=seed)
    for pl in a.plots:  # the Markdown links them; the HTML embeds them
        if pl.png is not None:
            atomic.write_bytes(out / "figures" / f"{pl.key}.png", pl.png)
    doc = build_document(a, out)
    html_path, md_path = out / "report.html", out / "report.md"
    atomic.write_text(html_path, to_html(doc))
    atomic.write_text(md_path, to_markdown(doc))
    return {"html": html_path, "markdown": md_path}
