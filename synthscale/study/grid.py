"""Stages and executors: a study is a graph of stages, each keyed by a content hash of its config.

A stage runs a function `fn(stage_dir, **kwargs) -> summary` (the function named by a dotted path, so process
executors can import it). Its outcome is a marker file in its folder, written atomically:
`done.json` (summary) or `failed.json` (error and traceback). Re-running a study skips every stage with a
`done.json`; an interrupted stage runs again and resumes from whatever it left (the trainer resumes from its
newest intact checkpoint). A failed stage is recorded and the stages that do not need it go on; the stages
that need it are marked `blocked`.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import json
import multiprocessing
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthscale import atomic
from synthscale.progress import progress_bar

DONE, FAILED = "done.json", "failed.json"


@dataclass
class Stage:
    kind: str  # autoencoder | probe | cache | train | evaluate | …
    name: str  # readable part of the folder name, e.g. "flow-4x128-d20000"
    key: str  # content hash of everything that decides the stage's output
    fn: str  # "module:function", called as fn(stage_dir, **kwargs)
    kwargs: dict[str, Any] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)  # ids of stages whose outputs this one reads
    cost: float = 1.0  # estimated cost (plan.weigh_stages: seconds on one CPU core), for the ETA

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}-{self.key}"


def stage_dir(root: Path, stage: Stage) -> Path:
    return Path(root) / stage.id


def status_of(root: Path, stage: Stage) -> str:
    folder = stage_dir(root, stage)
    if (folder / DONE).is_file():
        return "done"
    if (folder / FAILED).is_file():
        return "failed"
    return "pending"


def _seconds(root: Path, stage: Stage) -> float | None:
    """The seconds a finished stage's summary records, or None (an older or unreadable done.json)."""
    try:
        seconds = json.loads((stage_dir(root, stage) / DONE).read_text()).get("seconds")
    except (OSError, ValueError, AttributeError):
        return None
    return float(seconds) if isinstance(seconds, (int, float)) else None


