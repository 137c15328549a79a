"""Eager or torch.compile for a run's training step: whichever finishes the rest of the run sooner on this
machine, with the compile time counted.

Compiling a small model's step saves milliseconds a step but costs tens of seconds once (inductor's on-disk
cache brings a repeat of the same graph down to seconds), so it pays only for runs long enough. The trainer
times its first `PROBE_STEPS` eager steps, then predicts both ways for the steps left:

    eager:    remaining · t_eager
    compile:  compile_s + remaining · t_eager / speedup

and compiles only when eager would take ≥ MIN_GAIN× longer. Compile times are CPU work: on a machine shared with
other processes they stretch as the steps do, so the expected compile time is scaled by the probe's wall time over
its CPU time per thread (1 when the process has its cores to itself). `compile_s` and `speedup` come from what this
machine measured for the same graph before (kept beside inductor's cache, which decides whether a compile is
cold or warm), else from the priors below. After compiling, the next steps are timed; a compiled step no faster
than eager goes back to eager. Either way the choice and its numbers are recorded in the run (env.json, done.json).
Both paths compute the same step up to floating-point rounding (inductor fuses and reorders).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from synthscale import atomic

PROBE_STEPS = 6  # steps timed on each path before deciding; the first of each is warm-up
MIN_GAIN = 1.1  # predicted eager time / predicted compiled time (compile included) needed to compile
# Priors until this machine has compiled the graph once: measured for a 2x64 step at batch 32 (16 image +
# 12 caption tokens), one thread of a shared 2-core Xeon (docs/results/train-step-small.md)
PRIOR_COLD_S = 45.0  # first compile, empty inductor cache
PRIOR_WARM_S = 4.0  # the same graph again (inductor's FX graph cache)
PRIOR_SPEEDUP = 1.3  # eager step time / compiled step time


def keep_freed_memory() -> bool:
    """Have glibc serve every allocation under 32 MiB from its heap and keep freed memory there, instead of mapping
    each large tensor fresh from the OS (and faulting in its pages) and handing it back when freed. A small model's
    step frees and re-allocates the same activation sizes every step: measured 1.1–1.35× faster steps at 2x64 on
    a CPU (docs/results/train-step-small.md). The memory held is the step's peak, which the process reaches anyway;
    the numbers computed are the same bits. Process-wide; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def record_path() -> Path:
    """Where this machine's measured compile times and speedups are kept: inside inductor's cache directory,
    since whether a compile is cold or warm is that directory's state."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "synthscale-fastpath.json"


def graph_key(*parts: Any) -> str:
    """The training graph's identity: what decides the compiled code (shapes, objective, precision, threads)."""
    blob = json.dumps([torch.__version__, torch.get_num_threads(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_records(path: Path | None = None) -> dict[str, Any]:
    try:
        return json.loads((path or record_path()).read_text())
    except (OSError, ValueError):
        return {}


def save_record(key: str, record: dict[str, Any], path: Path | None = None) -> None:
    path = path or record_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(path, {**read_records(path), key: record})
    except OSError:
        pass  # a read-only cache only costs the next run its measured numbers


def decide(
    remaining_steps: int, eager_step_s: float, known: dict[str, Any] | None, load: float = 1.0
) -> dict[str, Any]:
    """eager or compile for `remaining_steps` steps of `eager_step_s` seconds; `known` is this machine's record
    of the graph ({"speedup", "compile_s": [...]}) or None; `load` stretches the compile time (≥ 1: the process
    gets less than its threads' worth of CPU)."""
    speedup = known["speedup"] if known else PRIOR_SPEEDUP
    compile_s = PRIOR_WARM_S if known else PRIOR_COLD_S  # a recorded graph is in inductor's cache
    if known and len(known.get("compile_s", [])) > 1:  # a repeat was measured: the warm cost on this machine
        compile_s = statistics.median(known["compile_s"][1:])
    compile_s *= max(load, 1.0)
    eager_total = remaining_steps * eager_step_s
    compiled_total = compile_s + eager_total / speedup
    return {
        "choice": "compile" if speedup > 1 and eager_total >= MIN_GAIN * compiled_total else "eager",
        "basis": "measured on this machine" if known else "priors",
        "remaining_steps": remaining_steps,
        "eager_step_ms": 1e3 * eager_step_s,
        "predicted_speedup": speedup,
        "predicted_compile_s": compile_s,
        "load": load,
        "predicted_eager_s": eager_total,
        "predicted_compiled_s": compiled_total,
    }


class StepPath:
    """Feeds on the step times of a session and says when to switch paths: `observe(seconds)` → "compile",
    "eager" or None (no change). `decision` holds what was chosen and measured, for the run's records."""

    def __init__(self, mode: str, remaining_steps: int, key: str):
        self.key, self.remaining = key, remaining_steps
        self.times: list[float] = []
        self.cpu: list[float] = []  # process CPU seconds of the probe's steps
        self.eager_s = float("nan")
        if mode == "compile":  # train.compile=true: forced, nothing to decide
            self.phase, self.decision = "done", {"choice": "compile", "basis": "train.compile=true"}
        elif mode == "eager":
            self.phase, self.decision = "done", {"choice": "eager", "basis": "train.fast_path=eager"}
        else:
            self.phase, self.decision = "eager", {"choice": "eager", "basis": f"fewer than {PROBE_STEPS} steps"}

    def observe(self, seconds: float, cpu_seconds: float | None = None) -> str | None:
        """A step took `seconds` of wall time and `cpu_seconds` of this process's CPU time (None: not known)."""
        if self.phase == "done":
            return None
        self.times.append(seconds)
        self.cpu.append(seconds * torch.get_num_threads() if cpu_seconds is None else cpu_seconds)
        self.remaining -= 1
        if len(self.times) < PROBE_STEPS:
            return None
        if self.phase == "eager":
            self.eager_s = statistics.median(self.times[1:])
            cpu_per_thread = sum(self.cpu[1:]) / torch.get_num_threads()
            load = sum(self.times[1:]) / cpu_per_thread if cpu_per_thread > 0 else 1.0
            self.decision = decide(self.remaining, self.eager_s, read_records().get(self.key), load)
            self.times = []
            self.phase = "compiled" if self.decision["choice"] == "compile" else "done"
            return "compile" if self.phase == "compiled" else None
        # compiled trial: the first step compiled; the rest say how fast the compiled step is
        compiled_s = statistics.median(self.times[1:])
        compile_s = max(self.times[0] - compiled_s, 0.0)
        speedup = self.eager_s / compiled_s
        known = read_records().get(self.key) or {}
        save_record(self.key, {"speedup": speedup, "compile_s": [*known.get("compile_s", []), compile_s][-5:]})
        self.decision.update(compiled_step_ms=1e3 * compiled_s, measured_speedup=speedup, compile_s=compile_s)
        self.phase = "done"
        if speedup <= 1:
            self.decision["choice"] = "eager"
            self.decision["basis"] += "; the compiled step measured no faster, back to eager"
            return "eager"
        return None
