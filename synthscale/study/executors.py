"""Cluster executors for a study: Slurm (through submitit) and Ray.

Each stage becomes one job that calls `grid.run_stage` on a cluster node, so its outcome lands in the stage
folder exactly as with the local executors (`done.json` / `failed.json`); the study folder must therefore lie
on storage every node sees. A training stage is launched with torchrun instead of in the job's own process:

    python -m torch.distributed.run --standalone --nproc_per_node=G \
        -m synthscale train --config RUN_DIR/run_config.json --out RUN_DIR

(one process per GPU; a multi-node run adds `--nnodes=N --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT` and
runs that command once per node). The trainer resumes from its newest checkpoint, which is what makes the
Slurm jobs *checkpointable*: on a timeout or preemption submitit requeues the job with the same arguments
and training continues where it stopped.

`grid.execute(..., executor="slurm" | "ray")` builds a pool here; `pool.submit_stage(root, stage, threads)`
returns a `concurrent.futures.Future` of run_stage's `(status, info)`, so the grid's scheduling loop is the one
the process executor uses. submitit and ray are the `scale` extra, imported only when used.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from synthscale import atomic
from synthscale.config import ClusterConfig, ConfigError
from synthscale.study.grid import Stage, _resolve, run_stage, stage_dir

TRAIN_FN = "synthscale.study.stages:train_stage"  # the study's training stage: launched through torchrun
TORCHRUN_FN = f"{__name__}:torchrun_stage"  # what it becomes in a cluster job
JOB = "job.json"  # in a stage folder: the cluster job that runs it (a resumed driver re-attaches to it)
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


class MissingExtra(ConfigError):
    """submitit or ray is not installed."""


def _require(module: str, executor: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise MissingExtra(
            f"the {executor} executor needs the '{module}' package: pip install 'synthscale[scale]' "
            f"(or pip install {module}); error was: {e}"
        ) from e


# ---------------------------------------------------------------------------------------------- torchrun


def torchrun_command(
    config: str | Path,
    out: str | Path,
    procs_per_node: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "synthscale",
    threads: int | None = None,
    python: str | None = None,
) -> list[str]:
    """The command that trains one run over `nnodes` × `procs_per_node` processes (run once per node)."""
    cmd = [python or sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")  # a free local port: runs sharing a machine never collide
    else:
        if not rdzv_endpoint:
            raise ValueError("a multi-node run needs rdzv_endpoint=HOST:PORT (the first node)")
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"]
    cmd += ["-m", "synthscale", "train", "--config", str(config), "--out", str(out), "--quiet"]
    return cmd + (["--threads", str(threads)] if threads else [])


def _slurm_env():
    """The submitit job environment of this process (None outside a submitit job)."""
    try:
        import submitit

        return submitit.JobEnvironment()
    except Exception:  # not installed, or not inside a job
        return None


def torchrun_stage(
    stage_dir: Path,
    run_config: dict[str, Any],
    procs_per_node: int,
    nnodes: int = 1,
    port: int = 29500,
    threads: int | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """A study training stage as a cluster job runs it: the trainer under torchrun on this node (one node of
    `nnodes`), its output in `stage_dir/torchrun.log`; returns the trainer's summary (its done.json)."""
    stage_dir = Path(stage_dir)
    config = stage_dir / "run_config.json"
    atomic.write_json(config, run_config)  # the same content on every node and attempt
    endpoint, rdzv_id, log_path = None, "synthscale", stage_dir / "torchrun.log"
    if nnodes > 1:
        env = _slurm_env()
        if env is None or env.num_nodes != nnodes:
            raise RuntimeError(f"a {nnodes}-node run must run inside a Slurm job of {nnodes} nodes")
        # the job id keeps runs that share a first node on different ports
        endpoint, rdzv_id = f"{env.hostnames[0]}:{port + int(env.raw_job_id) % 1000}", env.raw_job_id
        if env.node:  # one log per node: appends from several hosts to one shared file interleave
            log_path = stage_dir / f"torchrun.node{env.node}.log"
    cmd = torchrun_command(config, stage_dir, procs_per_node, nnodes, endpoint, rdzv_id, threads, python)
    # PYTHONFAULTHANDLER: a worker killed by a C++ abort or a segfault prints its Python stack into the log
    environ = {**os.environ, "PYTHONFAULTHANDLER": "1", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(log_path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        attempt_start = log.tell()  # earlier attempts' output stays in the log, out of the error message
        # a session of its own, so an interrupted job (timeout, preemption, cancel) stops torchrun's workers too
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ, start_new_session=True)
        try:
            rc = proc.wait()
        except BaseException:
            _stop(proc)
            raise
    if rc != 0:
        with open(log_path, "rb") as log:
            log.seek(attempt_start)
            output = log.read().decode(errors="replace")
        raise RuntimeError(f"torchrun exited with status {rc}; from {log_path}:\n{failure_excerpt(output)}")
    summary = json.loads((stage_dir / "done.json").read_text())  # written by the trainer's rank 0
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool, type(None)))}


