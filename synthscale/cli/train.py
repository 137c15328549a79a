"""`synthscale train` (one generator to a FLOPs budget) and `synthscale flops` (its analytic cost)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from synthscale.cli.common import add_compute_args, default_of
from synthscale.config import ConfigError, ModelConfig, ObjectiveConfig


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a generator to a FLOPs budget (torchrun for several processes)",
        description="Train one generator until its training-FLOPs budget, with milestone checkpoints. "
        "Resumes from the newest intact checkpoint in --out. Under `torchrun --nproc_per_node=N -m "
        "synthscale train ...` the processes train together (DDP; train.parallel=fsdp for FSDP2).",
    )
    p.add_argument(
        "--config", type=Path, default=None, help="a YAML run config (keys of RunConfig), e.g. configs/train/smoke.yaml"
    )
    p.add_argument("--out", type=Path, required=True, help="the run directory (created; resumed when it exists)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-3")
    p.add_argument(
        "--budget", type=float, default=None, help="training FLOPs budget (sets train.budget_flops), e.g. 3e13"
    )
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run dir that has checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bar (metrics.jsonl and TensorBoard still written)")
    add_compute_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "flops",
        help="parameters and analytic FLOPs of a model size × objective",
        description="Parameters (total, non-embedding) and FLOPs/MACs per forward, per training "
        "example and per sampled image (every step count of the objective, with and without CFG); "
        "the caption encoder is its own column.",
    )
    p.add_argument("--size", default="B", help="a model size preset, e.g. S, B, L, XL, 2x64, 4x128 (default B)")
    p.add_argument(  # checked against the objectives registry when the config loads (importing it costs torch)
        "--objective", default=None, help="a registered objective (default: the registry's first)"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="an objective config key, e.g. sampler=heun")
    p.add_argument("--tokens", type=int, default=256, help="image tokens in the sequence (after patchify; a square)")
    p.add_argument("--text-tokens", type=int, default=32, help="caption length in tokens (default %(default)s)")
    p.add_argument(
        "--text-layers",
        type=int,
        default=default_of(ModelConfig, "text_layers"),
        help="caption encoder depth (default %(default)s)",
    )
    p.add_argument("--text-vocab", type=int, default=0, help="caption vocabulary (params only; default: shapes)")
    p.add_argument("--channels", type=int, default=4, help="continuous latent channels (default %(default)s)")
    p.add_argument(
        "--patch-size", type=int, default=default_of(ModelConfig, "patch_size"), help="patch size p (continuous)"
    )
    p.add_argument("--vocab", type=int, default=1024, help="discrete codebook size (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_flops)


def cmd_train(args: argparse.Namespace) -> int:
    import synthscale.objectives  # noqa: F401  the registry, which reads the config's objective section
    from synthscale.config import RunConfig, load
    from synthscale.train import TrainingStopped, train

    overrides = list(args.set or [])
    if args.budget is not None:
        overrides.append(f"train.budget_flops={args.budget}")
    if args.device != "auto":
        overrides.append(f"train.device={args.device}")
    run_cfg = load(RunConfig, args.config, overrides)
    try:
        summary = train(run_cfg, args.out, resume=not args.no_resume, progress=not args.quiet)
    except TrainingStopped as e:  # a NaN loss, a checkpoint that cannot be written: the message says what is kept
        print(f"synthscale: error: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one report
        print(
            f"done: {summary['steps']} steps, {summary['train_flops']:.4g} / {summary['budget_flops']:.4g} FLOPs, "
            f"final loss {summary['final_loss']:.4f}, {len(summary['checkpoints'])} checkpoints in {args.out}"
        )
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from synthscale.compute.flops import format_report
    from synthscale.config import load
    from synthscale.data.latents import LatentSpec, TextSpec
    from synthscale.data.text import WordTokenizer
    from synthscale.objectives import get_objective
    from synthscale.train.data import discrete_spec

    side = math.isqrt(max(args.tokens, 0))
    if args.tokens < 1 or side * side != args.tokens:
        raise ConfigError(f"--tokens must be a square number of image tokens (e.g. 64, 256), got {args.tokens}")
    for flag, value in (
        ("--text-tokens", args.text_tokens),
        ("--patch-size", args.patch_size),
        ("--channels", args.channels),
        ("--vocab", args.vocab),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be ≥ 1, got {value}")
    name = args.objective or ObjectiveConfig.names()[0]
    objective = get_objective(load(ObjectiveConfig, None, [f"name={name}", *(args.set or [])]))
    model_cfg = ModelConfig(size=args.size, patch_size=args.patch_size, text_layers=args.text_layers)
    if objective.latent == "continuous":  # --tokens counts tokens after patchify
        latent = LatentSpec("continuous", args.channels, side * args.patch_size, side * args.patch_size)
    else:
        latent = discrete_spec(side, side, args.vocab)
    text = TextSpec(args.text_vocab or WordTokenizer.for_shapes().vocab_size, args.text_tokens)
    report = objective.flops_report(model_cfg, latent, text)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
