"""What a compute-controlled comparison holds equal, stated: the "comparison controls" table (per paradigm: image
and caption tokens, training FLOPs per example, parameters with and without embeddings and head, optimizer steps,
epochs of data, precision, learning rate, batch, CFG, sampling steps, seeds and what the latent stores per image)
and the token-parity check behind `parity: tokens`.

The same table comes from a plan (`synthscale study --dry-run`: steps planned from the budget) and from a study's
stored runs and records (the report: steps reached). Values that differ between a paradigm's runs (sizes,
budgets) are listed, separated by " / ".
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from synthscale.config import AutoencoderConfig, ConfigError, RunConfig, from_dict

HEAD = [
    "paradigm",
    "image tokens",
    "caption tokens",
    "training FLOPs / example",
    "parameters (total)",
    "non-embedding",
    "non-embedding, no head",
    "optimizer steps",
    "epochs of data",
    "precision",
    "LR",
    "batch",
    "CFG",
    "sampling steps",
    "seeds",
    "latent per image",
]


@dataclass
class RunControls:
    """One run's controlled quantities (a row of the table before its paradigm's runs are merged)."""

    objective: str
    image_tokens: int
    caption_tokens: int
    flops_per_example: float
    params: int
    params_nonembedding: int
    params_no_head: int
    steps: int | None
    epochs: float | None
    precision: str
    lr: float
    batch: int
    cfg: float | None
    sampling_steps: int | None
    seed: int
    latent: str


def _text_spec(run_cfg: RunConfig):
    """The caption token spec (the tokenizer's, or from data.caption_vocab/max_caption_tokens where it cannot be
    built here)."""
    from synthscale.data.latents import TextSpec
    from synthscale.data.text import tokenizer_for

    try:
        tok = tokenizer_for(run_cfg.data)
        return TextSpec(tok.vocab_size, tok.max_length, tok.pad_id)
    except (ConfigError, OSError):
        return TextSpec(run_cfg.data.caption_vocab, run_cfg.data.max_caption_tokens, 0)


def latent_text(latent) -> str:
    """What the latent stores per image: floats (continuous) or bits (discrete codes)."""
    if latent.kind == "continuous":
        return f"{latent.channels * latent.height * latent.width} floats"
    return f"{latent.tokens * math.log2(latent.vocab_size):.0f} bits"


def _params(objective, run_cfg: RunConfig, latent, text) -> tuple[int, int, int]:
    """(total, non-embedding, non-embedding without the output head), counted on the meta device."""
    import torch

    from synthscale.compute.flops import param_counts
    from synthscale.objectives.base import frozen_stand_in

    with torch.device("meta"):
        model = objective.build_model(run_cfg.model, latent, text, text_encoder=frozen_stand_in(run_cfg.model, text))
    counts = param_counts(model)
    head = getattr(model, "head", None)
    head_n = sum(p.numel() for p in head.parameters()) if head is not None else 0
    return counts["total"], counts["non_embedding"], counts["non_embedding"] - head_n


def run_controls(
    run_cfg: RunConfig, latent, cfg: float | None, sampling_steps: int | None, steps: int | None = None
) -> RunControls:
    """A run's controls; `steps`: optimizer steps reached (None: planned from its budget)."""
    from synthscale.objectives import get_objective

    obj, text, t = get_objective(run_cfg.objective), _text_spec(run_cfg), run_cfg.train
    per_example = obj.train_example_flops(run_cfg.model, latent, text).total
    if steps is None:
        steps = int(t.budget_flops // (per_example * t.batch_size))
    total, nonemb, nohead = _params(obj, run_cfg, latent, text)
    return RunControls(
        objective=obj.name,
        image_tokens=obj.image_tokens(run_cfg.model, latent),
        caption_tokens=text.max_length,
        flops_per_example=float(per_example),
        params=total,
        params_nonembedding=nonemb,
        params_no_head=nohead,
        steps=steps,
        epochs=steps * t.batch_size / run_cfg.data.size if steps is not None else None,
        precision=t.precision,
        lr=t.lr,
        batch=t.batch_size,
        cfg=cfg,
        sampling_steps=sampling_steps if sampling_steps is not None else obj.default_steps(latent),
        seed=run_cfg.seed,
        latent=latent_text(latent),
    )


def _distinct(values: list[Any], fmt) -> str:
    seen: list[str] = []
    for v in values:
        text = "—" if v is None else fmt(v)
        if text not in seen:
            seen.append(text)
    return " / ".join(seen)


def _span(values: list[Any], fmt) -> str:
    """Distinct values, or their range where a grid gives many (steps and epochs: sizes × budgets)."""
    present = sorted({v for v in values if v is not None})
    if len(present) <= 3:
        return _distinct(values, fmt)
    return f"{fmt(present[0])}–{fmt(present[-1])} ({len(present)} values)"


def _g(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v:.3g}"  # a string: CFG chosen on validation


def _millions(v: int) -> str:
    return f"{v / 1e6:.3g}M"


def table(runs: list[RunControls], order: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The comparison-controls table: one row per paradigm (its runs' distinct values)."""
    by_obj: dict[str, list[RunControls]] = defaultdict(list)
    for r in runs:
        by_obj[r.objective].append(r)
    names = [o for o in (order or []) if o in by_obj] + sorted(set(by_obj) - set(order or []))
    rows = []
    for o in names:
        rs = by_obj[o]
        rows.append(
            [
                o,
                _distinct([r.image_tokens for r in rs], str),
                _distinct([r.caption_tokens for r in rs], str),
                _distinct([r.flops_per_example for r in rs], _g),
                _distinct([r.params for r in rs], _millions),
                _distinct([r.params_nonembedding for r in rs], _millions),
                _distinct([r.params_no_head for r in rs], _millions),
                _span([r.steps for r in rs], str),
                _span([r.epochs for r in rs], lambda v: f"{v:.2g}"),
                _distinct([r.precision for r in rs], str),
                _distinct([r.lr for r in rs], _g),
                _distinct([r.batch for r in rs], str),
                _distinct([r.cfg for r in rs], _g),
                _distinct([r.sampling_steps for r in rs], str),
                ", ".join(str(s) for s in sorted({r.seed for r in rs})),
                _distinct([r.latent for r in rs], str),
            ]
        )
    return HEAD, rows


def token_mismatch(runs: list[RunControls]) -> str | None:
    """'flow 16, masked 64, autoregressive 64' when the paradigms see different image-token counts, else None."""
    counts: dict[str, set[int]] = defaultdict(set)
    for r in runs:
        counts[r.objective].add(r.image_tokens)
    if len({n for ns in counts.values() for n in ns}) <= 1:
        return None
    return ", ".join(f"{o} {'/'.join(str(n) for n in sorted(ns))}" for o, ns in counts.items())


# ---------------------------------------------------------------------------------------------- from a plan


def image_token_counts(runs, autoencoders) -> dict[str, str]:
    """Per objective of planned runs (`plan.RunPlan`), the image-token count(s) its model sees."""
    from synthscale.objectives import get_objective
    from synthscale.study.plan import _latent_shape

    counts: dict[str, set[int]] = defaultdict(set)
    for r in runs:
        obj = get_objective(r.run_cfg.objective)
        counts[obj.name].add(obj.image_tokens(r.run_cfg.model, _latent_shape(autoencoders[r.autoencoder][0], [])))
    return {o: "/".join(str(n) for n in sorted(ns)) for o, ns in counts.items()}


def plan_controls(plan) -> list[RunControls]:
    """Every main-grid run's controls as planned (optimizer steps from the budget)."""
    from synthscale.objectives import get_objective
    from synthscale.study.plan import _latent_shape

    ev, out = plan.study.evaluation, []
    for r in plan.runs:
        if r.ablation:
            continue
        latent = _latent_shape(plan.autoencoders[r.autoencoder][0], [])
        name = get_objective(r.run_cfg.objective).name
        out.append(run_controls(r.run_cfg, latent, ev.cfg_scale, ev.steps.get(name)))
    return out


# ---------------------------------------------------------------------------------------------- from a study


def study_controls(data) -> tuple[list[RunControls], list[str]]:
    """Every main-grid run's controls from a study's stored run and autoencoder configs, with the optimizer steps
    its records reached and the CFG and steps of its objective's primary setting; (controls, notes on runs left
    out)."""
    from synthscale.study.plan import _latent_shape

    aes = {a["name"]: a.get("config") for a in data.autoencoders}
    reached: dict[str, int] = {}
    for r in data.seed_records or data.records:
        reached[r["run"]] = max(reached.get(r["run"], 0), int(r["step"]))
    out, notes = [], []
    for run in data.runs:
        if run["autoencoder"] != data.main_autoencoders.get(run["objective"]):
            continue
        if not run.get("config") or not aes.get(run["autoencoder"]):
            notes.append(f"{run['run']}: no stored run or autoencoder config")
            continue
        try:
            run_cfg = from_dict(RunConfig, run["config"], source=f"run {run['run']}")
            latent = _latent_shape(from_dict(AutoencoderConfig, aes[run["autoencoder"]], source="autoencoder"), [])
        except (ConfigError, TypeError, ValueError) as e:
            notes.append(f"{run['run']}: {e}")
            continue
        setting = data.settings.get(run["objective"])
        cfg, steps = (setting[2], setting[1]) if setting else (None, None)
        out.append(run_controls(run_cfg, latent, cfg, steps, reached.get(run["run"])))
    return out, notes


def study_parity(data) -> str:
    """The study spec's `parity` (meta 'study' JSON; 'tokens' where not stated)."""
    try:
        spec = json.loads(data.meta.get("study", ""))
    except ValueError:
        spec = None
    return spec.get("parity", "tokens") if isinstance(spec, dict) else "tokens"


# ---------------------------------------------------------------------------------------------- the report's section


@dataclass
class ReportSection:
    """The report's "comparison controls" section: the table, the measured-vs-assumed seed noise, and the
    sentences that state what is matched and whether training noise was measured."""

    head: list[str]
    rows: list[list[str]]
    noise_head: list[str]
    noise_rows: list[list[str]]
    notes: list[str]
    mismatch: str | None  # the header's line when the paradigms see different image-token counts


def report_section(data) -> ReportSection:
    from synthscale.study import calibration
    from synthscale.study import replicates as rep

    runs, left_out = study_controls(data)
    head, rows = table(runs, data.objectives)
    noise = calibration.seed_noise(data)
    noise_head, noise_rows = calibration.noise_rows(noise)
    k = rep.seeds_per_cell(data.records)
    if rep.training_noise_measured(data.records):
        notes = [
            f"Training noise is measured: every number averages ≥ {k} seeds of its grid cell (faint points in the "
            "figures are the single seeds). Its 95 % interval is a two-level bootstrap — seeds resampled, then each "
            "seed's number redrawn from its own prompts/images interval (parametric: records keep no per-prompt "
            f"scores) — with Student's t at {k - 1} degrees of freedom, so it includes the seeds' spread."
        ]
    else:
        notes = [
            "Training noise is unmeasured: each grid cell was trained with one seed, so every interval covers only "
            "the evaluation's prompts/images, while one run's outcome can move with its seed by far more. Rule: "
            "findings on differences are at most inconclusive and the recommendation names no significant winner; "
            "set `seeds: [0, 1, 2]` in the study spec to measure it."
        ]
    notes.append(
        f"The decision rules' calibration simulated run-to-run noise of {noise.prompt_used:.2g} logit (whole-prompt "
        f"accuracy) and {noise.fd_used:.2g} log (FD) per seed: "
        + (
            "the one-sided 95 % upper limit of what this study's seeds measured (largest paradigm), never below "
            "the stored table's assumption."
            if noise.source == "measured"
            else "the stated conservative default, as this study has no replicate seeds."
        )
    )
    mismatch = token_mismatch(runs)
    parity = study_parity(data)
    if mismatch:
        notes.append(
            f"Image tokens differ between paradigms ({mismatch}; parity: {parity}): the comparison does not hold "
            "the token count equal, so a ranking may measure the token count rather than the paradigm."
        )
    elif runs:
        notes.append(f"Every paradigm sees {runs[0].image_tokens} image tokens (parity: {parity}).")
    notes += [f"Left out of the table: {n}." for n in left_out]
    header = f"image tokens differ between paradigms: {mismatch} (parity: {parity})" if mismatch else None
    return ReportSection(head, rows, noise_head, noise_rows, notes, header)
