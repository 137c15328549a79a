"""The one config schema: dataclasses, loaded from YAML, overridden with dotted `--set key=value`, hashed.

Every stage's config is a dataclass here. `load(cls, path, overrides)` validates as it builds: an unknown key or a
wrong type raises `ConfigError` naming the key, the file and the valid choices, so a typo never silently falls
back to a default. `config_hash` is a stable content hash used to key every cached stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

T = TypeVar("T")
# PyYAML reads 3e-4 (no dot) as a string; numeric fields accept such scientific notation.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A config that cannot be used as written; the message names the key, where it came from and the fix."""


# ---------------------------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    """A captioned image dataset. `shapes` is the embedded procedural default (exact labels, no download)."""

    dataset: Literal["shapes", "folder", "shards"] = "shapes"
    path: str | None = None  # folder / shards: where the user's data lies
    resolution: int = 32  # shapes: 16, 32 or 64
    size: int = 20000  # unique training items: the study's data-size axis
    val_size: int = 1000
    test_size: int = 1000
    holdout_size: int = 1000  # items of the held-out-combination split
    seed: int = 0
    objects: list[int] = field(default_factory=lambda: [1, 2])  # object counts drawn uniformly
    counting: bool = False  # also 0..3 identical objects with a counting caption
    background: str = "black"  # a colour name or "#rrggbb"
    # colour×shape pairs never shown in train/val/test; they form the `holdout` split instead
    holdout: list[list[str]] = field(default_factory=lambda: [["red", "triangle"], ["blue", "circle"]])
    max_caption_tokens: int = 24
    # folder / shards (user data; see data/userdata.py for the rules)
    crop: Literal["center", "none"] = "center"  # center: short side → resolution, centre crop; none: squash
    resize_filter: Literal["bicubic", "bilinear", "lanczos", "box", "nearest"] = "bicubic"
    val_fraction: float = 0.1  # share of keys (by hash) in val; `val_size` caps it
    test_fraction: float = 0.1  # share of keys (by hash) in test; `test_size` caps it
    missing_caption: Literal["skip", "empty"] = "skip"  # skip the item, or keep it with "" (unconditional)
    long_caption: Literal["truncate", "skip"] = "truncate"  # over max_caption_tokens: cut (counted) or skip
    caption_vocab: int = 8192  # word tokenizer built from train captions: most frequent words (incl. specials)
    text_encoder: str | None = None  # local transformers/sentence-transformers dir: its tokenizer + frozen encoder


@dataclass
class ModelConfig:
    """The shared Transformer backbone (`model/`); `size` names a preset in `model/sizes.py`."""

    size: str = "4x128"
    patch_size: int = 1  # continuous latents are patchified p×p into tokens
    text_layers: int = 2  # depth of the caption encoder (same width as the backbone)


@dataclass
class ObjectiveConfig:
    """What every objective shares. Each objective declares its own subclass with the fields only it uses
    (`objectives/flow.py: FlowConfig`, ...). The schema names no objective: the objectives registry
    (`synthscale.objectives`, the one list of names) plugs itself in with `set_objective_registry` when imported,
    and a config section is read as the subclass its `name` picks (no `name`: the registry's first objective)."""

    name: str = ""
    cfg_dropout: float = 0.1  # caption replaced by the learned null with this probability

    @staticmethod
    def variants() -> dict[str, type[ObjectiveConfig]]:
        """Objective name → its config dataclass, in the registry's (and the report's) order."""
        if _objective_registry is None:
            raise ConfigError(
                "no objectives are registered: objective configs are read through the objectives registry; "
                "import synthscale.objectives first"
            )
        return _objective_registry()

    @staticmethod
    def names() -> list[str]:
        """The registered objective names, in the registry's order."""
        return list(ObjectiveConfig.variants())

    @staticmethod
    def of(name: str, **fields: Any) -> ObjectiveConfig:
        """The config of objective `name`, e.g. `ObjectiveConfig.of("masked", temperature=0.9)`."""
        variants = ObjectiveConfig.variants()
        if name not in variants:
            raise ConfigError(f"unknown objective {name!r}; valid objectives: {', '.join(variants)}")
        return variants[name](**fields)


