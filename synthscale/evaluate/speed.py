"""Inference cost: measured sampling latency (batch 1) and throughput (best batch), medians over repeats.

Analytic FLOPs per image come from the objective; these are the wall-clock numbers on this machine. Decoding
latents to pixels is timed apart (`decode_latency_s`, `decode_throughput_ips`), so the generator's numbers stay
comparable with older records and the report can show the decoder as its own column: at this scale an f4 decoder
costs as much as a whole next-token sample, and paradigms with different autoencoders pay different decoders.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _timed(cuda: bool, fn: Callable, *args) -> tuple[float, object]:
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*args)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def _time_sample(
    objective, model, text: torch.Tensor, steps: int, cfg_scale: float, repeats: int, decode=None
) -> tuple[float, float | None]:
    """Median seconds of one sampling call and, with `decode`, of decoding its latents (each warmed once)."""
    times, decode_times = [], []
    for r in range(repeats + 1):  # the first call warms caches and allocators and is not counted
        # on the model's device: a CPU generator would add a host→device copy per draw (per token / step)
        gen = torch.Generator(device=model.device).manual_seed(r)
        seconds, latents = _timed(text.is_cuda, objective.sample, model, text, steps, cfg_scale, gen)
        decode_seconds = _timed(text.is_cuda, decode, latents)[0] if decode is not None else None
        if r:
            times.append(seconds)
            decode_times.append(decode_seconds)
    return statistics.median(times), (statistics.median(decode_times) if decode is not None else None)


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
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Latency (s per image at batch 1) and throughput (images/s at the best batch size tried) of the generator;
    with `decode` (the autoencoder's latents → pixels) also the decoder's: `decode_latency_s` at batch 1 and
    `decode_throughput_ips` at the generator's best batch.

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
            seconds, decode_seconds = _time_sample(objective, model, batch, steps, cfg_scale, repeats, decode)
        except (torch.cuda.OutOfMemoryError, MemoryError):  # the memory bound of this device
            break
        if b == 1:
            result["latency_s"] = seconds
            if decode_seconds is not None:
                result["decode_latency_s"] = decode_seconds
        if b / seconds > best:
            best, result["throughput_ips"], result["throughput_batch"] = b / seconds, b / seconds, float(b)
            if decode_seconds is not None:
                result["decode_throughput_ips"] = b / decode_seconds
        if seconds > max_seconds:
            break
    return result