_WORKER_ERROR = re.compile(
    r"Traceback \(most recent call last\)|terminate called|Fatal Python error|^\w*(Error|Exception)\b|\berror:"
)


def failure_excerpt(output: str, head: int = 25, tail: int = 15) -> str:
    """What explains a failed torchrun: the first worker error (a traceback, the CLI's `error:` line, or the
    C++ `terminate called` before a SIGABRT) and the end, where torchrun names the failed ranks and their exit
    codes. The end alone says only "Signal 6 received"; the cause is printed above it by the first to die."""
    lines = output.splitlines()
    if len(lines) <= head + tail:
        return "\n".join(lines)
    first = next((i for i, line in enumerate(lines) if _WORKER_ERROR.search(line.strip())), None)
    if first is None or first >= len(lines) - tail:
        return "\n".join(["...", *lines[-tail:]])
    cause = lines[first : min(first + head, len(lines) - tail)]
    skipped = len(lines) - tail - first - len(cause)
    return "\n".join(
        [*(["..."] if first else []), *cause, *([f"... ({skipped} lines)"] if skipped else []), *lines[-tail:]]
    )


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM torchrun's process group (it forwards to its workers), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            if proc.poll() is not None:
                return


def job_stage(stage: Stage, cluster: ClusterConfig, threads: int | None) -> Stage:
    """The stage as a cluster job runs it: the study's training stage goes through torchrun (same id, so the
    same folder and markers); every other stage is unchanged."""
    if stage.fn != TRAIN_FN:
        return stage
    kwargs = {
        "run_config": stage.kwargs["run_config"],
        "procs_per_node": cluster.procs_per_node,
        "nnodes": cluster.nodes_per_run,
        "port": cluster.port,
        "threads": threads,
        "python": cluster.python,
    }
    return dataclasses.replace(stage, fn=TORCHRUN_FN, kwargs=kwargs)


def job_resources(stage: Stage, cluster: ClusterConfig) -> dict[str, int]:
    """What the job of `stage` asks for: nodes, GPUs per node and CPU cores per node."""
    if stage.fn in (TRAIN_FN, TORCHRUN_FN):
        return {
            "nodes": cluster.nodes_per_run,
            "gpus": cluster.gpus_per_node,
            "cpus": cluster.procs_per_node * cluster.cpus_per_proc,
        }
    return {"nodes": 1, "gpus": cluster.stage_gpus, "cpus": cluster.stage_cpus}


class StageJob:
    """The callable a cluster job runs. Node 0 runs the stage (and writes its markers); the other nodes of a
    multi-node training run only join its torchrun. `checkpoint` makes submitit requeue the job with the same
    arguments on a timeout or preemption (the trainer then resumes from its newest checkpoint)."""

    def __call__(self, root: str, stage: Stage, threads: int | None):
        env = _slurm_env()
        if env is not None and env.node > 0:
            _resolve(stage.fn)(stage_dir(Path(root), stage), **stage.kwargs)
            return None
        return run_stage(root, stage, threads)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


# ---------------------------------------------------------------------------------------------- slurm


