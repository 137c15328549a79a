"""The `synthscale` command. Thin: each subcommand parses its arguments, then calls its stage's function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import synthscale  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
from synthscale.config import ConfigError


def _compute_args(p: argparse.ArgumentParser) -> None:
    """Arguments every compute command takes."""
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice; 1 is safest on a busy 2-core machine)",
    )


def _apply_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        if args.threads < 1:
            raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def _data_config(args: argparse.Namespace):
    from synthscale.config import DataConfig, load

    overrides = [f"dataset={args.dataset}", *(args.set or [])]
    return load(DataConfig, args.config, overrides)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="shapes",
        choices=["shapes", "folder", "shards"],
        help="which dataset (default: shapes; folder/shards also need --set path=DIR)",
    )
    p.add_argument("--config", type=Path, default=None, help="a YAML data config (keys of DataConfig)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a data config key, e.g. resolution=64")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "holdout"])


# ---------------------------------------------------------------------------------------------- data


def cmd_data_preview(args: argparse.Namespace) -> int:
    from synthscale.data import get_dataset
    from synthscale.imagegrid import labelled_grid, save_png

    ds = get_dataset(_data_config(args), args.split)
    n = min(args.n, len(ds))
    items = [ds[i] for i in range(n)]
    grid = labelled_grid([it["image"] for it in items], [it["caption"] for it in items])
    path = save_png(grid, args.out)
    print(f"wrote {n} {args.split} items to {path}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from synthscale.data.stats import attribute_stats, format_stats

    cfg = _data_config(args)
    splits = [args.split] if args.only_split else ["train", "val", "test", "holdout"]
    if cfg.dataset != "shapes":  # user data has no attribute labels: counts, skips and truncations per split
        from synthscale.data.userdata import format_summaries, split_summaries

        summaries = split_summaries(cfg, [s for s in splits if s != "holdout"])
        print(json.dumps(summaries, indent=2) if args.json else format_summaries(summaries))
        return 0
    stats = {s: attribute_stats(cfg, s, limit=args.limit) for s in splits}
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_data_shard(args: argparse.Namespace) -> int:
    from synthscale.data.shards import MANIFEST, write_shards

    m = write_shards(args.src, args.out, shard_size=args.shard_size, overwrite=args.overwrite, progress=True)
    size = sum(s["bytes"] for s in m["shards"])
    print(
        f"wrote {m['items']} items in {len(m['shards'])} shards ({size / 2**20:.1f} MiB) to {args.out}; "
        f"skipped {m['skipped_count']} (listed in {args.out / MANIFEST})"
    )
    for s in m["skipped"][:10]:
        print(f"  skipped {s['where']}: {s['reason']}")
    return 0


# ---------------------------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from synthscale.config import RunConfig, load
    from synthscale.train import TrainingStopped, train

    overrides = list(args.set or [])
    if args.budget is not None:
        overrides.append(f"train.budget_flops={args.budget}")
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


# ---------------------------------------------------------------------------------------------- autoencoder


def cmd_autoencoder_train(args: argparse.Namespace) -> int:
    from synthscale.autoencoders.train import train_autoencoder
    from synthscale.config import AutoencoderConfig, load

    cfg = load(AutoencoderConfig, args.config, args.set)
    s = train_autoencoder(cfg, args.out, progress=not args.quiet)
    scale = f", latent shift {s['latent_shift']:.4g} scale {s['latent_scale']:.4g}" if "latent_scale" in s else ""
    if "pretrained" in s:  # a frozen diffusers autoencoder: nothing trained, its latent scale measured
        print(
            f"prepared {s['name']} from {s['pretrained']} (frozen){scale} on {s['scale_items']} train images, "
            f"PSNR {s['final']['psnr_batch']:.2f} dB on the first 64; wrote {args.out}"
        )
        return 0
    print(
        f"trained {s['name']}: {s['steps']} steps in {s['train_s']:.0f} s ({s['images_per_s']:.0f} img/s; "
        f"{s['total_s']:.0f} s with rendering), final batch PSNR {s['final']['psnr_batch']:.2f} dB{scale}; "
        f"wrote {args.out}"
    )
    return 0


def cmd_autoencoder_eval(args: argparse.Namespace) -> int:
    from synthscale.autoencoders.train import evaluate_autoencoder

    r = evaluate_autoencoder(
        args.dir,
        split=args.split,
        limit=args.limit,
        grid=0 if args.no_grid else 16,
        progress=not args.quiet and not args.json,
    )
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        m = r["metrics"]
        extra = (
            f", codebook usage {100 * m['codebook_usage']:.1f}%, perplexity {m['perplexity']:.1f}"
            if "codebook_usage" in m
            else ""
        )
        print(
            f"{r['name']} on {r['instruments']['n']} {args.split} images: PSNR {m['psnr']:.2f} dB, "
            f"SSIM {m['ssim']:.4f}, L1 {m['l1']:.4f}{extra}" + (f"; grid {r['grid']}" if "grid" in r else "")
        )
    return 0


def cmd_autoencoder_cache(args: argparse.Namespace) -> int:
    import dataclasses

    from synthscale.autoencoders import load_autoencoder
    from synthscale.config import DataConfig, apply_overrides, from_dict
    from synthscale.data import get_dataset
    from synthscale.data.latents import build_cache
    from synthscale.data.text import tokenizer_for

    ae = load_autoencoder(args.dir)
    data = from_dict(
        DataConfig,
        apply_overrides(DataConfig, dataclasses.asdict(ae.cfg.data), args.set or []),
        source=f"{args.dir} data config with --set",
    )
    cache = build_cache(ae, get_dataset(data, args.split), tokenizer_for(data), args.root, progress=not args.quiet)
    print(f"{len(cache)} {args.split} items of {ae.name} at {cache.path}: {cache.spec}")
    return 0


# ---------------------------------------------------------------------------------------------- flops


def cmd_flops(args: argparse.Namespace) -> int:
    import math

    from synthscale.compute.flops import format_report
    from synthscale.config import ModelConfig, ObjectiveConfig, load
    from synthscale.data.latents import LatentSpec, TextSpec
    from synthscale.data.text import WordTokenizer
    from synthscale.objectives import get_objective

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
    objective = get_objective(load(ObjectiveConfig, None, [f"name={args.objective}", *(args.set or [])]))
    model_cfg = ModelConfig(size=args.size, patch_size=args.patch_size, text_layers=args.text_layers)
    if objective.latent == "continuous":  # --tokens counts tokens after patchify
        latent = LatentSpec("continuous", args.channels, side * args.patch_size, side * args.patch_size)
    else:
        latent = LatentSpec("discrete", max(1, (args.vocab - 1).bit_length()), side, side, vocab_size=args.vocab)
    text = TextSpec(args.text_vocab or WordTokenizer.for_shapes().vocab_size, args.text_tokens)
    report = objective.flops_report(model_cfg, latent, text)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


# ---------------------------------------------------------------------------------------------- study / evaluate


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, e.g. 4,10,20; got {text!r}") from None

    return parse


def _cfg_list(text: str):
    return [None] if text.strip() == "best" else _csv(float)(text)


def cmd_study(args: argparse.Namespace) -> int:
    from synthscale.study.plan import plan_study
    from synthscale.study.run import dry_run, load_study, run_study

    if args.dry_run:
        study = load_study(args.spec, args.set)
        print(dry_run(plan_study(study, args.out, spec_dir=args.spec.resolve().parent)))
        return 0
    result = run_study(
        args.spec, args.out, args.set, executor=args.executor, workers=args.workers, progress=not args.quiet
    )
    states = result["states"]
    failed = [i for i, v in states.items() if v in ("failed", "blocked")]
    print(
        f"study finished in {result['seconds'] / 60:.1f} min: {sum(v == 'done' for v in states.values())} stages "
        f"done, {len(failed)} failed or blocked"
    )
    for i in failed:
        print(f"  {states[i]}: {i}")
    report = result["report"]
    print(f"report: {report['html']}\nsummary: {report['markdown']}")
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from synthscale.config import EvalSettings
    from synthscale.evaluate.probes import load_or_train_probe
    from synthscale.evaluate.runner import RunEvaluator, evaluate_run, product_settings

    settings = EvalSettings(n=args.n, holdout_n=args.holdout_n, seed=args.seed)
    run_cfg = RunEvaluator.run_config(args.run_dir)
    moved = {k: str(v) for k, v in (("autoencoder", args.autoencoder), ("cache_root", args.cache_root)) if v}
    if moved:  # the run's autoencoder or latent cache moved: point the run at them, once checked
        import dataclasses

        from synthscale.train.location import relocate

        relocate(args.run_dir, dataclasses.replace(run_cfg, **moved))
        run_cfg = RunEvaluator.run_config(args.run_dir)
    plan = None
    if args.steps or args.cfg or args.weights or args.milestones:
        from synthscale.objectives import get_objective

        objective = get_objective(run_cfg.objective)
        spec = RunEvaluator.latent_spec(args.run_dir)
        for s in args.steps or []:
            try:
                objective.check_steps(s, objective.image_tokens(run_cfg.model, spec))
            except ValueError as e:
                raise ConfigError(f"--steps: {e}") from None
        cfgs = args.cfg or [settings.cfg_scale]
        plan = product_settings(
            args.run_dir,
            args.milestones or "all",
            args.weights or ["ema", "raw"],
            args.steps or [objective.default_steps(spec)],
            cfgs,
            speed=args.speed,
        )
    probe = load_or_train_probe(run_cfg.data, args.probe_cache, progress=not args.quiet)  # after the checks: minutes
    records = evaluate_run(args.run_dir, probe, settings, plan=plan, progress=not args.quiet)
    for r in sorted(records, key=lambda r: (r.train_flops, r.weights, r.steps, r.cfg_scale)):
        m = r.metrics
        print(
            f"{r.train_flops:10.3g} FLOPs {r.weights:3} steps {r.steps:4} cfg {r.cfg_scale:<4g} "
            f"fd-probe {m.get('fd_probe', float('nan')):8.3f}  prompt {m.get('prompt_acc', float('nan')):.3f}  "
            f"loss {m.get('loss', float('nan')):.4f}"
        )
    print(f"records: {Path(args.run_dir) / 'eval' / 'records.jsonl'}")
    return 0


# ---------------------------------------------------------------------------------------------- sample / serve


def _device(args: argparse.Namespace):
    import torch

    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA device; use --device cpu")
    return device


def _steps_arg(text: str) -> int | dict[str, int]:
    """'20' (every model) or 'flow=50,masked=8' (per objective)."""
    try:
        if "=" not in text:
            return int(text)
        return {k.strip(): int(v) for k, v in (part.split("=", 1) for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or OBJECTIVE=N[,OBJECTIVE=N], got {text!r}") from None


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"--prompts-file: cannot read {args.prompts_file}: {e}") from None
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError("no prompt: pass --prompt 'a small red circle above a large blue square' or --prompts-file")
    return prompts


def _sample_jobs(args: argparse.Namespace, device) -> list:
    from synthscale.evaluate.samples import SampleJob, slug, steps_for
    from synthscale.study.results import STORE_NAME
    from synthscale.train import load_generator

    target = Path(args.target)
    cfg = args.cfg if args.cfg is not None else None
    if (target / STORE_NAME).is_file():
        from synthscale.study.pick import best_models

        if args.milestone is not None:
            raise ConfigError("--milestone picks within one run; for a study folder use --compute FLOPS")
        jobs = []
        for obj, c in best_models(target, args.compute).items():
            g = load_generator(c.run_dir, c.step, args.weights or c.weights, device=device)
            steps = steps_for(g, args.steps, c.steps)
            short = f"{obj} {c.size} {c.train_flops:.2g} FLOPs"
            cfg_scale = c.cfg_scale if cfg is None else cfg
            jobs.append(SampleJob(slug(f"{obj}-{c.size}"), short, g, steps, cfg_scale, about=c.label()))
        return jobs
    if not (target / "config.json").is_file():
        raise ConfigError(f"{target} is neither a run folder (config.json) nor a study folder ({STORE_NAME})")
    if args.compute is not None:
        raise ConfigError("--compute picks among a study's runs; for one run use --milestone FLOPS")
    g = load_generator(target, weights=args.weights or "ema", device=device, milestone=args.milestone or "last")
    requested = {g.objective.name: args.steps} if isinstance(args.steps, int) else args.steps
    label = f"{g.objective.name} {g.run_cfg.model.size} {g.checkpoint.train_flops:.2g} FLOPs"
    steps = steps_for(g, requested)
    about = f"{g.objective.name} {g.run_cfg.model.size} @ {g.checkpoint.train_flops:.3g} training FLOPs"
    return [SampleJob(slug(g.objective.name), label, g, steps, 3.0 if cfg is None else cfg, about=about)]


def cmd_sample(args: argparse.Namespace) -> int:
    from synthscale.evaluate.samples import format_rows, write_samples

    prompts = _prompts(args)
    try:
        jobs = _sample_jobs(args, _device(args))
        for job in jobs:
            job.generator.check_settings(job.steps, job.cfg)
            empty = [p for p in prompts if job.generator.check_prompt(p).empty]
            if empty:
                raise ConfigError(f"an empty prompt ({empty[0]!r}): every prompt needs at least one word")
        rows, grid = write_samples(jobs, prompts, args.out, n=args.n, seed=args.seed, scale=args.upscale)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    for job in jobs:
        g = job.generator
        print(
            f"{job.name}: {job.about} — run {g.run_dir.name}, milestone {g.checkpoint.name}, {g.weights} weights, "
            f"{job.steps} steps, CFG {job.cfg:g}"
        )
    print(format_rows(rows))
    print(f"wrote {sum(len(r['files']) for r in rows)} images under {args.out} and the grid {grid}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from synthscale.study.serve import serve

    try:
        serve(args.study_dir, host=args.host, port=args.port, device=_device(args), max_models=args.max_models)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ConfigError(str(e)) from None
    return 0


# ---------------------------------------------------------------------------------------------- results / report


def cmd_results(args: argparse.Namespace) -> int:
    from collections import Counter

    from synthscale.study.results import ResultsError, ResultsStore

    try:
        with ResultsStore.of(args.study_dir, create=False) as store:
            if args.csv:
                print(f"wrote {store.export_csv(args.csv)}")
            if args.parquet:
                print(f"wrote {store.export_parquet(args.parquet)}")
            if not (args.csv or args.parquet):
                runs = Counter(r["status"] for r in store.runs())
                recs = Counter(r["objective"] for r in store.records())
                print(
                    f"{store.path}: runs "
                    + (", ".join(f"{n} {s}" for s, n in sorted(runs.items())) or "none")
                    + "; records "
                    + (", ".join(f"{n} {o}" for o, n in sorted(recs.items())) or "none")
                    + f"; {len(store.autoencoders())} autoencoders, {len(store.artifacts())} artifacts"
                )
    except ResultsError as e:
        print(f"synthscale: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from synthscale.study.report import build_report
    from synthscale.study.results import ResultsError

    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be ≥ 0, got {args.bootstrap}")
    try:
        paths = build_report(args.study_dir, args.out, n_boot=args.bootstrap, seed=args.seed)
    except ResultsError as e:
        print(f"synthscale: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {paths['html']}\nsummary: {paths['markdown']}")
    return 0


# ---------------------------------------------------------------------------------------------- probe


def cmd_probe_train(args: argparse.Namespace) -> int:
    from synthscale.config import ProbeConfig, load
    from synthscale.evaluate.probes import format_ceiling, load_or_train_probe, probe_dir

    data = _data_config(args)
    probe_cfg = load(ProbeConfig, args.probe_config, args.probe_set or [])
    probe = load_or_train_probe(data, args.cache, probe_cfg, progress=not args.quiet)
    print(format_ceiling(probe.meta))
    print(f"probe:{probe.key} at {probe_dir(data, args.cache, probe_cfg)}")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthscale",
        description="Compute-controlled comparison of diffusion, masked-token and next-token image synthesis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="look at and prepare datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("preview", help="write a labelled grid of dataset items to a PNG")
    _data_args(p)
    p.add_argument("--n", type=int, default=64, help="number of items (default 64)")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG to write (default grid.png)")
    p.set_defaults(func=cmd_data_preview)
    p = data_sub.add_parser("stats", help="print attribute frequencies per split")
    _data_args(p)
    p.add_argument("--only-split", action="store_true", help="only the split named by --split")
    p.add_argument("--limit", type=int, default=2000, help="items per split to count (default 2000; 0 = all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_data_stats)

    p = data_sub.add_parser(
        "shard",
        help="write an image folder with captions as webdataset tar shards",
        description="Write SRC (images + captions.jsonl / captions.csv / name.txt sidecars) as "
        "shard-NNNNNN.tar files ({key}.png|jpg + {key}.txt [+ {key}.json]) and manifest.json. "
        "Unreadable images are skipped and listed in the manifest. Read them back with "
        "--dataset shards --set path=OUT.",
    )
    p.add_argument("src", type=Path, help="the image folder")
    p.add_argument("--out", type=Path, required=True, help="folder to write the shards into")
    p.add_argument("--shard-size", type=int, default=1000, help="items per shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.set_defaults(func=cmd_data_shard)

    ae = sub.add_parser("autoencoder", help="train, evaluate and cache image autoencoders")
    ae_sub = ae.add_subparsers(dest="autoencoder_command", required=True, metavar="ACTION")
    p = ae_sub.add_parser(
        "train",
        help="train an autoencoder from a config (e.g. configs/autoencoders/kl-f4c4.yaml)",
        description="Train an autoencoder from scratch and write DIR/model.safetensors, "
        "DIR/config.json and DIR/train.json (atomically). Deterministic for train.seed.",
    )
    p.add_argument("--config", type=Path, default=None, help="a YAML autoencoder config (keys of AutoencoderConfig)")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.steps=500")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _compute_args(p)
    p.set_defaults(func=cmd_autoencoder_train)
    p = ae_sub.add_parser(
        "eval",
        help="PSNR, SSIM, L1 (+ codebook usage, perplexity) and a reconstruction grid",
        description="Reconstruct a split (default: test) and write DIR/eval.json and "
        "DIR/reconstructions.png (originals beside reconstructions).",
    )
    p.add_argument("dir", type=Path, help="a model folder written by `synthscale autoencoder train`")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "holdout"])
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (default 0 = all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-grid", action="store_true", help="do not write the reconstruction grid PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _compute_args(p)
    p.set_defaults(func=cmd_autoencoder_eval)
    p = ae_sub.add_parser(
        "cache",
        help="encode a dataset split once into the latent cache",
        description="Encode a split with the autoencoder in DIR into ROOT/<key>/ (key = hash of "
        "data config + split, autoencoder weights, tokenizer). Resumes an interrupted build; "
        "a complete cache is reused.",
    )
    p.add_argument("dir", type=Path, help="a model folder written by `synthscale autoencoder train`")
    p.add_argument("--root", type=Path, required=True, help="the cache root folder")
    p.add_argument("--split", default="train", choices=["train", "val", "test", "holdout"])
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override the autoencoder's data config for the cached data, e.g. size=5000",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _compute_args(p)
    p.set_defaults(func=cmd_autoencoder_cache)

    p = sub.add_parser(
        "flops",
        help="parameters and analytic FLOPs of a model size × objective",
        description="Parameters (total, non-embedding) and FLOPs/MACs per forward, per training "
        "example and per sampled image (every step count of the objective, with and without CFG); "
        "the caption encoder is its own column.",
    )
    p.add_argument("--size", default="B", help="a model size preset: S, B, L, XL, 2x64, 4x128, 6x192, 8x256")
    p.add_argument("--objective", default="flow", help="flow, masked or autoregressive (default flow)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="an objective config key, e.g. sampler=heun (flow)"
    )
    p.add_argument("--tokens", type=int, default=256, help="image tokens in the sequence (after patchify; a square)")
    p.add_argument("--text-tokens", type=int, default=32, help="caption length in tokens (default 32)")
    p.add_argument("--text-layers", type=int, default=2, help="caption encoder depth (default 2)")
    p.add_argument("--text-vocab", type=int, default=0, help="caption vocabulary (params only; default: shapes)")
    p.add_argument("--channels", type=int, default=4, help="continuous latent channels (flow; default 4)")
    p.add_argument("--patch-size", type=int, default=1, help="flow patch size p (default 1)")
    p.add_argument("--vocab", type=int, default=1024, help="discrete codebook size (token objectives; default 1024)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_flops)

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
    _compute_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "study",
        help="run (or resume) a study grid and write its report",
        description="Expand a study spec into stages (autoencoders, probe, caches, training runs, "
        "evaluations), run those not yet done, and write the report. Re-running resumes.",
    )
    p.add_argument("spec", type=Path, help="study spec YAML, e.g. configs/studies/default.yaml")
    p.add_argument("--out", type=Path, required=True, help="study folder (created; reused on re-runs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study key, e.g. budgets=[1e12]")
    p.add_argument("--dry-run", action="store_true", help="print the stages and estimated FLOPs; run nothing")
    p.add_argument(
        "--executor",
        choices=["sequential", "processes", "slurm", "ray"],
        default=None,
        help="default: the spec's (slurm/ray: cluster jobs, configured by the spec's cluster: section)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="stages at once: worker processes, or cluster jobs in flight"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _compute_args(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "evaluate",
        help="sample and score a trained run at its milestones",
        description="Generate from fixed test prompts with fixed seeds, score quality (fd-probe, KID), "
        "prompt following and validation loss; append records to RUN_DIR/eval/.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--milestones", choices=["all", "last"], default=None)
    p.add_argument("--steps", type=_csv(int), default=None, help="sampling steps, e.g. 4,10,20,50,100")
    p.add_argument(
        "--cfg",
        type=_cfg_list,
        default=None,
        help="guidance scales, e.g. 1,2,3; or 'best': chosen on validation prompts, reported on test",
    )
    p.add_argument("--weights", type=_csv(str), default=None, help="ema,raw")
    p.add_argument("--n", type=int, default=256, help="test prompts per setting (default 256)")
    p.add_argument("--holdout-n", type=int, default=64, help="extra held-out-combination prompts (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", action="store_true", help="also measure sampling latency and throughput")
    p.add_argument("--probe-cache", type=Path, default=Path("cache/probes"), help="where the probe is kept")
    p.add_argument(
        "--autoencoder",
        type=Path,
        default=None,
        help="the run's autoencoder folder, if it moved (checked against the one the run recorded)",
    )
    p.add_argument("--cache-root", type=Path, default=None, help="the run's latent-cache root, if it moved")
    p.add_argument("--quiet", action="store_true")
    _compute_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "sample",
        help="draw images from your own prompts with a trained run, or each paradigm's best model of a study",
        description="RUN_DIR: one run at --milestone. STUDY_DIR (holds results.sqlite): for each paradigm "
        "its best model (by fd-probe) at the training compute nearest to --compute, side by side. Writes one "
        "PNG per image, a labelled grid, and prints per prompt the wall time, images/s and analytic FLOPs/image.",
    )
    p.add_argument("target", type=Path, metavar="RUN_DIR|STUDY_DIR")
    p.add_argument("--prompt", action="append", help="a caption (repeat for more)")
    p.add_argument("--prompts-file", type=Path, default=None, help="one caption a line (# comments skipped)")
    p.add_argument("--n", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument(
        "--steps",
        type=_steps_arg,
        default=None,
        help="sampling steps: N, or per objective e.g. flow=50,masked=8 (default: the study's, else the objective's)",
    )
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the study's, else 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "raw"], default=None, help="default: ema (a study: the evaluated)")
    p.add_argument("--milestone", default=None, help="RUN_DIR: last (default), an index, or training FLOPs e.g. 3e12")
    p.add_argument("--compute", type=float, default=None, help="STUDY_DIR: training FLOPs (default: the highest)")
    p.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default ./samples)")
    p.add_argument("--upscale", type=int, default=1, help="enlarge each PNG K× (nearest neighbour) for viewing")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    _compute_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "serve",
        help="a local web page where each paradigm's best model draws your prompt side by side",
        description="Type a prompt, pick a training-compute level and sampling settings, and watch each "
        "paradigm's best model at that compute draw it, with its latency and FLOPs per image. Serves the "
        "study's report too. Binds to loopback (this machine only) unless --host says otherwise.",
    )
    p.add_argument("study_dir", type=Path, help="the study folder (holds results.sqlite)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-models", type=int, default=6, help="models kept in memory at once (default 6)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    _compute_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "results",
        help="summarise or export a study's results store (CSV, Parquet)",
        description="One row per (run, milestone, eval setting): grid coordinates, FLOPs, every "
        "metric as a column and the instruments as JSON. Without a flag, print counts.",
    )
    p.add_argument("study_dir", type=Path, help="the study folder (holds results.sqlite)")
    p.add_argument("--csv", type=Path, default=None, metavar="OUT.csv", help="write the records as CSV")
    p.add_argument(
        "--parquet",
        type=Path,
        default=None,
        metavar="OUT.parquet",
        help="write the records as Parquet (needs the parquet extra: pyarrow)",
    )
    p.set_defaults(func=cmd_results)

    p = sub.add_parser(
        "report",
        help="fit scaling laws and write the study's HTML report and Markdown summary",
        description="Fits, figures, the six findings judged on this study's numbers and a "
        "recommendation, from the study's results store. Prints the paths written.",
    )
    p.add_argument("study_dir", type=Path, help="the study folder (holds results.sqlite)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default STUDY_DIR/report)")
    p.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap refits per fit for the 95 %% intervals (default 200)"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=cmd_report)

    probe = sub.add_parser("probe", help="the in-domain attribute probe behind fd-probe and prompt following")
    probe_sub = probe.add_subparsers(dest="probe_command", required=True, metavar="ACTION")
    p = probe_sub.add_parser(
        "train",
        help="train (or load) the probe of a dataset config and print its ceiling",
        description="Trains once per dataset distribution on fresh renders and caches it by "
        "hash; prints its accuracy on held-out real renders (the ceiling of every "
        "prompt-following number).",
    )
    p.add_argument("--dataset", default="shapes", choices=["shapes"], help="probes need exact labels: shapes")
    p.add_argument("--config", type=Path, default=None, help="a YAML data config (keys of DataConfig)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a data key, e.g. counting=true")
    p.add_argument("--probe-config", type=Path, default=None, help="a YAML probe config (keys of ProbeConfig)")
    p.add_argument("--probe-set", action="append", metavar="KEY=VALUE", help="override a probe key, e.g. steps=400")
    p.add_argument("--cache", type=Path, default=Path("cache/probes"), help="probe cache (default cache/probes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _compute_args(p)
    p.set_defaults(func=cmd_probe_train)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _apply_threads(args)
        return args.func(args)
    except ConfigError as e:
        print(f"synthscale: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthscale: interrupted; finished stages and checkpoints are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