_objective_registry: typing.Callable[[], dict[str, type[ObjectiveConfig]]] | None = None


def set_objective_registry(variants: typing.Callable[[], dict[str, type[ObjectiveConfig]]]) -> None:
    """Called by the objectives registry when imported: `variants()` gives its name → config class, live."""
    global _objective_registry
    _objective_registry = variants


def default_objective() -> ObjectiveConfig:
    """The registry's first objective at its defaults: a RunConfig's objective when its file names none."""
    return ObjectiveConfig.of(ObjectiveConfig.names()[0])


# Run folders written before each objective had its own config stored every objective's fields in one section;
# on reading, another objective's field at its value of that time is dropped (anything else is still refused).
_SHARED_OBJECTIVE_FIELDS_V1 = {
    "t_mean": 0.0,
    "t_std": 1.0,
    "sampler": "euler",
    "temperature": 1.0,
    "top_k": 0,
    "mask_temperature": 4.5,
}


@dataclass
class TrainConfig:
    """The FLOPs-budgeted generator trainer (`train/loop.py`). The math of a run depends on every key except
    `log_every`, `checkpoint_every` and `keep_last`, which may change when a run is resumed."""

    # fast_path changes how a step runs (eager or compiled), not what it computes beyond rounding: auto keeps keys
    added_fields: ClassVar[dict[str, Any]] = {"fast_path": "auto"}

    budget_flops: float = 1e12  # train until this many analytic training FLOPs (fwd+bwd, global batch)
    batch_size: int = 64  # global examples per optimizer step, over all ranks and accumulation micro-batches
    grad_accum: int = 1  # micro-batches per rank per step: a memory knob, the effective batch stays batch_size
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0  # AdamW; applied to matrices (dim ≥ 2) only
    warmup_steps: int = 100  # linear LR warmup from 0
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1  # cosine: the LR decays to lr × min_lr_ratio at the last step
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # effective decay min(ema_decay, (1 + step) / (10 + step))
    milestones_per_decade: int = 4  # checkpoints at FLOPs 10^(k / milestones_per_decade), plus the end
    first_milestone_flops: float | None = None  # None: budget_flops / 100
    checkpoint_every: int = 200  # steps between resume checkpoints (apart from the milestones)
    keep_last: int = 2  # resume checkpoints kept besides the milestones
    log_every: int = 10  # steps per metrics.jsonl / TensorBoard record
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast; weights and optimizer stay fp32
    compile: bool = False  # torch.compile the model (worth it on GPUs)
    # auto: the trainer times its first steps and compiles only where that finishes the run sooner, compile time
    # counted (train/fastpath.py); eager: never compile (train.compile=true always compiles)
    fast_path: Literal["auto", "eager"] = "auto"
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: DDP, or FSDP2 (fully_shard) for the large sizes
    device: str = "auto"  # auto: cuda (LOCAL_RANK's GPU) when available, else cpu
    nan_policy: Literal["stop", "skip"] = "stop"  # on a NaN/inf loss: stop, or skip that batch and count it
    max_skipped: int = 10  # nan_policy=skip: stop once this many batches were skipped

    def __post_init__(self):
        positive = {
            "budget_flops": self.budget_flops,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "lr": self.lr,
            "milestones_per_decade": self.milestones_per_decade,
            "checkpoint_every": self.checkpoint_every,
            "log_every": self.log_every,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ValueError(f"train.{key} must be > 0, got {value}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for key in ("warmup_steps", "weight_decay", "grad_clip", "keep_last", "max_skipped"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be ≥ 0, got {getattr(self, key)}")
        if self.first_milestone_flops is not None and not 0 < self.first_milestone_flops <= self.budget_flops:
            raise ValueError(
                f"train.first_milestone_flops must be in (0, budget_flops], got {self.first_milestone_flops}"
            )


@dataclass
class RunConfig:
    """One generator training run: (objective, size, dataset size, autoencoder) trained to a FLOPs budget."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=default_objective)
    train: TrainConfig = field(default_factory=TrainConfig)
    autoencoder: str | None = None  # dir of a trained autoencoder; its latent cache is built under cache_root
    cache_root: str = "cache/latents"
    # instead of an autoencoder: random latents of this shape with random captions (trainer tests, benchmarks),
    # "continuous:CxHxW" or "discrete:HxW:VOCAB"
    random_latents: str | None = None
    seed: int = 0  # fixes model init, data order and every random draw of the run


@dataclass
class EvalSettings:
    """How a study evaluates its runs. Every milestone is scored at (`steps`, `cfg_scale`) for each of `weights`;
    the last milestone adds the steps sweep and the CFG sweep (EMA weights), and the speed measurement."""

    # the cfg_scale-best candidates decide nothing while cfg_scale is a number: their defaults keep keys
    added_fields: ClassVar[dict[str, Any]] = {
        "cfg_candidates": [1.0, 2.0, 3.0, 5.0],
        "temperature_candidates": None,
        "val_n": 64,
    }

    n: int = 256  # generated images per setting from the test prompts (FD compares only at equal n)
    holdout_n: int = 32  # extra prompts from the held-out-combination split (0 = none)
    seed: int = 0  # fixes the evaluation prompts and every sampling draw
    milestones: Literal["all", "last"] = "all"
    weights: list[Literal["ema", "raw"]] = field(default_factory=lambda: ["ema"])
    # guidance scale at every milestone; `best`: per run and milestone, the candidate (with a temperature, for
    # objectives that sample with one) that validation prompts rank best (evaluate/selection.py) — test prompts
    # only report
    cfg_scale: float | Literal["best"] = 3.0
    # cfg_scale best: the scales tried, for every objective or per objective ({flow: [1, 2, 3], masked: [...]};
    # a missing objective: the default list)
    cfg_candidates: list[float] | dict[str, list[float]] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])
    # cfg_scale best: temperatures tried with each scale, for objectives whose config has a `temperature` (a list
    # for all of them, or per objective); None: each objective's own temperature
    temperature_candidates: list[float] | dict[str, list[float]] | None = None
    val_n: int = 64  # cfg_scale best: validation prompts each candidate is sampled for
    cfg_sweep: list[float] = field(default_factory=lambda: [1.0])  # extra scales at the last milestone
    # sampling steps used at every milestone, per objective (missing: the objective's default)
    steps: dict[str, int] = field(default_factory=dict)
    # the steps sweep at the last milestone, per objective (missing: the objective's steps grid)
    sweep: dict[str, list[int]] = field(default_factory=dict)
    loss_batches: int = 4  # validation batches for the loss (fixed draws, no caption dropout)
    batch_size: int = 128  # sampling / loss batch
    speed: bool = True  # sampling latency (batch 1) and throughput at the last milestone, per swept step count
    grid_samples: int = 16  # images in each sample grid PNG
    # what scores the images: "probe", "encoder", "inception:/path/weights.pth", "clip:/path/folder";
    # empty: the dataset's defaults (shapes: probe and encoder; user data: encoder)
    instruments: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.val_n < 1:
            raise ValueError(f"evaluation.val_n must be ≥ 1, got {self.val_n}")
        check_candidates("evaluation.cfg_candidates", self.cfg_candidates, low=0.0)
        if self.temperature_candidates is not None:
            check_candidates("evaluation.temperature_candidates", self.temperature_candidates, low=0.0)

    def candidates(self, objective: ObjectiveConfig) -> tuple[list[float], list[float | None]]:
        """cfg_scale best: the (CFG scales, temperatures) tried for `objective`; [None]: its own temperature
        (objectives without a `temperature` field, or no temperature candidates)."""
        cfgs = self.cfg_candidates
        cfgs = (
            cfgs.get(objective.name, _field_default(EvalSettings, "cfg_candidates")) if isinstance(cfgs, dict) else cfgs
        )
        temps: list[float | None] = [None]
        if self.temperature_candidates is not None and has_temperature(objective):
            t = self.temperature_candidates
            temps = (t.get(objective.name) or [None]) if isinstance(t, dict) else list(t)
        return [float(c) for c in cfgs], temps


def has_temperature(objective: ObjectiveConfig) -> bool:
    """Whether the objective samples with a softmax temperature (told by its config's fields, never its name)."""
    return "temperature" in {f.name for f in dataclasses.fields(objective)}


def _field_default(cls: type, key: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def check_candidates(key: str, candidates: list[float] | dict[str, list[float]], low: float, strict: bool = False):
    """A list of candidate values (or one per objective): each list non-empty, without repeats, every value above
    `low` (≥ `low` unless strict). A per-objective mapping's names are checked against the registry when the
    study is planned (`study.plan.resolve_objectives`): the schema knows no objective."""
    lists = candidates if isinstance(candidates, dict) else {"": candidates}
    for scope, values in lists.items():
        where = f"{key}.{scope}" if scope else key
        if not values:
            raise ValueError(f"{where} is empty; list at least one candidate (or leave the key out)")
        bad = [v for v in values if not (v > low if strict else v >= low)]
        if bad:
            raise ValueError(
                f"{where}: {bad[0]} is not a valid candidate; every candidate must be {'>' if strict else '≥'} {low:g}"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"{where} lists a value twice: {values}")


# The default study's training settings (configs/studies/default.yaml), sized for 2·10¹² FLOPs on a laptop CPU;
# flow patchifies kl-f4c4's 8×8 latents 1×1, so every paradigm reads 64 image tokens (parity: tokens).
DEFAULT_RUN_OVERRIDES = (
    "flow:model.patch_size=1",
    "train.batch_size=32",
    "train.lr=1.0e-3",
    "train.warmup_steps=50",
    "train.milestones_per_decade=2",
    "train.first_milestone_flops=2.0e+11",
    "train.ema_decay=0.99",
)


@dataclass
class StudyConfig:
    """A grid: objectives × model sizes × dataset sizes × FLOPs budgets, plus ablations (`synthscale study`).
    A spec that sets nothing is configs/studies/default.yaml at one seed without its LR sweep: replicate seeds
    and the sweep multiply the cost, so a spec asks for them."""

    added_fields: ClassVar[dict[str, Any]] = {"lr_sweep_seeds": 1}  # one seed: the sweep as it always ran

    name: str = "study"
    # left out: the default study's shapes scenes (a `data` section is read from DataConfig's own defaults)
    data: DataConfig = field(default_factory=lambda: DataConfig(objects=[1], max_caption_tokens=12))
    objectives: list[str] = field(default_factory=list)  # empty: every registered objective, in registry order
    sizes: list[str] = field(default_factory=lambda: ["1x64"])
    data_sizes: list[int] = field(default_factory=lambda: [20000])
    budgets: list[float] = field(default_factory=lambda: [2e12])
    # autoencoder config files for the main grid: continuous (diffusion) and discrete (token methods); a relative
    # path is looked up from the working directory, then from the spec's folder
    continuous_autoencoder: str = "configs/autoencoders/kl-f4c4.yaml"
    discrete_autoencoder: str = "configs/autoencoders/fsq-f4.yaml"
    autoencoder_overrides: list[str] = field(default_factory=list)  # --set style, applied to every autoencoder
    # ablation: extra autoencoders, each trained with the objectives of its latent kind at the smallest size,
    # data size and budget
    ablation_autoencoders: list[str] = field(default_factory=list)
    # --set style, applied to every RunConfig (`objective:key=value` to one objective's runs); `study --run-set`
    # appends to them. Left out: the default study's
    run_overrides: list[str] = field(default_factory=lambda: list(DEFAULT_RUN_OVERRIDES))
    # learning rates to sweep (all objectives, or per objective: {flow: [...], masked: [...]}): each objective is
    # trained at every candidate at the grid's smallest size and budget, and its runs then train at the one with
    # the lowest validation loss (study/tuning.py). None: every run trains at its configured train.lr
    lr_sweep: list[float] | dict[str, list[float]] | None = None
    # how many of `seeds` (the first ones) train every LR candidate: the choice is the lowest validation loss
    # averaged over them, and the chosen candidate's runs are those seeds' grid cells. 1: the first seed alone
    # decides, which picks one seed's luck where training is bimodal (docs/results/lr-sweep-width.md)
    lr_sweep_seeds: int = 1
    probe_overrides: list[str] = field(default_factory=list)
    encoder_overrides: list[str] = field(default_factory=list)  # --set style keys of EncoderConfig
    # left out: the default study's evaluation (CFG chosen per milestone on validation prompts, from 1 and 3)
    evaluation: EvalSettings = field(
        default_factory=lambda: EvalSettings(cfg_scale="best", cfg_candidates=[1.0, 3.0], cfg_sweep=[])
    )
    executor: Literal["sequential", "processes", "slurm", "ray"] = "processes"
    workers: int = 2  # stages at once: worker processes, or jobs in flight (slurm, ray)
    threads: int = 1  # torch threads per stage
    # where the autoencoder, probe, cache and evaluation stages compute: auto (CUDA when the stage sees a GPU, e.g.
    # cluster.stage_gpus > 0, else the CPU), cpu, cuda or cuda:N; training runs follow train.device
    device: str = "auto"
    # training precision of every run: fp32, bf16 (autocast), auto (bf16 only where this machine measures it
    # faster, checked once when the study first starts and kept in STUDY/precision.json), or None: the runs' own
    precision: str | None = "fp32"
    cluster: ClusterConfig = field(default_factory=lambda: ClusterConfig())  # slurm / ray executors
    # replicate seeds: every grid point is trained (init, data order) and sampled once per seed (RunConfig.seed, a
    # part of its key); the report averages them, with intervals that include this training noise. One seed:
    # training noise is unmeasured and no verdict on a difference goes beyond "inconclusive" (study/replicates.py)
    seeds: list[int] = field(default_factory=lambda: [0])
    # what the compared paradigms must match: "tokens" refuses (when planned) a grid whose objectives see different
    # image-token counts; "none" allows it and the report names the mismatch (study/controls.py)
    parity: Literal["tokens", "none"] = "tokens"

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct integers ≥ 0 (at least one), got {self.seeds}")
        if self.parity not in ("tokens", "none"):
            raise ValueError(f"parity must be tokens or none, got {self.parity!r}")
        if self.precision not in (None, "fp32", "bf16", "auto"):
            raise ValueError(f"precision must be fp32, bf16 or auto (or left out), got {self.precision!r}")
        if self.lr_sweep is not None:
            check_candidates("lr_sweep", self.lr_sweep, low=0.0, strict=True)
        if not 1 <= self.lr_sweep_seeds <= len(self.seeds):
            raise ValueError(
                f"lr_sweep_seeds must be between 1 and the number of seeds ({len(self.seeds)}), got "
                f"{self.lr_sweep_seeds}: list more seeds in `seeds:` or sweep over fewer"
            )


@dataclass
class AutoencoderTrainConfig:
    """How an autoencoder is trained (`synthscale autoencoder train`): AdamW, linear warm-up, cosine decay."""

    steps: int = 1200
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100  # steps of linear warm-up
    weight_decay: float = 0.0
    loss: Literal["l2", "l1"] = "l2"  # reconstruction loss on [-1, 1] pixels
    # weight of object pixels in the reconstruction loss: pixels that differ from their image's median colour (the
    # plain background of a shapes scene), grown by 1 px to take in edges. Small objects on a plain ground barely
    # move an unweighted pixel loss, so shapes decode as blobs (1 = the plain mean)
    foreground_weight: float = 1.0
    seed: int = 0
    scale_items: int = 4096  # kl: training items encoded to measure the latent shift/scale (0 = all)


@dataclass
class AutoencoderConfig:
    """An image autoencoder (`autoencoders/`): continuous KL latents for diffusion, LFQ/FSQ tokens for the
    token methods. The trunk has one level per entry of `widths`, so `downsample` = 2^(len(widths)-1)."""

    name: str = "kl-f4c4"
    kind: Literal["kl", "lfq", "fsq", "diffusers"] = "kl"
    path: str | None = None  # diffusers: a local AutoencoderKL folder, frozen (only its latent scale is measured)
    downsample: int = 4  # f: latent side = image side / f
    latent_channels: int = 4  # kl: channels; lfq: bits per token (vocabulary 2^c); fsq: len(fsq_levels)
    widths: list[int] = field(default_factory=lambda: [16, 32, 64])  # trunk widths, full resolution first
    blocks: int = 1  # residual blocks per level (encoder and decoder)
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])  # fsq: vocabulary = product
    kl_weight: float = 1e-6  # kl: weight of KL(q(z|x) ‖ N(0, I)) per latent element
    # lfq: weights of (per-token entropy − diversity · batch entropy) and of the commitment ‖z − sg(q)‖². MAGVIT-v2's
    # 0.1 / 0.25 swamp a ~0.005 pixel MSE: lfq-f8 measured 25.6 dB with them, 30.2 dB (99 % usage) with these
    entropy_weight: float = 0.002
    diversity: float = 1.0  # lfq: weight of the batch (codebook-usage) entropy inside the entropy term
    commit_weight: float = 0.005
    # fsq: weight of the distance of the bounded values from their levels (in level units). 0 = plain FSQ; a small
    # weight gives a plain background one code instead of a flip between neighbours (see autoencoders/fsq.py)
    fsq_commit_weight: float = 0.0
    lfq_temperature: float = 0.01  # lfq: softmax temperature of the code distribution in the entropy term
    data: DataConfig = field(default_factory=DataConfig)  # what it trains on
    train: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)


