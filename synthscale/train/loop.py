"""The FLOPs-budgeted generator trainer.

`train(run_cfg, run_dir)` trains one (objective, size, data size, autoencoder) until the analytic training
FLOPs reach `train.budget_flops`, writing checkpoints at log-spaced FLOPs milestones so one run gives a whole
loss/quality-vs-compute curve. Killed at any point, it resumes from its newest intact checkpoint and ends with
bitwise the same weights and loss history as a run never interrupted (same seed, CPU fp32, same world size ×
grad_accum; GPU kernels may be nondeterministic).

Run dir layout (only rank 0 writes):

    RUN_DIR/
        config.json          the resolved RunConfig
        latents.json         what the latents come from (autoencoder name, weights hash): see train/location.py
        env.json             one entry per session: versions, device, world size, git revision, and the step
                             path it trained on (eager or compiled, with the numbers it was chosen by)
        metrics.jsonl        a record every `log_every` steps: step, train_flops, loss (mean over the window),
                             lr, grad_norm, samples_seen, epoch, skipped, images_per_s, seconds
        tensorboard/         the same scalars as TensorBoard events
        checkpoints/         step_XXXXXXXX/ folders (see train/checkpoint.py): milestones, the final one and the
                             newest `keep_last` resume checkpoints; each holds raw + EMA weights, optimizer,
                             RNG states, step, FLOPs used, data position
        done.json            the summary, written when the budget is reached; a finished run returns it at once

One optimizer step reads a global batch of `batch_size` examples, split into world × grad_accum micro-batches
("pieces"); rank r runs pieces r·A … r·A + A − 1. Each piece's examples and noise come from generators seeded by
(seed, step, piece), so neither a resume nor the number of processes moves a random draw.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthscale import atomic
from synthscale.compute.schedule import warmup_cosine
from synthscale.config import (
    ConfigError,
    RunConfig,
    TrainConfig,
    canonical,
    config_hash,
    from_stored,
    to_dict,
)
from synthscale.data.latents import TextSpec
from synthscale.train import checkpoint as ckpt
from synthscale.train import distributed as D
from synthscale.train.data import DataOrder, derive_seed, generator, open_source
from synthscale.train.ema import EMA
from synthscale.train.fastpath import StepPath, graph_key, keep_freed_memory
from synthscale.train.location import LOCATION_KEYS, record_latents, relocate
from synthscale.train.log import RunLogger, environment
from synthscale.train.network import build_network

DONE = "done.json"
# keys that may change between sessions of one run: they do not touch the math
RESUMABLE_CHANGES = {"train.log_every", "train.checkpoint_every", "train.keep_last", "train.fast_path"}


class TrainingStopped(RuntimeError):
    """A run that cannot go on; the message says why and what is kept. Run the same command again to resume."""


class NonFiniteLoss(TrainingStopped):
    """The loss (or gradient norm) became NaN/inf; the message names the step and the intact checkpoint."""


class CheckpointWriteFailed(TrainingStopped):
    """A checkpoint could not be written (e.g. a full disk); earlier checkpoints are untouched."""


# ---------------------------------------------------------------------------------------------- schedule


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup over `warmup_steps`, then constant, or cosine down to lr·min_lr_ratio at the last step."""
    decay = cfg.schedule == "cosine"
    return warmup_cosine(step, cfg.lr, cfg.warmup_steps, total_steps - 1, cfg.min_lr_ratio, decay)


