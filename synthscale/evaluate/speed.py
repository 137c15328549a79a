"""Inference cost: measured sampling latency (batch 1) and throughput (best batch), medians over repeats.

Analytic FLOPs per image come from the objective; these are the wall-clock numbers on this machine. Decoding
latents to pixels is not included (the autoencoder cost is the same for every paradigm that shares it).
"""

from __future__ import annotations

import statistics
import time

import torch


def _time_sample(objective, model, text: torch.Tensor, steps: int, cfg_scale: float, repeats: int) -> float:
    times = []
    for r in range(repeats + 1):  # the first call warms caches and allocators and is not counted
        # on the model's device: a CPU generator would add a host→device copy per draw (per token / step)
        gen = torch.Generator(device=model.device).manual_seed(r)
        if text.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        objective.sample(model, text, steps, cfg_scale, gen)
        if text.is_cuda:
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def measure_speed(
    objective,
    model,
    text: torch.Tensor,
    steps: int,
    cfg_scale: float,
    batch_sizes: tuple[int, ...] = (1, 16, 64),
    repeats: int = 3,
    max_seconds: float = 10.0,
) -> dict[str, float]:
    """Latency (s per image at batch 1) and throughput (images/s at the best batch size tried).

    `text` holds caption token ids [B, L]; rows are reused cyclically to fill a batch. Batch sizes are tried in
    increasing order and the sweep stops early once one measurement takes longer than `max_seconds` or runs out
    of memory (the memory bound).
    """
    model.eval()
    rows = text.shape[0]
    result: dict[str, float] = {}
    best = 0.0
    for b in batch_sizes:
        batch = text[torch.arange(b) % rows]
        try:
            seconds = _time_sample(objective, model, batch, steps, cfg_scale, repeats)
        except (torch.cuda.OutOfMemoryError, MemoryError):  # the memory bound of this device
            break
        if b == 1:
            result["latency_s"] = seconds
        if b / seconds > best:
            best, result["throughput_ips"], result["throughput_batch"] = b / seconds, b / seconds, float(b)
        if seconds > max_seconds:
            break
    return result
