"""`precision: auto` of a study: time one training step in float32 and under bf16 autocast on this machine and
train in bf16 only where it is measurably faster (CPUs without bf16 matrix units run it slower than float32).

Measured once, when a study first starts, and kept in the study folder (`precision.json`), so a re-run or a resume
keys its runs the same way whatever the machine's load is then. Steps alternate between the two precisions and
the medians are compared, so a load that comes and goes during the check touches both alike.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch

from synthscale.config import ModelConfig, ObjectiveConfig, TrainConfig
from synthscale.data.latents import LatentSpec, TextSpec

MIN_SPEEDUP = 1.1  # bf16 must beat float32 by this factor to be used: a tie keeps the exact, portable float32


def measure_precision(
    size: str, batch_size: int, objective: str | None = None, repeats: int = 5, device: str = "cpu"
) -> dict[str, Any]:
    """Median seconds of a training step (loss, backward, AdamW) of `objective` (default: the registry's first) at
    `size` with 16 image tokens (4×4 latents of its kind) and 24 caption tokens in float32 and in bf16 autocast;
    `choice` is bf16 when it is ≥ MIN_SPEEDUP× faster."""
    from synthscale.objectives import get_objective
    from synthscale.train.loop import build_optimizer

    objective = objective or ObjectiveConfig.names()[0]
    obj = get_objective(ObjectiveConfig.of(objective))
    text_spec, gen = TextSpec(vocab_size=64, max_length=24), torch.Generator().manual_seed(0)
    if obj.latent == "continuous":
        spec = LatentSpec("continuous", 16, 4, 4)
        x = torch.randn(batch_size, 16, 4, 4, generator=gen).to(device)
    else:
        spec = LatentSpec("discrete", 6, 4, 4, vocab_size=64)
        x = torch.randint(0, 64, (batch_size, 4, 4), generator=gen).to(device)
    text = torch.randint(3, 64, (batch_size, 24), generator=gen).to(device)
    torch.manual_seed(0)
    model = obj.build_model(ModelConfig(size=size), spec, text_spec).to(device)
    opt = build_optimizer(model, TrainConfig(lr=1e-4))

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = obj.loss(model, x, text, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step(False), step(True)  # warm-up: first calls allocate and pick kernels
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    return {
        "size": size,
        "objective": objective,
        "batch_size": batch_size,
        "fp32_ms": 1e3 * fp32,
        "bf16_ms": 1e3 * bf16,
        "bf16_speedup": fp32 / bf16,
        "min_speedup": MIN_SPEEDUP,
        "choice": "bf16" if fp32 / bf16 >= MIN_SPEEDUP else "fp32",
        "threads": torch.get_num_threads(),
    }
