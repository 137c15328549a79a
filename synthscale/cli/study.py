"""`synthscale study` (run or resume a grid), `synthscale results` (its store) and `synthscale report`."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from synthscale.cli.common import add_compute_args, choices_of
from synthscale.config import ConfigError, StudyConfig


def register(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run (or resume) a study grid and write its report",
        description="Expand a study spec into stages (autoencoders, probe, caches, training runs, "
        "evaluations), run those not yet done, and write the report. Re-running resumes.",
    )
    p.add_argument("spec", type=Path, help="study spec YAML, e.g. configs/studies/default.yaml")
    p.add_argument("--out", type=Path, required=True, help="study folder (created; reused on re-runs)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a study key, e.g. budgets=[1e12]")
    p.add_argument(
        "--run-set",
        action="append",
        metavar="[OBJECTIVE:]KEY=VALUE",
        help="append a run override (repeatable; the spec's stay), e.g. train.lr=1e-3 or flow:model.patch_size=2",
    )
    p.add_argument("--dry-run", action="store_true", help="print the stages and estimated FLOPs; run nothing")
    p.add_argument(
        "--executor",
        choices=choices_of(StudyConfig, "executor"),
        default=None,
        help="default: the spec's (slurm/ray: cluster jobs, configured by the spec's cluster: section)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="stages at once: worker processes, or cluster jobs in flight"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_compute_args(p)
    p.set_defaults(func=cmd_study)

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
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap refits per fit for the 95 %% intervals")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed")
    p.set_defaults(func=cmd_report)


def cmd_study(args: argparse.Namespace) -> int:
    from synthscale.study.plan import plan_study
    from synthscale.study.run import dry_run, load_study_config, run_study

    overrides = [*(args.set or []), *([f"device={args.device}"] if args.device != "auto" else [])]
    if args.dry_run:
        study = load_study_config(args.spec, overrides, args.run_set)
        print(dry_run(plan_study(study, args.out, spec_dir=args.spec.resolve().parent)))
        return 0
    result = run_study(
        args.spec,
        args.out,
        overrides,
        executor=args.executor,
        workers=args.workers,
        progress=not args.quiet,
        run_sets=args.run_set,
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


def cmd_results(args: argparse.Namespace) -> int:
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

    if args.bootstrap is not None and args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be ≥ 0, got {args.bootstrap}")
    options = {k: v for k, v in (("n_boot", args.bootstrap), ("seed", args.seed)) if v is not None}
    try:
        paths = build_report(args.study_dir, args.out, **options)  # unset options: the report's defaults
    except ResultsError as e:
        print(f"synthscale: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {paths['html']}\nsummary: {paths['markdown']}")
    return 0
