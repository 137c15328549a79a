"""GenEval-style prompt following, read by the in-domain attribute probe.

For each generated image and the facts its prompt stated (the dataset attributes of the prompt's item), the
probe reads the scene (objects with shape, colour, size and grid cell) and each stated fact is checked:

  shape, colour, size  every stated object has it (objects are matched to what the probe sees, see below)
  position             single-object prompts: the object is in the stated cell
  relation             two-object prompts: "a left of b" holds if a's column < b's (GenEval's lenient reading:
                       any row), "above" if a's row < b's, and so on
  count                the probe sees exactly as many objects as the prompt implies (1, 2 or the number)
  prompt               all of the above that the prompt states (GenEval's whole-prompt accuracy)

Matching: stated objects are assigned to distinct seen objects so that the most facts hold (ties: raster order),
as GenEval credits a colour when some detected object of the class has it. Facts a prompt does not state are not
scored (NaN), so attribute accuracies average over the prompts that state them. Every accuracy carries a
seeded bootstrap 95 % interval over prompts.
"""

from __future__ import annotations

import inspect
import itertools
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import bootstrap

FACTS = ("shape", "colour", "size", "position", "relation", "count")
_RNG_ARG = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"  # scipy < 1.15: random_state
TASKS = ("single", "two", "count")
_OBJECT_FACTS = ("shape", "colour", "size")


def relation_holds(relation: str, a: dict, b: dict) -> bool:
    """Whether object a stands in `relation` to object b, read from their grid cells."""
    if relation == "to the left of":
        return a["col"] < b["col"]
    if relation == "to the right of":
        return a["col"] > b["col"]
    if relation == "above":
        return a["row"] < b["row"]
    if relation == "below":
        return a["row"] > b["row"]
    raise ValueError(f"unknown relation {relation!r}")


def _agree(stated: dict, seen: dict | None) -> dict[str, bool]:
    return {k: seen is not None and seen[k] == stated[k] for k in _OBJECT_FACTS}


def prompt_facts(prompt: dict[str, Any], seen: list[dict[str, Any]]) -> dict[str, float]:
    """One prompt's facts checked against the objects seen in its image: 1.0 true, 0.0 false, NaN not stated."""
    task, stated = prompt["task"], prompt["objects"]
    facts = dict.fromkeys(FACTS, float("nan"))
    facts["count"] = float(len(seen) == len(stated))
    if task == "single":
        (s,) = stated

        def score(o):  # facts that hold if s is matched to o
            ag = _agree(s, o)
            return ag, o is not None and (o["row"], o["col"]) == (s["row"], s["col"])

        # the first best match in raster order; None only when nothing is seen
        ag, pos = max((score(o) for o in seen), key=lambda t: sum(t[0].values()) + t[1], default=score(None))
        facts.update({k: float(v) for k, v in ag.items()}, position=float(pos))
    elif task == "two":
        a, b = stated
        relation = prompt["relation"]
        options = list(itertools.permutations(seen, 2)) or [(o, None) for o in seen] + [(None, o) for o in seen]
        best, best_n = None, -1
        for oa, ob in options or [(None, None)]:
            ag_a, ag_b = _agree(a, oa), _agree(b, ob)
            rel = oa is not None and ob is not None and relation_holds(relation, oa, ob)
            n = sum(ag_a.values()) + sum(ag_b.values()) + rel
            if n > best_n:
                best, best_n = (ag_a, ag_b, rel), n
        ag_a, ag_b, rel = best
        facts.update({k: float(ag_a[k] and ag_b[k]) for k in _OBJECT_FACTS}, relation=float(rel))
    elif task == "count":
        if stated:  # identical objects: the n seen objects that agree most stand for them
            s = stated[0]
            ranked = sorted((_agree(s, o) for o in seen), key=lambda ag: -sum(ag.values()))[: len(stated)]
            ranked += [_agree(s, None)] * (len(stated) - len(ranked))
            facts.update({k: float(all(ag[k] for ag in ranked)) for k in _OBJECT_FACTS})
    else:
        raise ValueError(f"unknown task {task!r} in prompt attributes")
    stated_facts = [v for v in facts.values() if not np.isnan(v)]
    facts["prompt"] = float(all(v == 1.0 for v in stated_facts))
    return facts


def is_holdout(prompt: dict[str, Any], holdout: Sequence[Sequence[str]]) -> bool:
    """Whether a prompt names a held-out colour×shape pair."""
    pairs = {tuple(p) for p in holdout}
    return any((o["colour"], o["shape"]) in pairs for o in prompt["objects"])


