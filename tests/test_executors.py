"""Cluster executors: a study through submitit's local executor (a real 2-process gloo training run under
torchrun), the sbatch script a Slurm submission writes, requeue on preemption, Ray, and the errors."""

import builtins
import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

import synthscale.objectives  # noqa: F401  the registry, which configs read objective names from
from synthscale.config import ClusterConfig, ConfigError, RunConfig, StudyConfig, load, to_dict
from synthscale.study import executors as X
from synthscale.study.grid import Stage, execute, status_of
from tests.test_grid import graph

ROOT = Path(__file__).parents[1]
LOCAL = dict(local=True, gpus_per_node=0, stage_gpus=0, stage_cpus=1, cpus_per_proc=1)


def tiny_train_stage() -> Stage:
    cfg = load(RunConfig, ROOT / "configs/train/smoke.yaml", ["train.budget_flops=2e9", "train.batch_size=8"])
    return Stage("train", "smoke", "k-train", X.TRAIN_FN, {"run_config": to_dict(cfg)})


def test_torchrun_command_single_and_multi_node():
    one = X.torchrun_command("/s/run_config.json", "/s", 4, threads=2, python="py")
    assert one == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=4",
        "--standalone",
        "-m",
        "synthscale",
        "train",
        "--config",
        "/s/run_config.json",
        "--out",
        "/s",
        "--quiet",
        "--threads",
        "2",
    ]
    multi = X.torchrun_command("c.json", "out", 8, nnodes=2, rdzv_endpoint="gpu01:29517", rdzv_id="77")
    assert "--standalone" not in multi
    assert {"--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu01:29517", "--rdzv_id=77"} <= set(multi)
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        X.torchrun_command("c.json", "out", 8, nnodes=2)


def test_training_stages_go_through_torchrun_with_their_resources():
    cluster = ClusterConfig(
        procs_per_node=4, gpus_per_node=4, nodes_per_run=2, cpus_per_proc=6, stage_gpus=1, stage_cpus=3
    )
    train, other = tiny_train_stage(), graph(Path("log"))[0]
    job = X.job_stage(train, cluster, threads=2)
    assert job.id == train.id and job.fn == "synthscale.study.executors:torchrun_stage"
    assert job.kwargs["run_config"] == train.kwargs["run_config"]
    assert (job.kwargs["procs_per_node"], job.kwargs["nnodes"], job.kwargs["threads"]) == (4, 2, 2)
    assert X.job_stage(other, cluster, 2) is other
    assert X.job_resources(train, cluster) == {"nodes": 2, "gpus": 4, "cpus": 24}
    assert X.job_resources(other, cluster) == {"nodes": 1, "gpus": 1, "cpus": 3}


def test_cluster_config_errors():
    with pytest.raises(ConfigError, match="one process per GPU"):
        load(StudyConfig, None, ["cluster.procs_per_node=2", "cluster.gpus_per_node=4"])
    with pytest.raises(ConfigError, match="time_min"):
        load(StudyConfig, None, ["cluster.time_min=0"])
    with pytest.raises(ConfigError, match="valid choices"):
        load(StudyConfig, None, ["executor=kubernetes"])
    assert load(StudyConfig, None, ["executor=ray"]).executor == "ray"


