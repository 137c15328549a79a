"""Which instrument decides a study's findings, and what the others say.

Records name the instruments that scored them (`instruments.scored_by`: kind → card with its name, precedence,
quality and prompt-following metric, ceiling). For each role — image quality, prompt following — the deciding
instrument is the one with the lowest precedence among those the records carry: exact labels (the attribute
probe) first, pretrained (Inception, CLIP) next, the in-domain encoder otherwise. The findings and the report take
the decider's metric name from here and never branch on an instrument's name; the others are reported beside it
with their rank agreement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ROLES = {"quality": "image quality", "following": "prompt following"}
# records written before instruments named themselves: the attribute probe scored them
_LEGACY_PROBE = {
    "name": "probe",
    "kind": "probe",
    "label": "attribute probe",
    "precedence": 0,
    "quality": "fd_probe",
    "quality_check": "kid",
    "following": "prompt_acc",
}


@dataclass(frozen=True)
class Decider:
    role: str  # "quality" | "following"
    metric: str  # e.g. "fd_encoder", "rprec_encoder", "fd_probe", "prompt_acc"
    name: str  # the instrument, "<kind>:<content hash>"
    kind: str
    label: str  # e.g. "in-domain encoder"

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)

    def describe(self) -> str:
        """e.g. 'prompt following: R-precision, in-domain encoder a1b2c3'."""
        short = self.name.partition(":")[2][:6]
        return f"{ROLES[self.role]}: {metric_name(self.metric)}, {self.label}{' ' + short if short else ''}"


def lower_is_better(metric: str) -> bool:
    return metric in ("loss", "latency_s") or metric.startswith(("fd_", "kid"))


def metric_name(metric: str) -> str:
    """The measure a metric name stands for, without its instrument: fd_encoder → 'Fréchet distance'."""
    for prefix, name in (
        ("fd_", "Fréchet distance"),
        ("kid", "KID"),
        ("rprec_", "R-precision"),
        ("clipscore_", "CLIP score"),
        ("prompt_acc", "whole-prompt accuracy"),
    ):
        if metric.startswith(prefix):
            return name
    return metric


def axis_label(metric: str, cards: dict[str, dict] | None = None) -> str:
    """A figure axis: the measure, the instrument and the better direction, e.g. 'R-precision (in-domain
    encoder) ↑'."""
    card = next((c for c in (cards or {}).values() if metric in (c.get("quality"), c.get("following"))), None)
    label = card["label"] if card else _label_from_suffix(metric)
    arrow = "↓" if lower_is_better(metric) else "↑"
    return f"{metric_name(metric)} ({label}) {arrow}" if label else f"{metric} {arrow}"


def _label_from_suffix(metric: str) -> str | None:
    if metric in ("fd_probe", "kid", "prompt_acc"):
        return "attribute probe"
    from synthscale.evaluate.instruments import _registry

    kind = metric.rsplit("_", 1)[-1]
    cls = _registry().get(kind)
    return cls.label if cls else None


def instrument_cards(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """kind → the card (name, label, precedence, quality, following, ceiling) of every instrument in the records;
    the newest card per kind wins (a study re-scored with a retrained instrument shows the one its records use)."""
    cards: dict[str, dict[str, Any]] = {}
    for r in records:
        scored = (r.get("instruments") or {}).get("scored_by")
        if scored:
            cards.update(scored)
        elif "fd_probe" in r.get("metrics", {}) or "prompt_acc" in r.get("metrics", {}):
            extractor = (r.get("instruments") or {}).get("extractor", "probe")
            cards.setdefault("probe", {**_LEGACY_PROBE, "name": extractor})
    return cards


def decider(records: Sequence[dict[str, Any]], role: str) -> Decider | None:
    """The instrument that decides `role` in these records (exact first, pretrained next, in-domain otherwise)."""
    able = [c for c in instrument_cards(records).values() if c.get(role)]
    if not able:
        return None
    c = min(able, key=lambda c: c["precedence"])
    return Decider(role, c[role], c["name"], c["kind"], c["label"])


def decisive_metrics(records: Sequence[dict[str, Any]]):
    """The numbers the findings decide on (`compare.DecisiveMetrics`): the deciding quality instrument's Fréchet
    distance, checked against its KID, and the deciding prompt-following instrument's score. Records without any
    instrument card: the attribute probe's names (fd_probe / kid / prompt_acc)."""
    from synthscale.study.compare import DEFAULT_METRICS, DecisiveMetrics

    q, f = decider(records, "quality"), decider(records, "following")
    check = instrument_cards(records)[q.kind].get("quality_check") if q else DEFAULT_METRICS.quality_check
    return DecisiveMetrics(
        quality=q.metric if q else DEFAULT_METRICS.quality,
        prompt=f.metric if f else DEFAULT_METRICS.prompt,
        quality_check=check,
    )


def others(records: Sequence[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """The cards of the instruments that also measure `role` but do not decide it."""
    d = decider(records, role)
    return [c for c in instrument_cards(records).values() if c.get(role) and d and c["name"] != d.name]


def agreement(records: Sequence[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """Per other instrument of `role`: Spearman's rank correlation of its metric with the decider's over the
    records that carry both, oriented so that +1 means they rank the records the same way (better with better)."""
    from scipy.stats import spearmanr

    d = decider(records, role)
    out = []
    for card in others(records, role):
        metric = card[role]
        pairs = [
            (r["metrics"][d.metric], r["metrics"][metric])
            for r in records
            if _finite(r["metrics"].get(d.metric)) and _finite(r["metrics"].get(metric))
        ]
        row: dict[str, Any] = {"instrument": card["name"], "label": card["label"], "metric": metric, "n": len(pairs)}
        if len(pairs) >= 3 and len({a for a, _ in pairs}) > 1 and len({b for _, b in pairs}) > 1:
            rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
            sign = 1 if lower_is_better(d.metric) == lower_is_better(metric) else -1
            row.update(rho=float(sign * rho), p=float(p), agree=bool(sign * rho > 0 and p < 0.05))
        else:
            row.update(rho=None, p=None, agree=None)
        out.append(row)
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