class SlurmPool:
    """Stages as Slurm jobs (or local processes with `cluster.local`). `submit_stage` queues a stage and
    returns a Future; a watcher thread submits the queued stages (locally: once enough GPUs are free), polls
    the jobs and completes the futures. How many run at once is the grid's `workers`."""

    def __init__(self, root: str | Path, cluster: ClusterConfig, poll_s: float | None = None):
        submitit = _require("submitit", "slurm")
        self.cluster, self.root = cluster, Path(root)
        self.folder = Path(cluster.folder) if cluster.folder else self.root / "jobs"
        kwargs = {"max_num_timeout": cluster.requeues, "python": cluster.python}
        if cluster.local:
            if cluster.nodes_per_run > 1:
                raise ConfigError("cluster.local runs jobs on this machine only: set cluster.nodes_per_run: 1")
            self.executor = submitit.LocalExecutor(self.folder, **kwargs)
            self.free_gpus: list[int] | None = list(range(_local_gpus()))
        else:
            if shutil.which("sbatch") is None:
                raise ConfigError(
                    "the slurm executor found no `sbatch` on PATH: run the study on a Slurm login node, "
                    "or set cluster.local: true to run its jobs on this machine"
                )
            self.executor = submitit.SlurmExecutor(self.folder, **kwargs)
            self.free_gpus = None
        self.poll_s = poll_s if poll_s is not None else (0.2 if cluster.local else 10.0)
        self.queue: deque[tuple[cf.Future, Stage, int | None]] = deque()
        self.running: dict[cf.Future, tuple[Any, list[int]]] = {}  # future → (job, GPUs it holds locally)
        self.lock, self.wake, self.closed = threading.Lock(), threading.Event(), False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._watch, name="synthscale-slurm", daemon=True)
        self.thread.start()

    def submit_stage(self, root: str, stage: Stage, threads: int | None) -> cf.Future:
        future: cf.Future = cf.Future()
        need = job_resources(stage, self.cluster)
        if self.free_gpus is not None and need["gpus"] > _local_gpus():
            future.set_exception(
                ConfigError(
                    f"stage {stage.id} needs {need['gpus']} GPUs but this machine has {_local_gpus()}; lower "
                    f"cluster.{'gpus_per_node' if stage.fn == TRAIN_FN else 'stage_gpus'}"
                )
            )
            return future
        with self.lock:
            self.queue.append((future, job_stage(stage, self.cluster, threads), threads))
        self.wake.set()
        return future

    def _parameters(self, stage: Stage, gpus: list[int]) -> dict[str, Any]:
        c, need = self.cluster, job_resources(stage, self.cluster)
        name = f"synthscale-{stage.kind}-{stage.name}"
        if c.local:
            return {
                "timeout_min": c.time_min,
                "gpus_per_node": need["gpus"],
                "visible_gpus": tuple(gpus),
                "tasks_per_node": 1,
                "setup": list(c.setup),
            }
        params = {
            "job_name": name,
            "time": c.time_min,
            "nodes": need["nodes"],
            "ntasks_per_node": 1,
            "cpus_per_task": need["cpus"],
            "setup": list(c.setup),
            "additional_parameters": dict(c.slurm_args),
        }
        if need["gpus"]:
            params["gpus_per_node"] = need["gpus"]
        if c.mem_gb:
            params["mem"] = f"{c.mem_gb}GB"
        params.update({k: v for k, v in (("partition", c.partition), ("account", c.account)) if v})
        return params

    def _attach(self, stage: Stage):
        """The still-alive Slurm job a previous driver submitted for this stage, if any."""
        if self.cluster.local:
            return None  # local jobs end with the driver that started them
        import submitit

        return alive_job(_read(stage_dir(self.root, stage) / JOB), self.folder, submitit.SlurmJob)

    def _launch(self, future: cf.Future, stage: Stage, threads: int | None) -> bool:
        """Submit one queued stage; False when it must wait for local GPUs."""
        need = job_resources(stage, self.cluster)["gpus"]
        gpus: list[int] = []
        if self.free_gpus is not None:
            if need > len(self.free_gpus):
                return False
            gpus, self.free_gpus = self.free_gpus[:need], self.free_gpus[need:]
        try:
            job = self._attach(stage)
            if job is None:
                self.executor.update_parameters(**self._parameters(stage, gpus))
                job = self.executor.submit(StageJob(), str(self.root), stage, threads)
                atomic.write_json(
                    stage_dir(self.root, stage) / JOB,
                    {
                        "job_id": job.job_id,
                        "folder": str(self.folder),
                        "local": self.cluster.local,
                        "tasks": job_resources(stage, self.cluster)["nodes"],
                        "submitted": time.time(),
                    },
                )
        except Exception as e:  # sbatch refused it (unknown partition, too many GPUs, …): the stage fails
            self.free_gpus = None if self.free_gpus is None else self.free_gpus + gpus
            future.set_exception(e)
            return True
        self.running[future] = (job, gpus)
        return True

    def _watch(self) -> None:
        try:
            while True:
                with self.lock:
                    for future, (job, gpus) in list(self.running.items()):
                        if job.done():
                            del self.running[future]
                            if self.free_gpus is not None:
                                self.free_gpus += gpus
                            _settle(future, job)
                    waiting = deque()
                    while self.queue:
                        item = self.queue.popleft()
                        if not self._launch(*item):
                            waiting.append(item)
                    self.queue.extendleft(reversed(waiting))
                    if self.closed and not self.running and not self.queue:
                        return
                self.wake.wait(self.poll_s)
                self.wake.clear()
        except BaseException as e:  # never leave the driver waiting on futures nobody completes
            self.error = e
            with self.lock:
                for future in [*self.running, *(f for f, _, _ in self.queue)]:
                    if not future.done():
                        future.set_exception(RuntimeError(f"the slurm executor's watcher failed: {e!r}"))

    def shutdown(self, cancel: bool = False) -> None:
        """Wait for every job (or cancel those still queued or running)."""
        with self.lock:
            if cancel:
                for future, _, _ in self.queue:
                    future.cancel()
                self.queue.clear()
                for future, (job, _) in self.running.items():
                    try:
                        job.cancel(check=False)
                    except Exception:  # already gone
                        pass
                    future.cancel()
                self.running.clear()
            self.closed = True
        self.wake.set()
        self.thread.join(timeout=None if not cancel else 60)

    def __enter__(self) -> SlurmPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(cancel=exc_type is not None)  # an interrupted driver must not leave jobs behind


