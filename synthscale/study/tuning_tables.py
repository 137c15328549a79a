"""The report's tables of what was tuned on validation data: the CFG scale (and temperature) chosen per run and
milestone, and each objective's learning-rate sweep. Both read only what the study stored; test prompts never
enter either choice."""

from __future__ import annotations

import json
from typing import Any

from synthscale.study import compare as cmp

Table = tuple[list[str], list[list[str]]]


def _num(x: Any, fmt: str = ".3g") -> str:
    return "—" if x is None else format(x, fmt)


def cfg_choice_table(data: cmp.StudyData) -> tuple[str, Table]:
    """(how they were chosen, rows): per main-grid run and milestone at its primary setting, the CFG scale and
    temperature chosen on validation prompts, the candidates and the chosen one's validation scores. Empty rows
    when no record's setting was chosen on validation."""
    rows, rule = [], ""
    chosen = [r for r in cmp.main_grid_records(data) if (r["instruments"].get("cfg_selection") or {}).get("scores")]
    for r in sorted(chosen, key=lambda r: (data.objectives.index(r["objective"]), r["params"], r["train_flops"])):
        sel = r["instruments"]["cfg_selection"]
        rule = rule or f"{sel['by']}; {sel['n_val']} validation prompts, {sel['weights']} weights, {sel['steps']} steps"
        won = sel["chosen"]
        scores = next(
            s for s in sel["scores"] if (s["cfg_scale"], s["temperature"]) == (won["cfg_scale"], won["temperature"])
        )
        metrics = [k for k in scores if k not in ("cfg_scale", "temperature", "badness")]
        cand = sel["candidates"]
        temps = [t for t in cand["temperature"] if t is not None]
        rows.append(
            [
                r["objective"],
                r["size"],
                f"{r['train_flops']:.3g}",
                f"{won['cfg_scale']:g}",
                "own" if won["temperature"] is None else f"{won['temperature']:g}",
                ", ".join(f"{k} {_num(scores[k])}" for k in metrics),
                ", ".join(f"{c:g}" for c in cand["cfg_scale"])
                + (f" × T {', '.join(f'{t:g}' for t in temps)}" if temps else ""),
            ]
        )
    head = ["objective", "size", "training FLOPs", "CFG chosen", "temperature", "validation scores", "candidates"]
    return rule, (head, rows)


def lr_sweep_table(data: cmp.StudyData) -> tuple[str, Table]:
    """(where the sweep trained and how it chose, rows): per swept objective, each candidate LR's validation loss
    and which was chosen. Empty rows when the study swept no LR."""
    try:
        sweeps = json.loads(data.meta.get("lr_sweep") or "{}")
    except ValueError:
        sweeps = {}
    rows, where = [], ""
    for obj, s in sweeps.items():
        where = where or (
            f"each candidate trained at {s['size']}, data size {s['data_size']}, {s['budget_flops']:.3g} FLOPs; "
            f"chosen by {s.get('by', 'the lowest validation loss')}"
        )
        if s.get("chosen_lr") is None:
            rows.append([obj, ", ".join(f"{lr:g}" for lr in s["candidates"]), "not run", ""])
            continue
        for c in s["candidates"]:
            loss = "diverged" if c.get("diverged") else _num(c["val_loss"], ".4f")
            if c.get("per_seed"):  # a sweep over seeds: the mean, then each seed's
                seeds = ", ".join(f"{s}: {_num(v, '.4f')}" for s, v in zip(c["seeds"], c["per_seed"]))
                loss += f" (mean; seed {seeds})"
            mark = (
                "✓ chosen" + (" (at the edge of the candidates)" if s.get("edge") else "")
                if c["lr"] == s["chosen_lr"]
                else ""
            )
            rows.append([obj, f"{c['lr']:g}", loss, mark])
    return where, (["objective", "learning rate", "validation loss", ""], rows)
