"""Analysis cost: one scaling fit, the whole report of a study, and the fit with OpenBLAS threads left alone (what
`threadpoolctl` saves). Goal: the report of a default-sized study (3 objectives × 9 milestones) in ≤ 60 s on one
busy core, so `make demo` can always afford it. Usage: python benchmarks/report.py [--bootstrap 200]"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import median_time, print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the synthetic study lives in tests/fixtures
from synthscale.study import scaling  # noqa: E402
from synthscale.study.report import build_report  # noqa: E402
from synthscale.study.results import ResultsStore  # noqa: E402
from tests.fixtures.synthetic_study import make_study  # noqa: E402

GOAL_S = 60.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    c = np.logspace(11, 13, 9)
    v = (0.4 + 0.5 * (c / 1e11) ** -0.3) * np.exp(rng.normal(0, 0.01, len(c)))
    rows = []
    t_fit = median_time(lambda: scaling.fit_power_law(c, v, n_boot=args.bootstrap), repeats=3)
    rows.append({"what": f"fit, 9 points, {args.bootstrap} bootstrap refits", "seconds": t_fit})
    t_one = median_time(lambda: scaling.fit_power_law(c, v, n_boot=0), repeats=3)
    rows.append({"what": "fit, 9 points, no bootstrap (one BLAS thread)", "seconds": t_one})
    plain = scaling._one_blas_thread
    scaling._one_blas_thread = lambda: __import__("contextlib").nullcontext()  # BLAS threads as the library sets them
    try:
        t_threads = median_time(lambda: scaling.fit_power_law(c, v, n_boot=0), repeats=3)
    finally:
        scaling._one_blas_thread = plain
    rows.append({"what": "fit, 9 points, no bootstrap (default BLAS threads)", "seconds": t_threads})
    with tempfile.TemporaryDirectory() as tmp:
        make_study(tmp)
        with ResultsStore.of(tmp, create=False) as store:
            n_records = len(store.records())
        t = time.perf_counter()
        build_report(tmp, n_boot=args.bootstrap)
        t_report = time.perf_counter() - t
    rows.append(
        {
            "what": f"report of the synthetic study ({n_records} records), {args.bootstrap} bootstrap refits",
            "seconds": t_report,
        }
    )
    print_table(rows, "Analysis cost (wall seconds, median of 3 for fits; other processes may share the CPU)")
    print(
        f"\nreport goal ≤ {GOAL_S:.0f} s: {'met' if t_report <= GOAL_S else 'NOT met'}; one BLAS thread makes a fit "
        f"{t_threads / t_one:.1f}× faster"
    )
    write_json(
        "report",
        {"rows": rows, "goal_report_s": GOAL_S, "bootstrap": args.bootstrap, "blas_thread_speedup": t_threads / t_one},
    )


if __name__ == "__main__":
    main()