def test_missing_extra_and_missing_slurm_say_what_to_do(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit":
            raise ImportError("No module named 'submitit'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_submitit)
    with pytest.raises(X.MissingExtra, match=r"synthscale\[scale\]"):
        X.make_pool("slurm", tmp_path, ClusterConfig())
    monkeypatch.setattr(builtins, "__import__", real_import)
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(ConfigError, match="cluster.local: true"):
        X.make_pool("slurm", tmp_path, ClusterConfig())
    with pytest.raises(ConfigError, match="nodes_per_run: 1"):
        X.make_pool("slurm", tmp_path, ClusterConfig(local=True, nodes_per_run=2))


def test_study_on_the_local_executor_with_a_two_process_training_run(tmp_path):
    """A failing stage, one blocked by it, and a real training stage: torchrun, 2 gloo processes."""
    pytest.importorskip("submitit")
    log = tmp_path / "log.txt"
    stages = [*graph(log)[1:3], tiny_train_stage()]  # toy_fail, and a stage that needs it
    cluster = ClusterConfig(**LOCAL, procs_per_node=2)
    states = execute(tmp_path / "study", stages, executor="slurm", threads=1, progress=False, cluster=cluster)
    assert [states[s.id] for s in stages] == ["failed", "blocked", "done"]
    assert "this run diverged" in json.loads((tmp_path / "study" / stages[0].id / "failed.json").read_text())["error"]
    run_dir = tmp_path / "study" / stages[-1].id
    done = json.loads((run_dir / "done.json").read_text())
    assert done["world_size"] == 2 and done["train_flops"] >= 2e9 and done["stage"] == stages[-1].id
    assert "--nproc_per_node=2" in (run_dir / "torchrun.log").read_text()
    assert json.loads((run_dir / "job.json").read_text())["local"] is True
    assert json.loads((run_dir / "run_config.json").read_text()) == stages[-1].kwargs["run_config"]

    jobs = sorted((tmp_path / "study" / "jobs").glob("*_submitted.pkl"))
    log.write_text("")
    again = execute(tmp_path / "study", stages, executor="slurm", threads=1, progress=False, cluster=cluster)
    assert again == states
    assert log.read_text().split() == ["fail"]  # only the failed stage ran again
    assert len(sorted((tmp_path / "study" / "jobs").glob("*_submitted.pkl"))) == len(jobs) + 1


def _fake_slurm(folder: Path) -> Path:
    """sbatch/srun/scancel stand-ins that record their calls; sbatch answers like Slurm does."""
    folder.mkdir()
    record = folder / "calls.txt"
    scripts = {
        "sbatch": f'echo "sbatch $@" >> {record}; cat "$1" >> {record}; echo "Submitted batch job 4242"',
        "scancel": f'echo "scancel $@" >> {record}',
        "srun": "exit 0",
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return record


def test_slurm_submission_asks_for_the_run_resources_and_cancels_on_interrupt(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    record = _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cluster = ClusterConfig(
        procs_per_node=4,
        gpus_per_node=4,
        nodes_per_run=2,
        cpus_per_proc=6,
        mem_gb=200,
        time_min=90,
        partition="gpu",
        account="lab",
        setup=["module load cuda"],
        slurm_args={"qos": "high"},
    )
    stage = tiny_train_stage()
    with pytest.raises(KeyboardInterrupt):
        with X.make_pool("slurm", tmp_path / "study", cluster) as pool:
            future = pool.submit_stage(str(tmp_path / "study"), stage, 1)
            deadline = time.time() + 60
            while "Submitted" not in (record.read_text() if record.exists() else "") and not pool.running:
                assert time.time() < deadline, "the watcher never submitted the job"
                time.sleep(0.1)
            raise KeyboardInterrupt  # the driver is interrupted: its jobs must not outlive it
    calls = record.read_text()
    for option in (
        "--nodes=2",
        "--gpus-per-node=4",
        "--cpus-per-task=24",
        "--ntasks-per-node=1",
        "--mem=200GB",
        "--time=90",
        "--partition=gpu",
        "--account=lab",
        "--qos=high",
        "--signal=USR2@90",
    ):
        assert f"#SBATCH {option}" in calls, option
    assert "module load cuda" in calls and "scancel 4242" in calls
    job = json.loads((tmp_path / "study" / stage.id / "job.json").read_text())
    assert job["job_id"] == "4242" and job["tasks"] == 2
    assert future.cancelled()


class _FakeJob:
    states = {"1": "RUNNING", "2": "COMPLETED", "3": "PENDING"}

    def __init__(self, folder, job_id, tasks):
        self.job_id, self.tasks = job_id, tasks
        if job_id == "boom":
            raise RuntimeError("sacct is not available")
        self.state = self.states[job_id]


def test_a_resumed_driver_reattaches_only_to_live_jobs_of_its_folder(tmp_path):
    info = {"job_id": "1", "folder": str(tmp_path), "local": False, "tasks": 2}
    job = X.alive_job(info, tmp_path, _FakeJob)
    assert job is not None and job.tasks == (0, 1)
    assert X.alive_job({**info, "job_id": "3"}, tmp_path, _FakeJob) is not None
    assert X.alive_job({**info, "job_id": "2"}, tmp_path, _FakeJob) is None  # finished: its markers tell
    assert X.alive_job({**info, "job_id": "boom"}, tmp_path, _FakeJob) is None
    assert X.alive_job({**info, "folder": "/elsewhere"}, tmp_path, _FakeJob) is None
    assert X.alive_job({**info, "local": True}, tmp_path, _FakeJob) is None
    assert X.alive_job(None, tmp_path, _FakeJob) is None


def sleepy(stage_dir, marker):
    """First attempt: wait to be preempted; the requeued attempt finishes."""
    marker = Path(marker)
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(120)
    return {"attempt": "second"}


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_finishes(tmp_path):
    pytest.importorskip("submitit")
    marker = tmp_path / "marker"
    stage = Stage("train", "sleepy", "k", "tests.test_executors:sleepy", {"marker": str(marker)})
    with X.make_pool("slurm", tmp_path / "study", ClusterConfig(**LOCAL)) as pool:
        future = pool.submit_stage(str(tmp_path / "study"), stage, 1)
        deadline = time.time() + 120
        while not marker.exists() or not pool.running:
            assert time.time() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # the pid is written: let the job reach its sleep
        os.kill(int(marker.read_text()), signal.SIGUSR2)  # what Slurm sends on preemption or before a timeout
        status, info = future.result(timeout=180)
    assert status == "done" and info["attempt"] == "second"
    assert status_of(tmp_path / "study", stage) == "done"


@pytest.mark.slow
def test_ray_executor_runs_the_same_graph(tmp_path):
    pytest.importorskip("ray")
    log = tmp_path / "log.txt"
    stages = graph(log)
    cluster = ClusterConfig(gpus_per_node=0, stage_gpus=0, stage_cpus=1, cpus_per_proc=1)
    states = execute(tmp_path / "study", stages, executor="ray", progress=False, cluster=cluster)
    assert [states[s.id] for s in stages] == ["done", "failed", "blocked", "done"]
    too_big = Stage("evaluate", "big", "k9", "tests.test_grid:toy_ok", {"value": 9, "log": str(log)})
    states = execute(
        tmp_path / "study",
        [too_big],
        executor="ray",
        progress=False,
        cluster=ClusterConfig(stage_cpus=4096, stage_gpus=0),
    )
    failure = json.loads((tmp_path / "study" / too_big.id / "failed.json").read_text())
    assert states[too_big.id] == "failed" and "4096 CPUs" in failure["error"]


@pytest.mark.slow
def test_tiny_study_completes_through_the_slurm_executor(tmp_path):
    pytest.importorskip("submitit")
    from synthscale.study.run import run_study
    from tests.test_study import SPEC, TINY

    cluster = [f"cluster.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in LOCAL.items()]
    slurm = run_study(SPEC, tmp_path / "slurm", [*TINY, "executor=slurm", *cluster], progress=False)
    assert set(slurm["states"].values()) == {"done"}
    for run_dir in (tmp_path / "slurm" / "train").iterdir():
        assert "--standalone" in (run_dir / "torchrun.log").read_text()
        assert json.loads((run_dir / "done.json").read_text())["world_size"] == 1


@pytest.mark.slow
def test_a_two_node_run_meets_through_the_c10d_rendezvous(tmp_path, monkeypatch):
    """Both "nodes" of a Slurm job on this machine: each runs torchrun_stage (one process each), they meet at
    the first node's endpoint and train one model (world size 2)."""
    import socket
    import threading
    from types import SimpleNamespace

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    nodes = {}
    monkeypatch.setattr(
        X,
        "_slurm_env",
        lambda: SimpleNamespace(
            num_nodes=2, node=nodes[threading.get_ident()], hostnames=["127.0.0.1", "127.0.0.1"], raw_job_id="7"
        ),
    )
    stage = X.job_stage(tiny_train_stage(), ClusterConfig(gpus_per_node=0, nodes_per_run=2, port=free - 7), 1)
    out, results = tmp_path / "run", {}

    def node(rank):
        nodes[threading.get_ident()] = rank
        results[rank] = X.torchrun_stage(out, **stage.kwargs)

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert results[0]["world_size"] == results[1]["world_size"] == 2
    assert f"--rdzv_endpoint=127.0.0.1:{free}" in (out / "torchrun.log").read_text()
    assert (out / "torchrun.node1.log").is_file()


def test_a_failed_torchrun_reports_the_workers_error_of_this_attempt_only(tmp_path):
    """The end of torchrun's log says only which rank died; the message must carry the worker's own error,
    and not a stale one from an earlier attempt appended to the same log."""
    (tmp_path / "torchrun.log").write_text("OldError: an earlier attempt's failure\n")
    bad = to_dict(load(RunConfig, ROOT / "configs/train/smoke.yaml", ["model.size=3x33"]))
    with pytest.raises(RuntimeError, match="torchrun exited with status 1") as err:
        X.torchrun_stage(tmp_path, bad, procs_per_node=2, threads=1)  # a log longer than an excerpt
    assert "3x33" in str(err.value) and "OldError" not in str(err.value)
    assert "OldError" in (tmp_path / "torchrun.log").read_text()  # the log itself keeps every attempt


def test_failure_excerpt_keeps_the_first_worker_error_and_torchruns_summary():
    progress = [f"step {i} loss 1.0" for i in range(200)]
    cause = ["terminate called after throwing an instance of 'gloo::IoException'", "  what():  Connection reset"]
    summary = [f"summary line {i}" for i in range(14)] + ["exitcode  : -6 (pid: 7) (SIGABRT)"]
    text = X.failure_excerpt("\n".join(progress[:50] + cause + progress[50:] + summary))
    lines = text.splitlines()
    assert lines[0] == "..." and lines[1:3] == cause and lines[-15:] == summary
    assert len(lines) == 1 + 25 + 1 + 15 and lines[26] == f"... ({200 - 50 - 23} lines)"
    assert X.failure_excerpt("\n".join(progress[:50] + summary)).splitlines()[1:] == summary  # no error: the end
    short = "\n".join(cause + summary)
    assert X.failure_excerpt(short) == short
