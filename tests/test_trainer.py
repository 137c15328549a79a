"""The FLOPs-budgeted trainer: schedule, milestones, data order, exact resume (in-process and after SIGKILL),
NaN handling, gradient accumulation, the run dir and the evaluation API."""

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synthscale.config import ConfigError, RunConfig, TrainConfig, load
from synthscale.data.latents import TextSpec
from synthscale.objectives import get_objective
from synthscale.train import NonFiniteLoss, list_checkpoints, load_generator, milestone_grid, train
from synthscale.train import checkpoint as ckpt
from synthscale.train.data import DataOrder, RandomLatents, derive_seed, generator, open_source, random_latent_spec
from synthscale.train.log import read_metrics
from synthscale.train.loop import lr_at, param_groups

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(steps: int, *overrides: str, latents: str = "continuous:4x4x4") -> RunConfig:
    """A 2x64 run on random latents whose budget is exactly `steps` optimizer steps."""
    base = [
        f"random_latents={latents}",
        "model.size=2x64",
        "model.text_layers=1",
        "data.size=40",
        "data.max_caption_tokens=8",
        "train.batch_size=8",
        "train.warmup_steps=2",
        "train.lr=1e-3",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "train.keep_last=100",
        "train.ema_decay=0.9",
    ]
    cfg = load(RunConfig, None, base + list(overrides))
    source = open_source(cfg)
    fps = get_objective(cfg.objective).train_flops(cfg.model, source.spec, source.text_spec, cfg.train.batch_size)
    cfg.train.budget_flops = float(fps * steps)
    return cfg


def cfg_overrides(cfg: RunConfig) -> list[str]:
    """The --set list that rebuilds `cfg` on a command line."""
    from synthscale.train.loop import _flatten

    return [f"{k}={json.dumps(v)}" for k, v in _flatten(dataclasses.asdict(cfg)).items()]


def final_tensors(run_dir, group="model"):
    return ckpt.load_tensors(list_checkpoints(run_dir)[-1].path, group)


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir)]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- pure parts


