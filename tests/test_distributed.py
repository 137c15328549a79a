"""`torchrun` on CPU (gloo, loopback): two processes train one model with the full-batch gradient, finish, and
only rank 0 writes."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from synthscale.train import checkpoint as ckpt
from synthscale.train import list_checkpoints, train
from tests.test_trainer import (
    assert_same_gradient,
    cfg_overrides,
    losses,
    reference_gradient,
    step_one_gradient,
    tiny_cfg,
)

# torch.distributed.run is torchrun itself, and always ships with torch: no skip, these tests must run
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]

# Ranks other than 0 run under an audit hook that records every write into the run dir (open for writing,
# mkdir, rename, remove); any such write fails the run with exit code 3.
AUDITED_MAIN = textwrap.dedent("""
    import os, sys
    run_dir = os.path.realpath(sys.argv[sys.argv.index("--out") + 1])
    writes = []

    def inside(path):
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(run_dir)
        except TypeError:
            return False  # a file descriptor

    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT
            writing = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & write_flags)
            if writing and inside(path):
                writes.append((event, str(path)))
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree") and inside(
            args[0]
        ):
            writes.append((event, str(args[0])))

    if os.environ["RANK"] != "0":
        sys.addaudithook(audit)
    from synthscale.cli import main
    rc = main(sys.argv[1:])
    if writes:
        print(f"rank {os.environ['RANK']} wrote into the run dir: {writes[:5]}", file=sys.stderr)
        rc = rc or 3
    sys.exit(rc)
""")


def torchrun(tmp_path, cfg, out, nproc=2, timeout=300):
    script = tmp_path / "audited_main.py"
    script.write_text(AUDITED_MAIN)
    sets = sum((["--set", o] for o in cfg_overrides(cfg)), [])
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "MASTER_ADDR": "127.0.0.1",
        "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        *TORCHRUN,
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(script),
        "train",
        "--out",
        str(out),
        "--quiet",
        "--threads",
        "1",
        *sets,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_process_ddp_gives_the_full_batch_gradient_and_only_rank0_writes(tmp_path):
    cfg = tiny_cfg(3, "train.grad_clip=0", "train.checkpoint_every=1")
    out = tmp_path / "ddp"
    result = torchrun(tmp_path, cfg, out)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "done.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert summary["train_flops"] == 3 * summary["flops_per_step"]  # FLOPs of the global batch, counted once
    assert json.loads((out / "env.json").read_text())["sessions"][0]["world_size"] == 2
    rng = ckpt.load_tensors(list_checkpoints(out)[-1].path, "rng")
    assert {"cpu.rank0", "cpu.rank1"} <= rng.keys()

    # the DDP gradient of step 0 is the gradient of the whole global batch computed by one process
    got, want = step_one_gradient(out, cfg), reference_gradient(cfg, pieces=2)
    assert_same_gradient(got, want, tol=1e-5)

    # and the run matches one process accumulating the same two micro-batches (up to summation order)
    single = tmp_path / "single"
    train(tiny_cfg(3, "train.grad_clip=0", "train.checkpoint_every=1", "train.grad_accum=2"), single, progress=False)
    a, b = (
        ckpt.load_tensors(list_checkpoints(out)[-1].path, "model"),
        ckpt.load_tensors(list_checkpoints(single)[-1].path, "model"),
    )
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    assert [x for _, x in losses(out)] == pytest.approx([x for _, x in losses(single)], rel=1e-5)


@pytest.mark.slow
def test_two_process_fsdp2_gradient_and_exact_resume(tmp_path):
    cfg = tiny_cfg(3, "train.grad_clip=0", "train.checkpoint_every=1", "train.parallel=fsdp")
    out = tmp_path / "fsdp"
    result = torchrun(tmp_path, cfg, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "done.json").read_text())["world_size"] == 2
    assert_same_gradient(step_one_gradient(out, cfg), reference_gradient(cfg, pieces=2), tol=1e-5)
    final = {g: ckpt.load_tensors(list_checkpoints(out)[-1].path, g) for g in ("model", "ema", "optimizer")}

    # sharded state goes back into the shards: drop the last checkpoint, resume, get the same bytes
    shutil.copytree(out, tmp_path / "again")
    again = tmp_path / "again"
    (again / "done.json").unlink()
    shutil.rmtree(list_checkpoints(again)[-1].path)
    result = torchrun(tmp_path, cfg, again)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((again / "env.json").read_text())["sessions"][-1]["resumed_from_step"] == 2
    for group, tensors in final.items():
        resumed = ckpt.load_tensors(list_checkpoints(again)[-1].path, group)
        assert resumed.keys() == tensors.keys() and all(torch.equal(resumed[k], tensors[k]) for k in tensors), group
