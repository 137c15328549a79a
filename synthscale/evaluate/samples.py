"""Pictures from your own prompts, written to disk (`synthscale sample`): one PNG per image at the dataset's
resolution (optionally upscaled, nearest neighbour, for viewing), one labelled grid of every model × prompt, and a
timing row per (model, prompt) — wall time, images/s and the analytic sampling FLOPs per image."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synthscale.imagegrid import labelled_grid, save_png


@dataclass
class SampleJob:
    """One model to sample: a loaded `train.TrainedGenerator`, its settings, a short label for the grid, a folder name
    and a longer description to print."""

    name: str
    label: str
    generator: Any
    steps: int
    cfg: float
    about: str = ""


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt or label."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "prompt"


def upscale(image: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (pixels stay exact copies)."""
    return image if k == 1 else np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def write_samples(
    jobs: Sequence[SampleJob],
    prompts: Sequence[str],
    out: str | Path,
    n: int = 4,
    seed: int = 0,
    scale: int = 1,
    batch_size: int = 16,
) -> tuple[list[dict[str, Any]], Path]:
    """Sample every job on every prompt (each prompt from `seed`, so a prompt's images do not depend on the
    other prompts), write `OUT/<job>/<NN>-<prompt>-<k>.png` and `OUT/grid.png` (a row per prompt, the jobs side by
    side, `n` images each); returns the rows and the grid's path."""
    if scale < 1:
        raise ValueError(f"upscale must be an integer ≥ 1, got {scale}")
    out = Path(out)
    rows, drawn = [], {}
    for j, job in enumerate(jobs):
        for p, prompt in enumerate(prompts):
            t0 = time.perf_counter()
            images = job.generator.generate(
                [prompt], n=n, steps=job.steps, cfg=job.cfg, seed=seed, batch_size=batch_size
            )
            seconds = time.perf_counter() - t0
            files = []
            for k, image in enumerate(images):
                path = out / job.name / f"{p:02d}-{slug(prompt)}-{k}.png"
                save_png(Image.fromarray(upscale(image, scale)), path)
                files.append(path)
            drawn[j, p] = images
            flops = job.generator.sample_flops(job.steps, job.cfg)
            rows.append(
                {
                    "model": job.name,
                    "prompt": prompt,
                    "notes": job.generator.check_prompt(prompt).notes(),
                    "steps": job.steps,
                    "cfg": job.cfg,
                    "seconds": seconds,
                    "images_per_s": n / seconds if seconds > 0 else float("inf"),
                    "flops_per_image": flops["generator"],
                    "text_encoder_flops": flops["text_encoder"],
                    "files": [str(f) for f in files],
                }
            )
    order = [(j, p) for p in range(len(prompts)) for j in range(len(jobs))]
    cells = [im for key in order for im in drawn[key]]
    labels = [f"{jobs[j].label}: {prompts[p]}" for j, p in order for _ in range(n)]
    side = cells[0].shape[0] * scale
    grid = labelled_grid(cells, labels, cell=max(96, side), columns=n * len(jobs))
    return rows, save_png(grid, out / "grid.png")


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The table `synthscale sample` prints: one line per (model, prompt)."""
    width = max(len(r["model"]) for r in rows)
    lines = [f"{'model':<{width}}  steps  cfg   seconds  images/s  FLOPs/image  prompt"]
    for r in rows:
        lines.append(
            f"{r['model']:<{width}}  {r['steps']:5d}  {r['cfg']:<4g}  {r['seconds']:7.3f}  {r['images_per_s']:8.2f}  "
            f"{r['flops_per_image']:11.3g}  {r['prompt']}"
        )
        lines += [f"{'':<{width}}  note: {note}" for note in r["notes"]]
    return "\n".join(lines)


def steps_for(generator, requested: int | dict[str, int] | None, fallback: int | None = None) -> int:
    """The sampling steps for one model: `requested` as one number for every model or per objective name; a
    paradigm with one allowed value (next-token: one step per token) takes it when one number was given for all;
    otherwise `fallback` (e.g. the setting a study evaluated), else the objective's default. ValueError when the
    number is outside the model's range."""
    name = generator.objective.name
    low, high = generator.steps_range()
    if isinstance(requested, dict):
        steps = requested.get(name)
    elif requested is not None and low == high and requested != low:
        steps = low  # one number for a race across paradigms: next-token has no choice
    else:
        steps = requested
    if steps is None:
        steps = fallback if fallback is not None else generator.default_steps()
    generator.objective.check_steps(steps, generator.image_tokens)
    return steps