def _resolve(dotted: str) -> Callable:
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def run_stage(root: str, stage: Stage, threads: int | None = None) -> tuple[str, dict[str, Any]]:
    """Run one stage in this process; never raises — the outcome is written to the stage folder and returned."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    folder = stage_dir(Path(root), stage)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAILED).unlink(missing_ok=True)  # a retry clears the previous failure
    started, cpu = time.time(), time.process_time()
    try:
        summary = _resolve(stage.fn)(folder, **stage.kwargs) or {}
        # wall time, and this process's CPU time (what a machine shared with other work does not inflate)
        summary = {
            "stage": stage.id,
            "seconds": round(time.time() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2),
            **summary,
        }
        atomic.write_json(folder / DONE, summary)
        return "done", summary
    except Exception as e:  # a failed stage is recorded; the study goes on
        info = {
            "stage": stage.id,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
            "seconds": round(time.time() - started, 2),
        }
        atomic.write_json(folder / FAILED, info)
        return "failed", info


def _check_graph(stages: list[Stage]) -> dict[str, Stage]:
    by_id: dict[str, Stage] = {}
    for s in stages:
        if s.id in by_id:
            continue  # the same stage reached twice (shared autoencoders, probes): run it once
        missing = [d for d in s.deps if d not in by_id]
        if missing:
            raise ValueError(f"stage {s.id} depends on {missing}, which are not earlier stages of the study")
        by_id[s.id] = s
    return by_id


class StudyProgress:
    """Stages done / running / failed and an ETA: the estimated seconds of the stages left (`Stage.cost`, set by
    `plan.weigh_stages`), scaled by how long this machine's finished stages took against their estimates, less what
    the running ones have already run, shared among the `workers` stages that run at once."""

    def __init__(
        self,
        stages: dict[str, Stage],
        states: dict[str, str],
        enabled: bool = True,
        workers: int = 1,
        desc: str = "study",
        seconds_done: dict[str, float] | None = None,
    ):
        self.stages, self.states = stages, states
        self.workers = max(1, workers)
        # finished stages: measured seconds, and their estimated cost. `seconds_done` (stages finished before this
        # call: an earlier phase such as the LR sweep, or an interrupted session) sets the pace from the start
        done_before = {i: t for i, t in (seconds_done or {}).items() if i in stages}
        self.spent = sum(done_before.values())
        self.estimated = sum(stages[i].cost for i in done_before)
        self.started_at: dict[str, float] = {}  # running stage → when it was first seen running
        # stages done before this session count as `initial`: the pace shown is this session's
        done = sum(1 for v in states.values() if v == "done")
        self.bar = progress_bar(total=len(stages), desc=desc, unit="stage", enabled=enabled, initial=done)
        self.refresh()

    def eta_seconds(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        scale = self.spent / self.estimated if self.estimated > 0 else 1.0
        left = 0.0
        for i, v in self.states.items():
            if v == "pending":
                left += self.stages[i].cost * scale
            elif v == "running":
                left += max(0.0, self.stages[i].cost * scale - (now - self.started_at.get(i, now)))
        return left / self.workers

    def refresh(self) -> None:
        counts = {k: sum(1 for v in self.states.values() if v == k) for k in ("done", "running", "failed", "blocked")}
        now = time.time()
        for i, v in self.states.items():
            if v == "running":
                self.started_at.setdefault(i, now)
        eta = f"{self.eta_seconds(now) / 60:.1f} min"
        self.bar.set_postfix_str(
            f"done {counts['done']} running {counts['running']} failed {counts['failed']} "
            f"blocked {counts['blocked']} ETA {eta}"
        )

    def finished(self, stage_id: str, status: str, info: dict) -> None:
        self.states[stage_id] = status
        if status == "done":
            if "seconds" in info:
                self.spent += info["seconds"]
                self.estimated += self.stages[stage_id].cost
            self.bar.update(1)
        else:
            self.bar.write(f"  ✗ {stage_id} {status}: {info.get('error', '')}")
        self.refresh()

    def close(self) -> None:
        self.bar.close()


def execute(
    root: str | Path,
    stages: list[Stage],
    executor: str = "sequential",
    workers: int = 2,
    threads: int | None = 1,
    progress: bool = True,
    cluster=None,
    desc: str = "study",
) -> dict[str, str]:
    """Run every stage not yet done, respecting dependencies. Returns {stage id: done|failed|blocked}.
    `cluster` (a ClusterConfig) configures the slurm and ray executors (study/executors.py); `desc` names the
    progress bar (its ETA covers these stages only)."""
    root = Path(root)
    by_id = _check_graph(stages)
    states = {i: ("done" if status_of(root, s) == "done" else "pending") for i, s in by_id.items()}
    seconds_done = {i: _seconds(root, by_id[i]) for i, v in states.items() if v == "done"}
    seconds_done = {i: t for i, t in seconds_done.items() if t is not None}
    view = StudyProgress(by_id, states, progress, 1 if executor == "sequential" else workers, desc, seconds_done)

    def ready() -> list[str]:
        out = []
        for i, s in by_id.items():
            if states[i] != "pending":
                continue
            dep_states = [states[d] for d in s.deps]
            if any(d in ("failed", "blocked") for d in dep_states):
                states[i] = "blocked"
                view.finished(i, "blocked", {"error": "a stage it needs failed"})
            elif all(d == "done" for d in dep_states):
                out.append(i)
        return out

    try:
        if executor == "sequential":
            while todo := ready():
                for i in todo:
                    states[i] = "running"
                    view.refresh()
                    status, info = run_stage(str(root), by_id[i], threads)
                    view.finished(i, status, info)
        elif executor in ("processes", "slurm", "ray"):
            if executor == "processes":
                # spawn: a fresh interpreter per worker, so no torch/OpenMP state is inherited through fork
                ctx = multiprocessing.get_context("spawn")
                pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
                submit = lambda stage: pool.submit(run_stage, str(root), stage, threads)  # noqa: E731
            else:  # cluster jobs: futures of the same (status, info)
                from synthscale.study.executors import make_pool

                pool = make_pool(executor, root, cluster)
                submit = lambda stage: pool.submit_stage(str(root), stage, threads)  # noqa: E731
            with pool:
                running: dict[cf.Future, str] = {}
                while True:
                    for i in ready()[: max(0, workers - len(running))]:  # only what can run now: an honest "running"
                        states[i] = "running"
                        running[submit(by_id[i])] = i
                    view.refresh()
                    if not running:
                        break
                    finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        i = running.pop(fut)
                        try:
                            status, info = fut.result()
                        except Exception as e:  # the worker process died (e.g. out of memory)
                            status, info = "failed", {"error": f"worker died: {e}"}
                            atomic.write_json(stage_dir(root, by_id[i]) / FAILED, {"stage": i, **info})
                        view.finished(i, status, info)
        else:
            raise ValueError(f"unknown executor {executor!r}; valid: sequential, processes, slurm, ray")
    finally:
        view.close()
    return states