@dataclass
class ProbeConfig:
    """The in-domain attribute probe (`evaluate/probes.py`), trained once per dataset on fresh renders."""

    steps: int = 800  # optimizer steps; every step renders batch_size new scenes
    batch_size: int = 32
    lr: float = 3e-3  # AdamW peak; linear warm-up, cosine decay to 0
    weight_decay: float = 0.0
    width: int = 24  # conv channels of the cell reader (2× in its second half)
    hidden: int = 128  # MLP width before the penultimate layer
    feature_dim: int = 16  # penultimate width per cell; fd-probe features: its mean over cells + 9 occupancies
    holdout_fraction: float = 0.2  # share of renders showing a held-out colour×shape pair
    seed: int = 0
    eval_items: int = 1000  # held-out real renders per split for the probe's ceiling


@dataclass
class EncoderConfig:
    """The in-domain image–caption encoder (`evaluate/instruments/encoder.py`): trained contrastively (InfoNCE,
    learned temperature) on the train split only, once per dataset distribution."""

    steps: int = 500  # optimizer steps
    batch_size: int = 128
    lr: float = 2e-3  # AdamW peak; linear warm-up, cosine decay to 0
    weight_decay: float = 0.05
    width: int = 16  # conv channels of the image tower's first level (doubled at each of its 3 downsamplings)
    text_width: int = 64  # the caption tower's width (a 1-layer Transformer over the dataset's tokenizer)
    text_layers: int = 1
    embed_dim: int = 64  # the joint embedding
    shift: int = 2  # augmentation: random translation by up to this many pixels (no flips: they swap left/right)
    train_items: int = 20000  # train-split items it sees at most (the study's data-size axis shares one encoder)
    seed: int = 0

    def __post_init__(self):
        for key in ("steps", "batch_size", "width", "text_width", "text_layers", "embed_dim", "train_items"):
            if getattr(self, key) < 1:
                raise ValueError(f"encoder.{key} must be ≥ 1, got {getattr(self, key)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.shift < 0:
            raise ValueError("encoder.lr must be > 0, encoder.weight_decay and encoder.shift ≥ 0")


@dataclass
class ClusterConfig:
    """Where the `slurm` and `ray` study executors run stages (`study/executors.py`). A training run is one job
    of `nodes_per_run` nodes, each starting `procs_per_node` processes with torchrun (one per GPU); every other
    stage is one process. The study folder must be on storage that every node sees."""

    procs_per_node: int = 1  # torchrun processes per node of a training run (one per GPU)
    gpus_per_node: int = 1  # GPUs per node of a training run: procs_per_node, or 0 for CPU processes (gloo)
    nodes_per_run: int = 1  # > 1: a multi-node run (torchrun c10d rendezvous; slurm only)
    cpus_per_proc: int = 8  # CPU cores per training process
    stage_gpus: int = 1  # GPUs of every other stage (autoencoder, probe, cache, evaluate); 0 = CPU only
    stage_cpus: int = 8
    mem_gb: int = 0  # memory per node (0: the cluster's default)
    time_min: int = 720  # time limit per job; on timeout or preemption the job is requeued and resumes
    requeues: int = 3  # timeouts/preemptions a stage survives before it is marked failed
    port: int = 29500  # multi-node rendezvous port base (the job id is added, so runs sharing a node differ)
    python: str | None = None  # interpreter on the nodes (default: the one running the study)
    # slurm
    local: bool = False  # run the jobs on this machine through submitit's local executor instead (no Slurm)
    folder: str | None = None  # job scripts and logs (default: STUDY/jobs)
    partition: str | None = None
    account: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines each job runs first, e.g. "module load cuda"
    slurm_args: dict[str, str] = field(default_factory=dict)  # extra #SBATCH options, e.g. {qos: high}
    # ray
    ray_address: str | None = None  # None: start Ray on this machine; "auto": join the running cluster

    def __post_init__(self):
        for key in ("procs_per_node", "nodes_per_run", "cpus_per_proc", "stage_cpus", "time_min"):
            if getattr(self, key) < 1:
                raise ValueError(f"cluster.{key} must be ≥ 1, got {getattr(self, key)}")
        for key in ("gpus_per_node", "stage_gpus", "mem_gb", "requeues"):
            if getattr(self, key) < 0:
                raise ValueError(f"cluster.{key} must be ≥ 0, got {getattr(self, key)}")
        if self.gpus_per_node not in (0, self.procs_per_node):
            raise ValueError(
                f"cluster.gpus_per_node is {self.gpus_per_node} but procs_per_node is "
                f"{self.procs_per_node}: torchrun starts one process per GPU, so set them equal "
                "(or gpus_per_node: 0 for CPU processes)"
            )


# ---------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list[{_type_name(inner)}]"
    if origin is dict:
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting the lossless cases (int → float, dict → dataclass)."""
    origin = typing.get_origin(tp)

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(
            f"{source}: key '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__}){extra}"
        )

    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source}: key '{key}' is {value!r}; valid choices: {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError:
                pass
        raise fail()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        (inner,) = typing.get_args(tp) or (Any,)
        return [_convert(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {_convert(k, k_tp, f"{key}", source): _convert(v, v_tp, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail(" (a mapping of its fields)")
        return from_dict(tp, value, source=source, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp in (int, float) and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value) if tp is float or not value.strip().lstrip("+-").isdigit() else int(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return int(value)  # YAML writes 1e4 as a float
            raise fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise fail()
    return value


def _objective_variant(value: dict[str, Any], key: str, source: str) -> tuple[type, dict[str, Any]]:
    """The objective's own config class for a mapping (by its `name`), and the mapping without the pre-split
    fields of other objectives at their old values."""
    variants = ObjectiveConfig.variants()
    name = value.get("name", next(iter(variants)))
    if name not in variants:
        raise ConfigError(f"{source}: key '{key}' is {name!r}; valid objectives: {', '.join(map(repr, variants))}")
    cls = variants[name]
    own = {f.name for f in dataclasses.fields(cls)}
    legacy = _SHARED_OBJECTIVE_FIELDS_V1
    return cls, {k: v for k, v in value.items() if k in own or k not in legacy or legacy[k] != v}


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types with a helpful message."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {type(data).__name__}"
        )
    if cls is ObjectiveConfig:  # the objective's own config class, by name
        cls, data = _objective_variant(data, prefix + "name", source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        under = f" under {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; valid keys{under}: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _convert(value, hints[name], prefix + name, source) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from e
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' → (['train', 'lr'], 0.0003). The value is read as YAML, so lists and bools work."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key; expected key=value, e.g. --set train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from e
    return key.split("."), value


def apply_overrides(cls: type, data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw mapping, checking each key exists in the schema of `cls`."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node, schema = data, cls
        for depth, part in enumerate(path):
            if schema is ObjectiveConfig:  # the keys of the objective this section names
                schema = _objective_variant(node, ".".join(path[:depth] + ["name"]), f"--set {text}")[0]
            fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
            if fields is None:
                raise ConfigError(f"--set {text}: '{'.'.join(path[:depth])}' is not a section, it has no key '{part}'")
            if part not in fields:
                raise ConfigError(
                    f"--set {text}: unknown key '{'.'.join(path[: depth + 1])}'; "
                    f"valid keys: {', '.join(sorted(fields))}"
                )
            hint = typing.get_type_hints(schema)[part]
            if depth == len(path) - 1:
                if issubclass(schema, ObjectiveConfig) and part == "name" and node.get("name") != value:
                    _keep_shared_objective_keys(node)  # another objective: the previous one's own keys go
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {text}: '{'.'.join(path[: depth + 1])}' is not a section")
                schema = hint
    return data


def _keep_shared_objective_keys(node: dict[str, Any]) -> None:
    shared = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    for key in [k for k in node if k not in shared]:
        del node[key]


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from a YAML file (or defaults when `path` is None) and apply `--set` overrides."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        data = apply_overrides(cls, data, overrides)
        source += " with --set " + " ".join(overrides)
    return from_dict(cls, data, source=source)


def canonical(cfg: Any) -> Any:
    """A config as the data that decides it, for hashing and comparing: every field at its resolved value, defaults
    included, so a changed default re-keys every stage it decides instead of reusing one made under the old value.
    One migration keeps a field added later from re-keying what came before it: a dataclass lists such fields in
    `added_fields` (field → the value that behaves as before the field existed), and a field at that value is left
    out. Old run and study folders keep their keys and still resume."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        added = added_fields(type(cfg))
        out = {}
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.name not in added or _plain(value) != _plain(added[f.name]):
                out[f.name] = canonical(value)
        return out
    if isinstance(cfg, dict):
        return {k: canonical(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [canonical(v) for v in cfg]
    return cfg


def added_fields(cls: type) -> dict[str, Any]:
    """Fields of dataclass `cls` (and its bases) added after keys began to cover every field → their neutral value.
    Adding a field with a default: list it here with the value that reproduces the behaviour from before it (usually
    its default), in a class attribute `added_fields: ClassVar[dict[str, Any]] = {"field": value}`."""
    out: dict[str, Any] = {}
    for c in reversed(cls.__mro__):
        out.update(vars(c).get("added_fields", {}))
    return out


def from_stored(cls: type[T], data: dict[str, Any], source: str) -> T:
    """`from_dict` for a config this code wrote earlier (a run's config.json): a listed added field it lacks takes
    its neutral value, what the folder was made with, rather than today's default."""
    return from_dict(cls, _with_added(cls, data), source=source)


def _with_added(cls: type, data: Any) -> Any:
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data
    if cls is ObjectiveConfig or (isinstance(cls, type) and issubclass(cls, ObjectiveConfig)):
        cls = ObjectiveConfig.variants().get(data.get("name"), cls)
    hints = typing.get_type_hints(cls)
    out = {**{k: v for k, v in added_fields(cls).items() if k not in data}, **data}
    for f in dataclasses.fields(cls):
        if f.name in data and dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = _with_added(hints[f.name], data[f.name])
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(to_dict(value) if dataclasses.is_dataclass(value) else value, default=str))


def config_hash(cfg: Any, length: int = 16) -> str:
    """Stable content hash of a config (dataclass or plain data): same content, same hash, on every machine.
    Dataclasses are hashed as `canonical` (every field, less added fields at their neutral value); plain data
    holding configs should hold `canonical(cfg)` too."""
    data = canonical(cfg)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