def alive_job(info: dict[str, Any] | None, folder: Path, job_class):
    """A job recorded in a stage's job.json, re-attached when Slurm still runs (or queues) it; None when it is
    gone, unknown (e.g. sacct purged it) or from another job folder — the stage is then submitted anew."""
    if not info or info.get("local") or info.get("folder") != str(folder):
        return None
    try:
        job = job_class(folder=folder, job_id=str(info["job_id"]), tasks=tuple(range(info.get("tasks", 1))))
        state = str(job.state).split()[0].upper()
    except Exception:  # no sacct, a malformed record: treat the job as gone
        return None
    return job if state in ALIVE else None


def _settle(future: cf.Future, job) -> None:
    try:
        results = job.results()  # one per node; node 0's is the stage's outcome
        future.set_result(results[0])
    except Exception as e:  # the job died (out of memory, node failure, requeued too often, cancelled)
        future.set_exception(RuntimeError(f"job {job.job_id}: {type(e).__name__}: {_short(e)}"))


def _short(e: BaseException, lines: int = 12) -> str:
    return "\n".join(str(e).strip().splitlines()[-lines:])


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


# ---------------------------------------------------------------------------------------------- ray


class RayPool:
    """Stages as Ray tasks that ask for their CPUs and GPUs; Ray schedules them over the cluster's nodes.
    A training run stays on one node (its torchrun); a task lost with its node is retried `requeues` times."""

    def __init__(self, root: str | Path, cluster: ClusterConfig):
        self.ray = _require("ray", "ray")
        if cluster.nodes_per_run > 1:
            raise ConfigError(
                "the ray executor runs each training run on one node; use the slurm executor for "
                "multi-node runs, or set cluster.nodes_per_run: 1"
            )
        self.cluster, self.root, self.refs = cluster, Path(root), []
        self.started = not self.ray.is_initialized()
        if self.started:
            # workers import the stage functions by name: give them this process's import path
            env = {"PYTHONPATH": os.pathsep.join(p for p in [os.getcwd(), *sys.path] if p)}
            if cluster.ray_address:
                self.ray.init(address=cluster.ray_address, runtime_env={"env_vars": env})
            else:
                self.ray.init(include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
        self.task = self.ray.remote(_ray_stage)

    def _check_fits(self, stage: Stage, need: dict[str, int]) -> None:
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if not any(r.get("CPU", 0) >= need["cpus"] and r.get("GPU", 0) >= need["gpus"] for r in nodes):
            most = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
            raise ConfigError(
                f"stage {stage.id} needs {need['cpus']} CPUs and {need['gpus']} GPUs on one node, but "
                f"the largest Ray node has {most[0]:g} CPUs and {most[1]:g} GPUs; lower "
                "cluster.cpus_per_proc / stage_cpus / gpus_per_node / stage_gpus"
            )

    def submit_stage(self, root: str, stage: Stage, threads: int | None) -> cf.Future:
        need = job_resources(stage, self.cluster)
        try:
            self._check_fits(stage, need)  # an infeasible Ray task would wait forever
        except ConfigError as e:
            future: cf.Future = cf.Future()
            future.set_exception(e)
            return future
        task = self.task.options(
            num_cpus=need["cpus"],
            num_gpus=need["gpus"],
            max_retries=self.cluster.requeues,
            name=f"{stage.kind}/{stage.name}",
        )
        ref = task.remote(root, job_stage(stage, self.cluster, threads), threads)
        self.refs.append(ref)
        return ref.future()

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self.refs:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:
                    pass
        if self.started:
            self.ray.shutdown()

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown(cancel=exc_type is not None)


def _ray_stage(root: str, stage: Stage, threads: int | None):
    return run_stage(root, stage, threads)


def make_pool(executor: str, root: str | Path, cluster: ClusterConfig | None):
    """The pool behind `grid.execute(executor="slurm" | "ray")`."""
    cluster = cluster or ClusterConfig()
    if executor == "slurm":
        return SlurmPool(root, cluster)
    if executor == "ray":
        return RayPool(root, cluster)
    raise ValueError(f"unknown cluster executor {executor!r}; valid: slurm, ray")
