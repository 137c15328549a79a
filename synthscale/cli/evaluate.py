"""`synthscale evaluate`: sample and score one trained run at its milestones."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from synthscale.cli.common import add_compute_args, cfg_list, choices_of, csv_list, default_of, device_of, existing_dir
from synthscale.config import ConfigError, EvalSettings


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="sample and score a trained run at its milestones",
        description="Generate from fixed test prompts with fixed seeds, score quality (Fréchet distance, KID) and "
        "prompt following with the chosen instruments, and validation loss; append records to RUN_DIR/eval/.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--milestones", choices=choices_of(EvalSettings, "milestones"), default=None)
    p.add_argument("--steps", type=csv_list(int), default=None, help="sampling steps, e.g. 4,10,20,50,100")
    p.add_argument(
        "--cfg",
        type=cfg_list,
        default=None,
        help="guidance scales, e.g. 1,2,3; or 'best': chosen per checkpoint among "
        + ", ".join(f"{c:g}" for c in default_of(EvalSettings, "cfg_candidates"))
        + f" on {default_of(EvalSettings, 'val_n')} validation prompts (quality and prompt following, rescaled), "
        "reported on test",
    )
    p.add_argument("--weights", type=csv_list(str), default=None, help="ema,raw")
    for key, flag, what in (
        ("n", "--n", "test prompts per setting"),
        ("holdout_n", "--holdout-n", "extra held-out-combination prompts"),
        ("seed", "--seed", "evaluation prompts and sampling seed"),
    ):
        p.add_argument(flag, type=int, default=default_of(EvalSettings, key), help=f"{what} (default %(default)s)")
    p.add_argument("--speed", action="store_true", help="also measure sampling latency and throughput")
    p.add_argument(
        "--instrument",
        action="append",
        metavar="SPEC",
        help="score with: probe | encoder | inception:/path/weights.pth | clip:/path/folder (repeatable; default: "
        "shapes probe + encoder, your own data encoder)",
    )
    p.add_argument(
        "--instrument-cache",
        type=Path,
        default=Path("cache/instruments"),
        help="where trained instruments (probe, encoder) are kept (default %(default)s)",
    )
    p.add_argument(
        "--autoencoder",
        type=Path,
        default=None,
        help="the run's autoencoder folder, if it moved (checked against the one the run recorded)",
    )
    p.add_argument("--cache-root", type=Path, default=None, help="the run's latent-cache root, if it moved")
    p.add_argument("--quiet", action="store_true")
    add_compute_args(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from synthscale.evaluate.instruments import open_instrument, resolve_specs
    from synthscale.evaluate.instruments.ceiling import measure_ceiling
    from synthscale.evaluate.runner import RunEvaluator, evaluate_run
    from synthscale.train import milestone_checkpoints

    run_dir = existing_dir(args.run_dir, "config.json", "a run folder (written by `synthscale train`)")
    milestone_checkpoints(run_dir)  # none: a one-line error before an instrument trains (minutes)
    settings = EvalSettings(n=args.n, holdout_n=args.holdout_n, seed=args.seed, instruments=args.instrument or [])
    run_cfg = RunEvaluator.run_config(run_dir)
    moved = {k: str(v) for k, v in (("autoencoder", args.autoencoder), ("cache_root", args.cache_root)) if v}
    if moved:  # the run's autoencoder or latent cache moved: point the run at them, once checked
        from synthscale.train.location import relocate

        relocate(run_dir, dataclasses.replace(run_cfg, **moved))
        run_cfg = RunEvaluator.run_config(run_dir)
    specs = resolve_specs(settings.instruments, run_cfg.data)  # a wrong path is refused before any work
    plan = _requested_settings(args, run_dir, run_cfg, settings)
    device = device_of(args)
    quiet, cache = args.quiet, args.instrument_cache
    instruments = [open_instrument(s, run_cfg.data, cache, progress=not quiet, device=device) for s in specs]
    for instrument in instruments:  # real images' scores at this n, stored beside every record
        instrument.ceiling = measure_ceiling(instrument, run_cfg.data, settings.n, settings.seed)
    records = evaluate_run(run_dir, instruments, settings, plan=plan, device=device, progress=not quiet)
    shown = [k for i in instruments for k in (i.quality, i.following) if k]
    for r in sorted(records, key=lambda r: (r.train_flops, r.weights, r.steps, r.cfg_scale)):
        m = r.metrics
        scores = "  ".join(f"{k} {m.get(k, float('nan')):.3f}" for k in shown)
        print(
            f"{r.train_flops:10.3g} FLOPs {r.weights:3} steps {r.steps:4} cfg {r.cfg_scale:<4g} {scores}  "
            f"loss {m.get('loss', float('nan')):.4f}"
        )
    print(f"records: {run_dir / 'eval' / 'records.jsonl'}")
    return 0


def _requested_settings(args: argparse.Namespace, run_dir: Path, run_cfg, settings: EvalSettings):
    """The settings the flags ask for (None: the study's plan), checked before an instrument trains (minutes)."""
    if not (args.steps or args.cfg or args.weights or args.milestones):
        return None
    from synthscale.evaluate.runner import RunEvaluator, product_settings
    from synthscale.objectives import get_objective

    objective = get_objective(run_cfg.objective)
    spec = RunEvaluator.latent_spec(run_dir)
    for s in args.steps or []:
        try:
            objective.check_steps(s, objective.image_tokens(run_cfg.model, spec))
        except ValueError as e:
            raise ConfigError(f"--steps: {e}") from None
    valid = choices_of(EvalSettings, "weights")
    for w in args.weights or []:
        if w not in valid:
            raise ConfigError(f"--weights: {w!r} is not one of {', '.join(valid)}")
    return product_settings(
        run_dir,
        args.milestones or "all",
        args.weights or default_of(EvalSettings, "weights"),
        args.steps or [objective.default_steps(spec)],
        args.cfg or [settings.cfg_scale],
        speed=args.speed,
    )