def _mean_ci(values: np.ndarray, n_boot: int, seed: int, name: str) -> tuple[float, float, float]:
    """Mean and percentile bootstrap 95 % interval; the stream is seeded by (seed, metric name), so adding a metric
    never changes another's interval."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if n_boot <= 0 or len(values) < 2:
        return mean, float("nan"), float("nan")
    if np.all(values == values[0]):  # every resample has the same mean
        return mean, mean, mean
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    res = bootstrap((values,), np.mean, n_resamples=n_boot, method="percentile", vectorized=True, **{_RNG_ARG: rng})
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise(
    facts: Sequence[dict[str, float]],
    prompts: Sequence[dict[str, Any]],
    holdout: Sequence[Sequence[str]] = (),
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracies with 95 % intervals: prompt_acc, attr_acc_<fact>, task_acc_<task> on the test prompts, holdout_*
    of the same on prompts naming a held-out pair (kept apart: compositional generalisation is its own number),
    and holdout_gap = holdout_prompt_acc − prompt_acc. Each value `x` has `x_lo`, `x_hi` (NaN when n_boot = 0)."""
    table = {k: np.array([f[k] for f in facts], dtype=float) for k in ("prompt", *FACTS)}
    tasks = np.array([p["task"] for p in prompts])
    held = np.array([is_holdout(p, holdout) for p in prompts], dtype=bool) if len(prompts) else np.zeros(0, bool)
    out: dict[str, float] = {}

    def put(name: str, values: np.ndarray) -> None:
        if np.isnan(values).all():  # nothing states it (e.g. no counting task): leave it out, not a NaN
            return
        out[name], out[name + "_lo"], out[name + "_hi"] = _mean_ci(values, n_boot, seed, name)

    for prefix, rows in (("", ~held), ("holdout_", held)):
        if not rows.any():
            continue
        put(prefix + "prompt_acc", table["prompt"][rows])
        for k in FACTS:
            put(f"{prefix}attr_acc_{k}", table[k][rows])
        for t in TASKS:
            if (rows & (tasks == t)).any():
                put(f"{prefix}task_acc_{t}", table["prompt"][rows & (tasks == t)])
    if held.any() and (~held).any():
        out.update(_gap_ci(table["prompt"][held], table["prompt"][~held], n_boot, seed))
    return out


def _gap_ci(held: np.ndarray, test: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """holdout_gap: mean(held) − mean(test), with a percentile bootstrap interval resampling each set apart."""
    held, test = held[~np.isnan(held)], test[~np.isnan(test)]
    gap = float(held.mean() - test.mean())
    if n_boot <= 0:
        return {"holdout_gap": gap, "holdout_gap_lo": float("nan"), "holdout_gap_hi": float("nan")}
    rng = np.random.default_rng([seed, zlib.crc32(b"holdout_gap")])
    boot = rng.choice(held, (n_boot, len(held))).mean(1) - rng.choice(test, (n_boot, len(test))).mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"holdout_gap": gap, "holdout_gap_lo": float(lo), "holdout_gap_hi": float(hi)}


def score_prompts(probe, images, prompts: Sequence[dict[str, Any]], batch_size: int = 512) -> list[dict[str, float]]:
    """Per-prompt facts (see `prompt_facts`) for images generated from `prompts` (dataset attributes), in order."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; pass one image per prompt")
    return [prompt_facts(p, seen) for p, seen in zip(prompts, probe.scenes(images, batch_size))]


def prompt_following(
    probe,
    images,
    prompts: Sequence[dict[str, Any]],
    holdout: Sequence[Sequence[str]] = (),
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """GenEval-style accuracies of `images` against the attributes of the `prompts` they were made from.
    `holdout`: the dataset's held-out colour×shape pairs (data_cfg.holdout), to also score those prompts apart."""
    return summarise(score_prompts(probe, images, prompts), prompts, holdout, n_boot, seed)


def alignment_instruments(
    probe, prompts: Sequence[dict], holdout: Sequence[Sequence[str]] = (), n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """What the alignment numbers were measured with, for EvalRecord.instruments."""
    return {
        "extractor": f"probe:{probe.key}",
        "prompts": len(prompts),
        "prompts_holdout": int(sum(is_holdout(p, holdout) for p in prompts)),
        "prompt_acc_over": "test prompts only (held-out combinations: holdout_*)",
        "bootstrap": n_boot,
        "bootstrap_seed": seed,
        "ci": 0.95,
    }
