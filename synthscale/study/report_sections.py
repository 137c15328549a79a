"""The report's sections, built once as a `report_doc.Document` from an analysis (study/report.py); report_doc
writes it as HTML and as Markdown."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from synthscale.study import calibration, controls
from synthscale.study import report_tables as tb
from synthscale.study.report_doc import Bullets, Details, Document, Figure, Gallery, Heading, Image, Para, Table
from synthscale.study.tuning_tables import cfg_choice_table, lr_sweep_table

if TYPE_CHECKING:
    from synthscale.study.report import Analysis


def _summary(a: Analysis, out_dir: Path) -> list:
    """Where the data came from, the verdicts, the recommendation, the sampling cost, held-out prompts."""
    d = a.data
    out: list = [
        Para(
            f"Study folder {d.path}; generated {time.strftime('%Y-%m-%d %H:%M')}. {len(d.runs)} runs, "
            f"{len(d.records)} evaluation records, {len(d.autoencoders)} autoencoders. The HTML report embeds every "
            "image; the Markdown one links them as files beside it."
        )
    ]
    if d.meta.get("notes"):
        out.append(Para(d.meta["notes"], "banner"))
    ctl = controls.report_section(d)
    if ctl.mismatch:
        out.append(Para(f"Not token-matched: {ctl.mismatch}.", "banner"))
    out += [
        Heading("Findings on this run"),
        Table(
            ["#", "claim (Kilian et al. 2024)", "verdict"],
            [[str(f.number), f.claim, f.verdict] for f in a.findings],
            verdict_col=2,
        ),
        Para(
            "Each verdict comes from a rule written in synthscale/study/findings.py, stated with its evidence "
            "under Findings in detail."
        ),
        Heading("Recommendation"),
        Para(
            "At each measured budget, each paradigm's best model by the rule the findings use: the main-grid model "
            "(best over sizes) at the paradigm's primary sampling setting (see How measured); the best paradigm "
            "is named, and ties are within the measured 95 % intervals (or 10 % where a number has none)."
        ),
        Table(*tb.rec_table(a.recommendations)),
        Heading("Comparison controls"),
        Table(ctl.head, ctl.rows),
        *[Para(n) for n in ctl.notes],
        Table(ctl.noise_head, ctl.noise_rows),
        Heading("Sampling cost: generator and decoder"),
        Para(
            "What one image costs at each main-grid run's last milestone and primary setting. The autoencoder's "
            "decoder turns latents into pixels after sampling; it is counted and timed apart from the generator "
            "and included in finding 4. Records written before the decoder was counted say so."
        ),
        Table(*tb.cost_table(d)),
        Heading("Prompt following: test vs held-out combinations"),
    ]
    head, rows = tb.holdout_table(d)
    if rows:
        out += [
            Para(
                "Whole-prompt accuracy on test prompts and on prompts naming attribute combinations held out of "
                "training (compositional generalisation), each with its bootstrap interval, and the held-out gap "
                "(held-out − test) with its own; each main-grid run at its last milestone."
            ),
            Table(head, rows),
        ]
    else:
        out.append(Para("Not measured: no record scored held-out prompts.", "skip"))
    return out


def _measurement(a: Analysis, out_dir: Path) -> list:
    """How the numbers were measured, the instruments' real-data ceilings and sanity, and the autoencoders'."""
    out: list = [
        Heading("How measured"),
        Para("The settings behind every figure and finding; the figure captions say what each figure shows."),
        Table(*tb.how_measured_table(a)),
        Heading("Instruments"),
        Para(
            "What scored the images, and what real images score with the same instrument: the ceiling (real test "
            "images with their own captions) and the real-vs-real distance a generator cannot beat; corrupted "
            "copies of the same val images must lie far above it (sanity, ≥ 2×). The findings decide with: "
            f"{tb.deciders_text(a)} (exact labels first, pretrained next, in-domain otherwise)."
        ),
        Table(*tb.instrument_table(a)),
    ]
    if any(a.agreement.values()):
        out += [
            Para("Do the other instruments rank the records as the deciding one does?"),
            Table(*tb.agreement_table(a)),
        ]
    ceilings = tb.ceiling_table(a.data)
    if ceilings[1]:
        out += [Heading("Autoencoder ceilings", 3), Para(tb.CEILING_TEXT), Table(*ceilings)]
    return out


def _grid(a: Analysis, out_dir: Path) -> list:
    """The runs and the autoencoders with their reconstructions."""
    d = a.data
    out: list = [Heading("The grid"), Table(*tb.runs_table(d), failed_col=7)]
    if d.autoencoders:
        out += [
            Heading("Autoencoders", 3),
            Para(
                "Reconstruction metrics on held-out images; ceiling columns: the reconstructions of the evaluation "
                "images scored by the attribute probe (95 % intervals)."
            ),
            Table(*tb.autoencoder_table(d)),
        ]
    if a.reconstructions:
        out.append(
            Gallery(
                [
                    Image(r["run"], r["caption"] or r["run"], os.path.relpath(r["path"], out_dir), path=r["path"])
                    for r in a.reconstructions
                ]
            )
        )
    for title, (text, table) in _tuning_tables(d):
        out += [Heading(title, 3), Para(text), Table(*table)]
    return out


def _tuning_tables(d) -> list:
    """The tuned-on-validation tables that have rows: CFG/temperature per milestone, the LR sweep."""
    tables = [("CFG/temperature chosen on validation", cfg_choice_table(d)), ("Learning-rate sweep", lr_sweep_table(d))]
    return [(title, t) for title, t in tables if t[1][1]]


def _figures(a: Analysis, out_dir: Path) -> list:
    out: list = [Heading("Figures")]
    for pl in a.plots:
        out.append(Heading(pl.title, 3))
        if pl.png is None:
            out.append(Para(f"Skipped: {pl.note}.", "skip"))
        else:
            out.append(Figure(Image(pl.title, pl.caption, f"figures/{pl.key}.png", png=pl.png)))
    out.append(Heading("Samples at matched training compute", 3))
    if a.samples:
        out += [
            Para(f"{a.samples_note[0].upper()}{a.samples_note[1:]}."),
            Gallery(
                [Image(g["label"], g["label"], os.path.relpath(g["path"], out_dir), path=g["path"]) for g in a.samples]
            ),
        ]
    else:
        out.append(Para(f"Skipped: {a.samples_note}.", "skip"))
    return out


def _fits(a: Analysis, out_dir: Path) -> list:
    out: list = [
        Heading("Scaling fits"),
        Heading("Loss: L(C) = E + A·C^−α", 3),
        Para(
            "Per objective, fitted to every milestone of every main-grid run (Chinchilla's loss and optimiser: "
            "summed Huber, δ = 10⁻³, on log residuals; L-BFGS-B from the 8 best of an 84-point grid of starts); "
            "95 % percentile bootstrap intervals that resample whole runs (milestones of one run share its noise), "
            "each refit screening the same grid; the hold-out column refits without the largest-compute fifth of "
            "the points and predicts them."
        ),
        Table(*tb.fit_table(a.loss_fits, a.loss_errors)),
        Heading(f"{a.quality_metric} (descriptive)", 3),
        Para(
            "The same functional form fitted to every milestone's Fréchet distance: a description of the trend, "
            "not a law."
        ),
        Table(*tb.fit_table(a.fd_fits, a.fd_errors)),
    ]
    if a.crossovers:
        out += [
            Heading("Where the curves cross", 3),
            Para("Within the training compute both objectives were measured on; the interval pairs bootstrap refits."),
            Table(*tb.crossover_table(a.crossovers)),
        ]
    out.append(Details("Residuals and held-out predictions", [Table(*tb.residual_table(a.loss_fits))]))
    return out


def _details(a: Analysis, out_dir: Path) -> list:
    """Each finding's rule and evidence, the rules' calibration and the conventions."""
    out: list = [Heading("Findings in detail")]
    for f in a.findings:
        out += [Heading(f"{f.number}. {f.claim}", 3, f.verdict), Para(f"Rule. {f.rule}"), Bullets(list(f.evidence))]
    out += [Heading("Decision rules: calibration"), Para(tb.calibration_text(a.calibration))]
    if a.calibration and a.calibration.get("findings"):
        out.append(Table(*calibration.table_rows(a.calibration)))
    out += [
        Heading("Conventions"),
        Para(
            "FLOPs are analytic counts, 2 per multiply-add; training = 3 × forward; sampling FLOPs per image "
            "include classifier-free guidance's second pass, and the decoder's are a separate column. Quality is "
            "a Fréchet distance over an instrument's image features, with a 95 % interval from a bootstrap over "
            "the generated images; prompt following is an instrument's image–caption agreement on test prompts "
            "(held-out attribute combinations apart) with 95 % bootstrap bounds over prompts "
            f"({tb.deciders_text(a)}; see Instruments). Records written before these intervals existed have none: "
            "a rule then assumes ±10 % for the distance and says so. Loss is each objective's own validation loss "
            "and is never compared across objectives."
        ),
    ]
    return out


def build_document(a: Analysis, out_dir: str | Path) -> Document:
    """The whole report, once; `report_doc.to_html` / `to_markdown` write it. Image links (Markdown) are relative
    to `out_dir`, where the report is written."""
    doc = Document(f"synthscale report: {a.data.name}")
    for section in (_summary, _measurement, _grid, _figures, _fits, _details):
        doc.add(*section(a, Path(out_dir)))
    return doc