def milestone_grid(cfg: TrainConfig) -> list[float]:
    """FLOPs at which milestone checkpoints are written: 10^(k / milestones_per_decade) from the first milestone
    up to the budget, then the budget itself. The grid is absolute, so runs of different budgets share points."""
    m, budget = cfg.milestones_per_decade, cfg.budget_flops
    first = cfg.first_milestone_flops if cfg.first_milestone_flops is not None else budget / 100
    k = math.ceil(math.log10(first) * m - 1e-9)
    grid = []
    while (f := 10 ** (k / m)) < budget * (1 - 1e-9):
        grid.append(f)
        k += 1
    return grid + [budget]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices (dim ≥ 2), none on biases, norms and gains (nanoGPT)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`, with the fused kernel on GPUs and CPUs (on a CPU 3× faster than foreach)."""
    fused = next(model.parameters()).device.type in ("cuda", "cpu") or None
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


class LossModule(nn.Module):
    """The objective's loss as a module's forward, so DDP/FSDP see one forward per micro-batch even though
    the objective calls the network's methods (encode_text, ...) directly."""

    def __init__(self, objective, model: nn.Module):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, latents: torch.Tensor, text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.objective.loss(self.model, latents, text, gen)


# ---------------------------------------------------------------------------------------------- run state


@dataclass
class TrainState:
    """Everything beyond tensors that a checkpoint must restore."""

    step: int = 0  # optimizer steps taken (skipped batches included)
    train_flops: int = 0
    skipped: int = 0  # batches skipped for a non-finite loss (nan_policy=skip)
    window_loss: float = 0.0  # loss sum since the last metrics record
    window_steps: int = 0
    window_grad_norm: float = float("nan")  # last grad norm in the window
    last_loss: float = float("nan")  # global mean loss of the last step
    milestones: int = 0  # milestone checkpoints written so far (the next one's index)
    train_seconds: float = 0.0  # wall time spent in steps over all sessions


def _check_config(run_dir: Path, run_cfg: RunConfig) -> None:
    """A run dir belongs to one config; only log/checkpoint cadence, and the latents' locations (checked by
    `relocate`), may change between sessions. Both configs are compared as `canonical` (every field, so a changed
    default is refused; a field added later at its neutral value is left out, so a run written before it existed
    still resumes)."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    stored = from_stored(RunConfig, json.loads(path.read_text()), source=str(path))
    old, new = _flatten(_plain(canonical(stored))), _flatten(_plain(canonical(run_cfg)))
    free = RESUMABLE_CHANGES | set(LOCATION_KEYS)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in free)
    if changed:
        detail = ", ".join(f"{k}: {old.get(k, '(absent)')!r} → {new.get(k, '(absent)')!r}" for k in changed[:5])
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({detail}); "
            "use a new --out directory, or the run's own config to resume it"
        )


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data))  # as it would read back (tuples → lists)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- checkpoints


def _full_state(loss_module: LossModule, optimizer, ema: EMA) -> tuple[dict, dict, dict, dict]:
    """(model, EMA, optimizer tensors, optimizer rest) as full, unsharded CPU tensors. Collective under
    DDP/FSDP: every rank calls it; with FSDP only rank 0 receives the tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = {k.removeprefix("model."): v for k, v in get_model_state_dict(loss_module, options=opts).items()}
    opt_sd = get_optimizer_state_dict(loss_module, optimizer, options=opts)
    opt_tensors, opt_rest = ckpt.optimizer_to_tensors(opt_sd) if opt_sd else ({}, {})
    return model_sd, ema.full_state_dict(), opt_tensors, opt_rest


def _save(run_dir: Path, d: D.Dist, loss_module, optimizer, ema: EMA, prog: TrainState, extra: dict) -> Path | None:
    model_sd, ema_sd, opt_tensors, opt_rest = _full_state(loss_module, optimizer, ema)
    rng = D.rng_states(d)
    path, error = None, None
    if d.is_main:
        meta = {**extra, **asdict(prog), "optimizer": opt_rest, "ema_updates": ema.updates, "world_size": d.world}
        try:
            path = ckpt.save(
                run_dir / "checkpoints",
                prog.step,
                {"model": model_sd, "ema": ema_sd, "optimizer": opt_tensors, "rng": rng},
                meta,
            )
        except OSError as e:
            error = e
    if not D.broadcast_int(int(error is None), d):  # every rank stops together
        raise CheckpointWriteFailed(
            f"the checkpoint of step {prog.step} could not be written ({error or 'on rank 0'}); earlier checkpoints "
            f"are intact — free disk space and run the same command to resume"
        ) from error
    return path


def _restore(info_path: Path, d: D.Dist, loss_module, optimizer, ema: EMA) -> tuple[TrainState, dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    meta = ckpt.read_meta(info_path, verify=False)  # rank 0 verified it; all ranks read the same bytes
    model_sd = {"model." + k: v for k, v in ckpt.load_tensors(info_path, "model").items()}
    opts = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(loss_module, model_sd, options=opts)
    opt_sd = ckpt.optimizer_from_tensors(ckpt.load_tensors(info_path, "optimizer"), meta["optimizer"])
    set_optimizer_state_dict(loss_module, optimizer, opt_sd, options=opts)
    ema.load_full_state_dict(ckpt.load_tensors(info_path, "ema"), meta["ema_updates"])
    if not D.set_rng_states(ckpt.load_tensors(info_path, "rng"), d):
        torch.manual_seed(derive_seed(0, "rank-rng", d.rank, meta["step"]))
    fields = TrainState.__dataclass_fields__
    return TrainState(**{k: meta[k] for k in fields}), meta


# ---------------------------------------------------------------------------------------------- the loop


def train(
    run_cfg: RunConfig, run_dir: str | Path, resume: bool = True, progress: bool = True, *, source=None, objective=None
) -> dict[str, Any]:
    """Train `run_cfg` into `run_dir` until its FLOPs budget; returns the summary (also RUN_DIR/done.json).

    Idempotent: a finished run returns its summary at once; an interrupted one resumes from its newest intact
    checkpoint (`resume=False` refuses a run dir that already has checkpoints). `source` (a latent source) and
    `objective` replace what the config names — for callers that already hold them, and for tests.
    Under torchrun each process calls this; they train one model together (DDP, or FSDP2 with train.parallel).
    """
    run_dir = Path(run_dir)
    _check_config(run_dir, run_cfg)
    relocate(run_dir, run_cfg)
    done = _read_json(run_dir / DONE)
    if done is not None:
        return done
    d = D.setup(run_cfg.train.device)
    try:
        return _train(run_cfg, run_dir, d, resume, progress, source, objective)
    finally:
        D.teardown(d)


def _train(
    run_cfg: RunConfig, run_dir: Path, d: D.Dist, resume: bool, show_progress: bool, source, objective
) -> dict[str, Any]:
    """resume → (step → non-finite policy → log → milestone) until the budget → summary."""
    run = _Session.start(run_cfg, run_dir, d, source, objective)
    run.resume(resume)
    run.open_log(show_progress)
    try:
        while run.state.step < run.total_steps:
            t0, cpu0 = time.perf_counter(), time.process_time()
            lr, loss, grad_norm = run.step()
            run.observe_step(time.perf_counter() - t0, time.process_time() - cpu0)
            run.account(loss, grad_norm)
            run.log(lr, t0)
            run.milestone()
    finally:
        run.logger.close()
    return run.finish()


# Rank 0 tells every rank what to resume from: a checkpoint's step, or one of these.
_FRESH, _REFUSED = -1, -2


@dataclass
class _Session:
    """One session of a run on this process: what was built for it and where training stands."""

    run_cfg: RunConfig
    run_dir: Path
    d: D.Dist
    objective: Any
    source: Any
    model: nn.Module
    loss_module: LossModule
    wrapped: nn.Module  # loss_module under DDP/FSDP (and torch.compile when the step path says so)
    optimizer: torch.optim.Optimizer
    ema: EMA
    encoder_facts: dict[str, Any]
    text_spec: TextSpec
    flops_per_step: int
    total_steps: int
    grid: list[float]  # milestone FLOPs
    order: DataOrder
    state: TrainState = field(default_factory=TrainState)
    resumed: bool = False  # this session continues from a checkpoint
    logger: RunLogger | None = None
    last_point: int | None = None  # index of the last milestone grid point written
    window_start: float = 0.0  # throughput window: since the last metrics record
    window_images: int = 0
    eager: nn.Module | None = None  # loss_module under DDP/FSDP, never compiled
    path: StepPath | None = None  # eager or compiled step: see train/fastpath.py
    heap_kept: bool = False  # glibc keeps freed memory for the next step (CPU): see fastpath.keep_freed_memory

    @property
    def cfg(self) -> TrainConfig:
        return self.run_cfg.train

    @classmethod
    def start(cls, run_cfg: RunConfig, run_dir: Path, d: D.Dist, source, objective) -> _Session:
        """Build the model, optimizer, EMA and data order; count the FLOPs of a step."""
        cfg = run_cfg.train
        if cfg.batch_size % (d.world * cfg.grad_accum):
            raise ConfigError(
                f"train.batch_size {cfg.batch_size} must divide into world size {d.world} × "
                f"train.grad_accum {cfg.grad_accum} equal micro-batches"
            )
        if objective is None:
            from synthscale.objectives import get_objective

            objective = get_objective(run_cfg.objective)
        if source is None:
            source = open_source(run_cfg, "train", d.is_main, lambda: D.barrier(d), d.device)
        torch.manual_seed(derive_seed(run_cfg.seed, "init"))  # the same initial weights on every rank and session
        # the learned caption encoder, or the frozen one of data.text_encoder (its FLOPs then in text_spec)
        model, text_spec, encoder_facts = build_network(objective, run_cfg, source.spec, source.text_spec)
        model = model.to(d.device)
        loss_module = LossModule(objective, model)
        eager = D.wrap(loss_module, d, cfg.parallel)
        wrapped = torch.compile(eager) if cfg.compile else eager
        optimizer, ema = build_optimizer(model, cfg), EMA(model, cfg.ema_decay, cfg.ema_warmup)
        flops_per_step = int(objective.train_flops(run_cfg.model, source.spec, text_spec, cfg.batch_size))
        if flops_per_step <= 0:
            raise ConfigError(f"objective {run_cfg.objective.name!r} reports {flops_per_step} FLOPs per step")
        return cls(
            run_cfg=run_cfg,
            run_dir=run_dir,
            d=d,
            objective=objective,
            source=source,
            model=model,
            loss_module=loss_module,
            wrapped=wrapped,
            optimizer=optimizer,
            ema=ema,
            encoder_facts=encoder_facts,
            text_spec=text_spec,
            flops_per_step=flops_per_step,
            total_steps=math.ceil(cfg.budget_flops / flops_per_step),
            grid=milestone_grid(cfg),
            order=DataOrder(len(source), cfg.batch_size, run_cfg.seed),
            eager=eager,
            heap_kept=d.device.type == "cpu" and keep_freed_memory(),
        )

    # ------------------------------------------------------------------------------------------ resume

    def resume(self, allowed: bool) -> None:
        """Rank 0 picks the newest intact checkpoint; every rank loads it (or starts fresh, or refuses alike)."""
        d, run_dir = self.d, self.run_dir
        step = _FRESH
        if d.is_main:
            ckpt.remove_stale(run_dir)
            found = ckpt.latest(run_dir) if allowed else None
            refused = not allowed and ckpt.list_checkpoints(run_dir)
            step = found[0].step if found else (_REFUSED if refused else _FRESH)
        step = D.broadcast_int(step, d)
        if step == _REFUSED:
            raise ConfigError(f"{run_dir} already has checkpoints; resume it, or use a new --out directory")
        self.resumed = step != _FRESH
        if self.resumed:
            path = ckpt.checkpoint_dir(run_dir / "checkpoints", step)
            self.state, meta = _restore(path, d, self.loss_module, self.optimizer, self.ema)
            if meta["flops_per_step"] != self.flops_per_step:
                raise ConfigError(
                    f"{path} was trained at {meta['flops_per_step']} FLOPs/step, the config now gives "
                    f"{self.flops_per_step}; the FLOPs accounting changed — start a new run"
                )
        self.last_point = next(
            (i for i in reversed(range(len(self.grid))) if self.grid[i] <= self.state.train_flops), None
        )
        mode = "compile" if self.cfg.compile else self.cfg.fast_path
        key = graph_key(
            to_dict(self.run_cfg.objective),
            to_dict(self.run_cfg.model),
            asdict(self.source.spec),
            asdict(self.text_spec),
            self.cfg.batch_size // (d.world * self.cfg.grad_accum),
            self.cfg.precision,
            d.device.type,
            d.world,
            self.cfg.parallel,
        )
        self.path = StepPath(mode, self.total_steps - self.state.step, key)

    def open_log(self, show_progress: bool) -> None:
        """Write the run's files (config, latents, sessions) and open the metrics log."""
        d, run_dir, state = self.d, self.run_dir, self.state
        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_json(run_dir / "config.json", to_dict(self.run_cfg))
            identity = getattr(self.source, "identity", None)  # a latent cache knows its autoencoder
            record_latents(run_dir, identity["autoencoder"] if identity else None)
            sessions = (_read_json(run_dir / "env.json") or {}).get("sessions", [])
            env = {**environment(d.device, d.world), "resumed_from_step": state.step}
            atomic.write_json(run_dir / "env.json", {"sessions": [*sessions, env]})
        self.logger = RunLogger(run_dir, d.is_main, state.step, self.total_steps, self.cfg.budget_flops, show_progress)
        if self.resumed:
            self.logger.write(f"resumed {run_dir} at step {state.step} ({state.train_flops:.3g} FLOPs)")
        self.window_start, self.window_images = time.perf_counter(), 0
        self.wrapped.train()
        if self.path.phase == "done":  # forced by the config: nothing to measure
            self._record_path()

    # ------------------------------------------------------------------------------------------ a step

    def step(self) -> tuple[float, float, float]:
        """One optimizer step over the global batch: (lr, global mean loss, gradient norm). The update and the
        EMA only happen when both are finite."""
        cfg, d, s, seed = self.cfg, self.d, self.state.step, self.run_cfg.seed
        lr = lr_at(s, cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        indices, micro = self.order.batch(s), cfg.batch_size // (d.world * cfg.grad_accum)
        autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else None
        loss_sum = torch.zeros((), device=d.device)
        for a in range(cfg.grad_accum):
            piece = d.rank * cfg.grad_accum + a
            rows = indices[piece * micro : (piece + 1) * micro]
            batch = self.source.get_batch(rows, generator(derive_seed(seed, "data", s, piece)))
            latents = batch["latents"].to(d.device, non_blocking=True)
            text = batch["text"].to(d.device, non_blocking=True)
            sync = a == cfg.grad_accum - 1 or not hasattr(self.wrapped, "no_sync")
            with contextlib.nullcontext() if sync else self.wrapped.no_sync(), autocast or contextlib.nullcontext():
                loss = self.wrapped(latents, text, generator(derive_seed(seed, "loss", s, piece)))
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float()
        # the global mean loss, also the NaN vote every rank agrees on
        loss_value = D.all_reduce_sum(loss_sum, d).item() / (d.world * cfg.grad_accum)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = _clip(params, cfg.grad_clip) if math.isfinite(loss_value) else float("nan")
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.ema.update(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        return lr, loss_value, grad_norm

    def observe_step(self, seconds: float, cpu_seconds: float) -> None:
        """Time the step for the step path; switch between eager and compiled when it says so (every rank
        follows rank 0's choice) and record the choice once made."""
        before = self.path.phase
        switch = self.path.observe(seconds, cpu_seconds)
        if before == self.path.phase:
            return
        switch = ("eager", None, "compile")[D.broadcast_int({"eager": 0, None: 1, "compile": 2}[switch], self.d)]
        if switch == "compile":
            self.wrapped = torch.compile(self.eager)
        elif switch == "eager":
            self.wrapped = self.eager
        if self.path.phase == "done":
            self._record_path()

    def _record_path(self) -> None:
        """The step path of this session into env.json and the log."""
        decision = self.path_record()
        if self.d.is_main and self.logger is not None:
            sessions = (_read_json(self.run_dir / "env.json") or {}).get("sessions", [{}])
            sessions[-1]["fast_path"] = decision
            atomic.write_json(self.run_dir / "env.json", {"sessions": sessions})
            self.logger.write(f"step path: {decision['choice']} ({decision['basis']})")

    def path_record(self) -> dict[str, Any]:
        return {**self.path.decision, "malloc_heap_kept": self.heap_kept}

    def account(self, loss: float, grad_norm: float) -> None:
        """The non-finite policy, then the step's bookkeeping (FLOPs, the loss window)."""
        state = self.state
        if math.isfinite(loss) and math.isfinite(grad_norm):
            state.window_loss += loss
            state.window_steps += 1
            state.window_grad_norm = grad_norm
        else:
            self._non_finite(loss, grad_norm)
        state.step += 1
        state.train_flops += self.flops_per_step
        self.window_images += self.cfg.batch_size
        state.last_loss = loss
        self.logger.step(loss, state.train_flops)

    def _non_finite(self, loss: float, grad_norm: float) -> None:
        """nan_policy=stop (or too many skipped): save the weights from before this step and stop; skip: count it."""
        cfg, state, s = self.cfg, self.state, self.state.step
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
        if cfg.nan_policy == "skip" and state.skipped < cfg.max_skipped:
            state.skipped += 1
            self.logger.write(f"step {s}: {what}; batch skipped ({state.skipped}/{cfg.max_skipped})")
            return
        # the weights are still those before this step: keep them as the last good checkpoint
        path = self._save(self.order.position(s), milestone=None, milestone_flops=None, is_final=False, stopped=what)
        why = (
            "train.nan_policy=stop"
            if cfg.nan_policy == "stop"
            else f"{state.skipped} batches were already skipped (train.max_skipped)"
        )
        raise NonFiniteLoss(
            f"{what} at step {s} ({state.train_flops:.4g} FLOPs used); stopped ({why}). The weights "
            f"before step {s} are saved intact in {path or self.run_dir / 'checkpoints'}. Lower train.lr, "
            f"raise train.warmup_steps or train.grad_clip, or set train.nan_policy=skip."
        )

    # ------------------------------------------------------------------------------------------ log, milestone

    def log(self, lr: float, t0: float) -> None:
        """A metrics record every `log_every` steps and at the end; the step's time counts as training."""
        state = self.state
        if state.step % self.cfg.log_every == 0 or state.step == self.total_steps:
            now = time.perf_counter()
            self.logger.record(
                {
                    "step": state.step,
                    "train_flops": state.train_flops,
                    "loss": state.window_loss / state.window_steps if state.window_steps else float("nan"),
                    "lr": lr,
                    "grad_norm": state.window_grad_norm,
                    **self.order.position(state.step),
                    "skipped": state.skipped,
                    "images_per_s": self.window_images / max(now - self.window_start, 1e-9),
                    "seconds": state.train_seconds + now - t0,
                }
            )
            state.window_loss, state.window_steps, state.window_grad_norm = 0.0, 0, float("nan")
            self.window_start, self.window_images = now, 0
        state.train_seconds += time.perf_counter() - t0  # everything but checkpoint writes

    def milestone(self) -> None:
        """A checkpoint when the step crossed a milestone, ended the run, or is due for resuming."""
        state = self.state
        # a step may cross several grid points (coarse steps): one checkpoint stands for the largest
        crossed = [i for i, f in enumerate(self.grid) if f <= state.train_flops]
        point = crossed[-1] if crossed and crossed[-1] != self.last_point else None
        final = state.step == self.total_steps
        if point is None and not final and state.step % self.cfg.checkpoint_every:
            return
        milestone = None
        if point is not None:
            milestone, state.milestones, self.last_point = state.milestones, state.milestones + 1, point
        flops = self.grid[point] if point is not None else None
        self._save(self.order.position(state.step), milestone=milestone, milestone_flops=flops, is_final=final)
        if self.d.is_main:
            ckpt.prune(self.run_dir, self.cfg.keep_last)
        self.window_start = time.perf_counter()  # saving is not training throughput

    def _save(self, position: dict[str, Any], **facts: Any) -> Path | None:
        extra = {
            "flops_per_step": self.flops_per_step,
            "total_steps": self.total_steps,
            "budget_flops": self.cfg.budget_flops,
            "config_hash": config_hash(self.run_cfg),
            "latent_spec": asdict(self.source.spec),
            "text_spec": asdict(self.text_spec),
            **self.encoder_facts,
        }
        return _save(
            self.run_dir, self.d, self.loss_module, self.optimizer, self.ema, self.state, {**extra, **position, **facts}
        )

    # ------------------------------------------------------------------------------------------ the end

    def finish(self) -> dict[str, Any]:
        """The run's summary, written as done.json by rank 0."""
        state, d = self.state, self.d
        if self.path.phase != "done":  # the run ended before the step path was settled
            self._record_path()
        summary = {
            "run_dir": str(self.run_dir),
            "config_hash": config_hash(self.run_cfg),
            "steps": state.step,
            "train_flops": state.train_flops,
            "budget_flops": self.cfg.budget_flops,
            "flops_per_step": self.flops_per_step,
            "skipped": state.skipped,
            "train_seconds": state.train_seconds,
            "world_size": d.world,
            "final_loss": state.last_loss,
            "fast_path": self.path_record(),
            "checkpoints": [_info_dict(i) for i in ckpt.list_checkpoints(self.run_dir)] if d.is_main else [],
        }
        if d.is_main:
            atomic.write_json(self.run_dir / DONE, summary)
        D.barrier(d)
        return summary


def _clip(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm (0: only measure it); returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def _info_dict(info: ckpt.CheckpointInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "step": info.step,
        "train_flops": info.train_flops,
        "milestone": info.milestone,
        "milestone_flops": info.milestone_flops,
        "is_final": info.is_final,
    }