def test_lr_warmup_then_constant_or_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, schedule="constant")
    assert [lr_at(s, cfg, 20) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = TrainConfig(lr=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    lrs = [lr_at(s, cos, 12) for s in range(12)]
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # decays monotonically after warmup


def test_milestones_are_an_absolute_log_grid_ending_at_the_budget():
    cfg = TrainConfig(budget_flops=1e11, milestones_per_decade=2, first_milestone_flops=1e9)
    assert milestone_grid(cfg) == pytest.approx([1e9, 10**9.5, 1e10, 10**10.5, 1e11])
    other = TrainConfig(budget_flops=5e10, milestones_per_decade=2)  # first = budget / 100 = 5e8 → 10^9 next
    assert milestone_grid(other) == pytest.approx([1e9, 10**9.5, 1e10, 10**10.5, 5e10])
    with pytest.raises(ValueError, match="first_milestone_flops"):
        TrainConfig(budget_flops=1e9, first_milestone_flops=2e9)


def test_data_order_is_a_seeded_permutation_per_epoch():
    order = DataOrder(size=10, batch_size=4, seed=3)
    stream = torch.cat([order.batch(s) for s in range(5)])  # 20 items = two epochs, step 2 straddles them
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # each epoch reshuffled
    assert torch.equal(DataOrder(10, 4, 3).batch(3), order.batch(3))  # a pure function of (seed, step)
    assert not torch.equal(DataOrder(10, 4, 4).batch(0), order.batch(0))
    assert order.position(3) == {"samples_seen": 12, "epoch": 1, "offset_in_epoch": 2}
    assert derive_seed(0, "loss", 1, 2) != derive_seed(0, "loss", 2, 1)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, rest = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert {p.dim() for p in decay["params"]} == {2} and {p.dim() for p in rest["params"]} == {1}
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_random_latents_spec_and_errors():
    spec = random_latent_spec("discrete:4x4:512")
    assert spec.kind == "discrete" and spec.vocab_size == 512 and spec.tokens == 16
    src = RandomLatents(spec, TextSpec(30, 6), size=12)
    batch = src.get_batch(torch.tensor([0, 5]), generator(0))
    assert batch["latents"].shape == (2, 4, 4) and batch["latents"].max() < 512 and batch["text"].shape == (2, 6)
    with pytest.raises(ConfigError, match="continuous:CxHxW"):
        random_latent_spec("gaussian:4x4")
    with pytest.raises(ConfigError, match="autoencoder="):
        open_source(RunConfig())


# ---------------------------------------------------------------------------------------------- a run


def test_run_dir_layout_milestones_and_idempotence(tmp_path):
    cfg = tiny_cfg(6, "train.milestones_per_decade=8")
    summary = train(cfg, tmp_path, progress=False)
    assert summary["steps"] == 6 and summary["train_flops"] == 6 * summary["flops_per_step"]
    assert summary["train_flops"] >= cfg.train.budget_flops
    for name in ("config.json", "env.json", "metrics.jsonl", "done.json"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    env = json.loads((tmp_path / "env.json").read_text())["sessions"][0]
    assert env["torch"] == torch.__version__ and "git_revision" in env
    assert json.loads((tmp_path / "config.json").read_text())["train"]["budget_flops"] == cfg.train.budget_flops
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["train_flops"] == r["step"] * summary["flops_per_step"] for r in records)

    infos = list_checkpoints(tmp_path)
    milestones = [i for i in infos if i.milestone is not None]
    assert [i.milestone for i in milestones] == list(range(len(milestones))) and len(milestones) >= 3
    assert all(i.train_flops >= i.milestone_flops for i in milestones)
    assert infos[-1].is_final and infos[-1].step == 6 and infos[-1].milestone_flops == cfg.train.budget_flops
    assert [i.step for i in infos if i.milestone is None] == [2, 4, 6][: len([i for i in infos if i.milestone is None])]
    for info in infos:  # raw and EMA weights in every checkpoint
        assert {"model.safetensors", "ema.safetensors"} <= {p.name for p in info.path.iterdir()}

    mtime = (tmp_path / "done.json").stat().st_mtime_ns
    assert train(cfg, tmp_path, progress=False) == summary  # a finished run returns at once
    assert (tmp_path / "done.json").stat().st_mtime_ns == mtime and len(read_metrics(tmp_path)) == 6


def test_corrupt_newest_checkpoint_is_skipped_and_resume_is_exact(tmp_path):
    cfg = tiny_cfg(7)
    train(cfg, tmp_path / "a", progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = tmp_path / "b"
    (b / "done.json").unlink()
    newest = list_checkpoints(b)[-1].path  # step 7, the final one
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (newest / "model.safetensors").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint.*step_00000007"):
        train(cfg, b, progress=False)  # resumes from step 6 and re-trains step 7
    assert json.loads((b / "env.json").read_text())["sessions"][-1]["resumed_from_step"] == 6
    for group in ("model", "ema", "optimizer"):
        assert same_tensors(final_tensors(tmp_path / "a", group), final_tensors(b, group)), group
    assert losses(b) == losses(tmp_path / "a")


def test_grad_accumulation_gives_the_full_batch_gradient(tmp_path):
    cfg = tiny_cfg(1, "train.grad_accum=2", "train.grad_clip=0", "train.checkpoint_every=1")
    train(cfg, tmp_path, progress=False)
    got = step_one_gradient(tmp_path, cfg)
    want = reference_gradient(cfg, pieces=2)
    assert got.keys() == want.keys()
    assert_same_gradient(got, want)
    assert read_metrics(tmp_path)[-1]["samples_seen"] == 8  # the effective batch is batch_size, not a micro-batch


def step_one_gradient(run_dir, cfg) -> dict[str, torch.Tensor]:
    """The gradient of step 0, read back from the step-1 checkpoint: AdamW's first moment is (1 − β1)·g."""
    info = next(i for i in list_checkpoints(run_dir) if i.step == 1)
    tensors = ckpt.load_tensors(info.path, "optimizer")
    beta1 = cfg.train.betas[0]
    return {
        k.removeprefix("state.model.").removesuffix(".exp_avg"): v / (1 - beta1)
        for k, v in tensors.items()
        if k.endswith(".exp_avg")
    }


def reference_gradient(cfg: RunConfig, pieces: int) -> dict[str, torch.Tensor]:
    """One process, the whole global batch of step 0, one backward: mean of the pieces' losses, each piece
    with the noise the trainer gives it."""
    objective, source = get_objective(cfg.objective), open_source(cfg)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = objective.build_model(cfg.model, source.spec, source.text_spec)
    indices = DataOrder(len(source), cfg.train.batch_size, cfg.seed).batch(0)
    m = cfg.train.batch_size // pieces
    total = 0
    for p in range(pieces):
        batch = source.get_batch(indices[p * m : (p + 1) * m], generator(derive_seed(cfg.seed, "data", 0, p)))
        total = total + objective.loss(
            model, batch["latents"], batch["text"], generator(derive_seed(cfg.seed, "loss", 0, p))
        )
    (total / pieces).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same_gradient(got: dict, want: dict, tol: float = 1e-5) -> None:
    g = torch.cat([got[k].flatten() for k in sorted(want)])
    w = torch.cat([want[k].flatten() for k in sorted(want)])
    ratio = (g.norm() / w.norm()).item()
    assert abs(ratio - 1) <= tol, ratio
    assert ((g - w).norm() / w.norm()).item() <= tol
    assert (g @ w / (g.norm() * w.norm())).item() >= 1 - tol


class NaNAt(RandomLatents):
    """A source whose batches turn to NaN from the `at`-th call on (for `count` calls): a corrupt record."""

    def __init__(self, base: RandomLatents, at: int, count: int = 10**9):
        self.__dict__.update(base.__dict__)
        self.at, self.count, self.calls = at, count, 0

    def get_batch(self, indices, generator=None):
        out = super().get_batch(indices, generator)
        if self.at <= self.calls < self.at + self.count:
            out["latents"] = out["latents"] * float("nan")
        self.calls += 1
        return out


def test_nan_loss_stops_naming_the_step_and_keeps_an_intact_checkpoint(tmp_path):
    cfg = tiny_cfg(8, "train.checkpoint_every=3")
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 5 .*nan_policy=skip"):
        train(cfg, tmp_path, progress=False, source=NaNAt(open_source(cfg), at=5))
    info, meta = ckpt.latest(tmp_path)  # fully verified
    assert info.step == 5 and meta["stopped"].startswith("loss is nan")
    weights = ckpt.load_tensors(info.path, "model")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert 3 in [i.step for i in list_checkpoints(tmp_path)]  # the earlier checkpoint is untouched
    assert not (tmp_path / "done.json").exists()
    # the saved weights are those before step 5: resuming with clean data continues as if nothing happened
    clean = tmp_path / "clean"
    train(cfg, clean, progress=False)
    assert losses(clean)[:5] == losses(tmp_path)[:5]
    train(cfg, tmp_path, progress=False)
    assert same_tensors(final_tensors(clean), final_tensors(tmp_path))


def test_nan_skip_policy_counts_and_continues(tmp_path):
    cfg = tiny_cfg(5, "train.nan_policy=skip", "train.max_skipped=2")
    summary = train(cfg, tmp_path, progress=False, source=NaNAt(open_source(cfg), at=2, count=1))
    assert summary["skipped"] == 1 and summary["steps"] == 5
    assert read_metrics(tmp_path)[-1]["skipped"] == 1
    assert all(torch.isfinite(t).all() for t in final_tensors(tmp_path).values())
    with pytest.raises(NonFiniteLoss, match=r"step 3 .*train.max_skipped"):
        train(cfg, tmp_path / "many", progress=False, source=NaNAt(open_source(cfg), at=1))


def test_bf16_autocast_trains_fp32_weights(tmp_path):
    summary = train(tiny_cfg(3, "train.precision=bf16"), tmp_path, progress=False)
    assert math.isfinite(summary["final_loss"])
    assert all(t.dtype == torch.float32 for t in final_tensors(tmp_path).values())


@pytest.mark.parametrize("name", ["masked", "autoregressive"])
@pytest.mark.parametrize("factorised", [False, True])
def test_token_objectives_train(tmp_path, name, factorised):
    overrides = [f"objective.name={name}"] + (["objective.factorised=true"] if factorised else [])
    summary = train(tiny_cfg(2, *overrides, latents="discrete:4x4:64"), tmp_path, progress=False)
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    loaded = load_generator(tmp_path)  # the checkpoint's latent spec carries the levels a factorised head needs
    assert loaded.latent_spec.levels == (2,) * 6 and loaded.model.head.out_features == (12 if factorised else 64)


def test_bad_setups_are_clear_errors(tmp_path):
    cfg = tiny_cfg(2)
    train(cfg, tmp_path / "run", progress=False)
    changed = tiny_cfg(2, "train.lr=0.5")
    with pytest.raises(ConfigError, match=r"different config \(train.lr: 0.001 → 0.5"):
        train(changed, tmp_path / "run", progress=False)
    (tmp_path / "run" / "done.json").unlink()
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train(cfg, tmp_path / "run", resume=False, progress=False)
    with pytest.raises(ConfigError, match="batch_size 8 must divide into world size 1 × train.grad_accum 3"):
        train(tiny_cfg(1, "train.grad_accum=3"), tmp_path / "odd", progress=False)
    with pytest.raises(ConfigError, match="budget_flops must be > 0"):
        load(RunConfig, None, ["train.budget_flops=0"])


def test_load_generator_gives_ema_or_raw_weights_of_any_checkpoint(tmp_path):
    cfg = tiny_cfg(4)
    train(cfg, tmp_path, progress=False)
    infos = list_checkpoints(tmp_path)
    ema, raw = load_generator(tmp_path, weights="ema"), load_generator(tmp_path, infos[-1].step, weights="raw")
    assert ema.checkpoint == raw.checkpoint == infos[-1] and ema.latent_spec == open_source(cfg).spec
    assert not ema.model.training
    w_ema, w_raw = ema.model.state_dict(), raw.model.state_dict()
    assert not same_tensors(w_ema, w_raw)
    assert same_tensors(w_raw, final_tensors(tmp_path))
    early = load_generator(tmp_path, infos[0])
    assert early.checkpoint.step == infos[0].step
    text = open_source(cfg).get_batch(torch.arange(2))["text"]
    out = ema.objective.sample(ema.model, text, steps=2, cfg_scale=1.0, generator=generator(0))
    assert out.shape == (2, 4, 4, 4) and torch.isfinite(out).all()
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 99"):
        load_generator(tmp_path, 99)


def test_cli_train_prints_the_summary(tmp_path, capsys):
    from synthscale.cli import main

    cfg = tiny_cfg(2)
    sets = sum((["--set", o] for o in cfg_overrides(cfg) if not o.startswith("train.budget_flops=")), [])
    assert main(["train", "--out", str(tmp_path), "--quiet", "--budget", str(cfg.train.budget_flops), *sets]) == 0
    assert "done: 2 steps" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- SIGKILL


def _train_cmd(cfg: RunConfig, out: Path) -> list[str]:
    sets = sum((["--set", o] for o in cfg_overrides(cfg)), [])
    return [sys.executable, "-m", "synthscale", "train", "--out", str(out), "--quiet", "--threads", "1", *sets]


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(tmp_path):
    cfg = tiny_cfg(24, "train.checkpoint_every=4", "train.milestones_per_decade=2")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    train(cfg, tmp_path / "whole", progress=False)  # the uninterrupted reference (same 1-thread CPU math)

    kill_at = random.Random().randint(3, 20)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(cfg, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if len(read_metrics(killed)) >= kill_at:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_done = len(read_metrics(killed))
    assert not (killed / "done.json").exists(), "the run finished before it was killed"
    print(f"killed at step ≈{steps_done} (target {kill_at})")

    subprocess.run(_train_cmd(cfg, killed), check=True, env=env, capture_output=True, timeout=300)
    sessions = json.loads((killed / "env.json").read_text())["sessions"]
    assert len(sessions) == 2 and 0 < sessions[1]["resumed_from_step"] <= steps_done
    for group in ("model", "ema", "optimizer"):
        assert same_tensors(final_tensors(tmp_path / "whole", group), final_tensors(killed, group)), group
    assert losses(killed) == losses(tmp_path / "whole") and len(losses(killed)) == 24
    whole_ms = [(i.milestone, i.step) for i in list_checkpoints(tmp_path / "whole") if i.milestone is not None]
    assert whole_ms == [(i.milestone, i.step) for i in list_checkpoints(killed) if i.milestone is not None]


def test_run_on_an_autoencoder_latent_cache(tmp_path):
    """The config names an autoencoder dir; the trainer builds its latent cache once and trains on it."""
    from synthscale.autoencoders import build_autoencoder, save_autoencoder
    from synthscale.config import AutoencoderConfig, DataConfig

    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(
        name="kl-tiny", kind="kl", widths=[8, 8, 8], latent_channels=4, data=DataConfig(resolution=16)
    )
    save_autoencoder(build_autoencoder(ae_cfg), tmp_path / "ae")  # untrained weights serve the plumbing
    sets = [
        f"autoencoder={tmp_path / 'ae'}",
        f"cache_root={tmp_path / 'cache'}",
        "data.resolution=16",
        "data.size=24",
        "model.size=2x64",
        "model.text_layers=1",
        "train.batch_size=8",
        "train.budget_flops=1",
        "train.log_every=1",
    ]
    summary = train(load(RunConfig, None, sets), tmp_path / "run", progress=False)
    assert summary["steps"] == 1 and math.isfinite(summary["final_loss"])
    assert len(list((tmp_path / "cache").glob("*/cache.json"))) == 1
    gen = load_generator(tmp_path / "run")
    assert (gen.latent_spec.kind, gen.latent_spec.channels, gen.latent_spec.height) == ("continuous", 4, 4)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_train_configs_load(path):
    cfg = load(RunConfig, path)
    assert cfg.train.budget_flops > 0 and (cfg.autoencoder or cfg.random_latents)


@pytest.mark.slow
def test_compiled_model_trains_like_eager(tmp_path):
    """train.compile=true (inductor; minutes of compiling on a small CPU) follows the eager run's losses."""
    train(tiny_cfg(3), tmp_path / "eager", progress=False)
    train(tiny_cfg(3, "train.compile=true"), tmp_path / "compiled", progress=False)
    assert [x for _, x in losses(tmp_path / "compiled")] == pytest.approx(
        [x for _, x in losses(tmp_path / "eager")], rel=1e-5
    )


def test_disk_full_mid_run_keeps_earlier_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
    import errno

    from synthscale import atomic
    from synthscale.train import CheckpointWriteFailed

    cfg = tiny_cfg(6, "train.milestones_per_decade=1")
    train(cfg, tmp_path / "whole", progress=False)
    real, calls = atomic.save_safetensors, []

    def fills_up(path, tensors, metadata=None):
        calls.append(path)
        if "step_00000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors, metadata)

    monkeypatch.setattr(atomic, "save_safetensors", fills_up)
    run = tmp_path / "full"
    with pytest.raises(CheckpointWriteFailed, match="step 4 could not be written.*earlier checkpoints are intact"):
        train(cfg, run, progress=False)
    assert list_checkpoints(run)[-1].step == 2 and not list((run / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(atomic, "save_safetensors", real)  # space freed: the same call resumes
    train(cfg, run, progress=False)
    assert same_tensors(final_tensors(run), final_tensors(tmp_path / "whole")) and losses(run) == losses(
        tmp_path / "whole"
    )
