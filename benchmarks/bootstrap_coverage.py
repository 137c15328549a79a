"""Coverage of the two-level bootstrap interval (study/replicates.py) in simulation: studies with a known mean,
seed (training) noise and prompt (binomial) noise; how often the 95 % interval of the mean over k seeds covers the
truth, beside a prompts-only interval (what a single run's record reports) and a normal-quantile interval with the
same spread (what Student's t corrects). Writes benchmarks/results/bootstrap_coverage.json.
Usage: python benchmarks/bootstrap_coverage.py [--sims 1000]"""

from __future__ import annotations

import argparse

import numpy as np
from common import print_table, write_json

from synthscale.study import replicates as rep


def coverage(rng, k: int, seed_sd: float, n_prompts: int, sims: int, truth: float = 0.4) -> dict:
    hits = {"two-level": 0, "two-level, normal quantile": 0, "prompts only": 0}
    for _ in range(sims):
        p = np.clip(truth + rng.normal(0, seed_sd, k), 0.01, 0.99)
        acc = rng.binomial(n_prompts, p) / n_prompts
        se = np.sqrt(np.maximum(acc * (1 - acc), 1 / n_prompts) / n_prompts)
        lo, hi = rep.two_level_interval(acc, se, rng)
        half_z = (hi - lo) / 2 * rep.Z95 / rep.t95(k - 1)
        hits["two-level"] += lo <= truth <= hi
        hits["two-level, normal quantile"] += abs(acc.mean() - truth) <= half_z
        hits["prompts only"] += abs(acc.mean() - truth) <= rep.Z95 * np.sqrt(np.mean(se**2) / k)
    return {"seeds": k, "seed_sd": seed_sd, "prompts": n_prompts, **{m: h / sims for m, h in hits.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = [coverage(rng, k, sd, n, args.sims) for k in (2, 3, 5) for sd in (0.0, 0.04, 0.08, 0.15) for n in (256,)]
    print_table(rows, f"coverage of a 95 % interval of the mean over seeds ({args.sims} simulated studies each)")
    write_json("bootstrap_coverage", {"sims": args.sims, "truth": 0.4, "rows": rows})


if __name__ == "__main__":
    main()
