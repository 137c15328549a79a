"""What a run tells the world while it trains: a progress bar, metrics.jsonl, TensorBoard, and the run's
config and environment. Only rank 0 logs; on other ranks every method is a no-op."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from synthscale import atomic
from synthscale.progress import progress_bar

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a line cut short by a kill is ignored."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def environment(device: torch.device, world: int) -> dict[str, Any]:
    """Versions, machine and git revision, so a result can name what produced it."""
    import numpy
    import safetensors

    import synthscale

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=Path(synthscale.__file__).parent, capture_output=True, text=True, timeout=10
            )
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "synthscale": synthscale.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "world_size": world,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "git_revision": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, start_step: int, total_steps: int, budget: float, progress: bool):
        self.enabled, self.run_dir, self.budget = enabled, run_dir, budget
        self.bar = self.tb = self.file = None
        self.rate = ""  # images/s of the last metrics window, shown until the next one
        if not enabled:
            return
        self._truncate_metrics(start_step)
        self.file = open(run_dir / METRICS, "a")
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed session wrote after the checkpoint we resumed from
        self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step or None)
        if progress:
            self.bar = progress_bar(total=total_steps, initial=start_step, desc=run_dir.name, unit="step")

    def _truncate_metrics(self, start_step: int) -> None:
        """Keep only records up to the resume point, so the history reads as one uninterrupted run."""
        path = self.run_dir / METRICS
        if not path.exists():
            return
        kept = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= start_step]
        atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def step(self, loss: float, flops: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {loss:.4f}  FLOPs {flops:.3g}/{self.budget:.3g}{self.rate}", refresh=False)

    def record(self, rec: dict[str, Any]) -> None:
        """One metrics.jsonl line (floats round-trip exactly) and its TensorBoard scalars."""
        if not self.enabled:
            return
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        for key, value in rec.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"train/{key}", value, rec["step"])
        self.rate = f"  {rec['images_per_s']:.0f} img/s"

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()
