"""Attribute frequencies per split: a quick check that a dataset config holds what it should."""

from __future__ import annotations

from collections import Counter

from synthscale.config import DataConfig
from synthscale.data import get_dataset


def attribute_stats(cfg: DataConfig, split: str, limit: int = 2000) -> dict[str, dict[str, int]]:
    ds = get_dataset(cfg, split)
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    counts: dict[str, Counter] = {
        k: Counter() for k in ("task", "count", "relation", "shape", "colour", "size", "row", "col", "colour×shape")
    }
    for i in range(n):
        a = ds[i]["attributes"]
        counts["task"][a["task"]] += 1
        counts["count"][str(a["count"])] += 1
        if a["relation"]:
            counts["relation"][a["relation"]] += 1
        for o in a["objects"]:
            for key in ("shape", "colour", "size", "row", "col"):
                counts[key][str(o[key])] += 1
            counts["colour×shape"][f"{o['colour']} {o['shape']}"] += 1
    return {"items": {"counted": n, "total": len(ds)}, **{k: dict(sorted(v.items())) for k, v in counts.items()}}


def format_stats(stats: dict[str, dict]) -> str:
    lines = []
    for split, s in stats.items():
        lines.append(f"== {split}: {s['items']['counted']} of {s['items']['total']} items counted")
        for key, freq in s.items():
            if key in ("items", "colour×shape"):
                continue
            total = sum(freq.values()) or 1
            cells = "  ".join(f"{k}: {v} ({100 * v / total:.0f}%)" for k, v in freq.items())
            lines.append(f"  {key:<9} {cells}")
        lines.append(f"  colour×shape pairs present: {len(s['colour×shape'])}")
    return "\n".join(lines)
