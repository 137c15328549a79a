"""`synthscale sample` (your prompts through a run, or each paradigm's best model of a study) and
`synthscale serve` (the same on a local web page)."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthscale.cli.common import add_compute_args, choices_of, device_of
from synthscale.config import ConfigError, EvalSettings


def register(sub) -> None:
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
    p.add_argument(
        "--weights",
        choices=choices_of(EvalSettings, "weights"),
        default=None,
        help="default: ema (a study: the evaluated)",
    )
    p.add_argument("--milestone", default=None, help="RUN_DIR: last (default), an index, or training FLOPs e.g. 3e12")
    p.add_argument("--compute", type=float, default=None, help="STUDY_DIR: training FLOPs (default: the highest)")
    p.add_argument("--out", type=Path, default=Path("samples"), help="output folder (default ./samples)")
    p.add_argument("--upscale", type=int, default=1, help="enlarge each PNG K× (nearest neighbour) for viewing")
    add_compute_args(p)
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
    add_compute_args(p)
    p.set_defaults(func=cmd_serve)


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
        from synthscale.study.pick import best_models, use_chosen_temperature

        if args.milestone is not None:
            raise ConfigError("--milestone picks within one run; for a study folder use --compute FLOPS")
        jobs = []
        for obj, c in best_models(target, args.compute).items():
            g = load_generator(c.run_dir, c.step, args.weights or c.weights, device=device)
            use_chosen_temperature(g, c)
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
        jobs = _sample_jobs(args, device_of(args))
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
        serve(args.study_dir, host=args.host, port=args.port, device=device_of(args), max_models=args.max_models)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ConfigError(str(e)) from None
    return 0
