"""Load check of `synthscale serve`: many concurrent generate requests on loopback, all answered, none lost.

Starts the server in-process on 127.0.0.1 (a free port), loads each paradigm's model at the chosen level with one
request, then fires `--requests` generate requests at once (round robin over the paradigms, distinct seeds) from
`--concurrency` client threads, and checks every one came back 200 with its images and that the server still
answers afterwards. Prints p50/p95 of the end-to-end latency (queueing included: one generation at a time per
model) and of the generation time the server measured, per paradigm.

Usage: python benchmarks/serve_load.py STUDY_DIR [--requests 50] [--concurrency 50] [--n 1] [--level -1]
       [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from common import print_table, write_json

from synthscale.study.serve import make_server

PROMPT = "a small red circle above a large blue square"


def post(port: int, body: dict, timeout: float) -> tuple[int, dict, float]:
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        out = json.loads(r.read())
        conn.close()
        return r.status, out, time.perf_counter() - t0
    except (OSError, ValueError) as e:  # a lost request: counted, never raised
        return -1, {"error": repr(e)}, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--n", type=int, default=1, help="images per request")
    ap.add_argument("--level", type=int, default=-1, help="compute level index (default: the highest)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    server = make_server(args.study_dir, host="127.0.0.1", port=0, device=args.device, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port, app = server.server_address[1], server.RequestHandlerClass.app
    level = args.level % len(app.levels)
    objectives = list(app.choices[level])
    try:
        for obj in objectives:  # load every model once, so the timings below are of generation, not loading
            status, out, _ = post(port, {"prompt": PROMPT, "objective": obj, "level": level}, args.timeout)
            if status != 200:
                raise SystemExit(f"warm-up request for {obj} failed ({status}): {out.get('error')}")
        bodies = [
            {"prompt": PROMPT, "objective": objectives[i % len(objectives)], "level": level, "seed": i, "n": args.n}
            for i in range(args.requests)
        ]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda b: post(port, b, args.timeout), bodies))
        wall = time.perf_counter() - t0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        alive = conn.getresponse().read() == b"ok\n"
    finally:
        server.shutdown()
        server.server_close()

    answered = [(b, r) for b, r in zip(bodies, results) if r[0] == 200 and len(r[1].get("images", [])) == args.n]
    lost = len(bodies) - len(answered)
    rows = []
    for obj in [*objectives, "all"]:
        mine = [r for b, r in answered if obj in ("all", b["objective"])]
        e2e = [r[2] for r in mine]
        gen = [r[1]["latency_s"] for r in mine]
        rows.append(
            {
                "objective": obj,
                "answered": len(mine),
                "p50_s": pct(e2e, 50),
                "p95_s": pct(e2e, 95),
                "gen_p50_s": pct(gen, 50),
                "gen_p95_s": pct(gen, 95),
                "flops_per_image": mine[0][1]["flops_per_image"] if mine and obj != "all" else float("nan"),
            }
        )
    title = (
        f"{args.requests} concurrent generate requests ({args.concurrency} clients, {args.n} image each, level "
        f"{level}: {app.levels[level]:.3g} training FLOPs) on 127.0.0.1, device {args.device}, "
        f"{args.threads} thread(s); p50/p95 end to end (queueing included) and of generation alone"
    )
    print_table(rows, title)
    print(f"\nanswered {len(answered)}/{len(bodies)}, lost {lost}, server up afterwards: {alive}, wall {wall:.2f} s")
    errors = sorted({r[1].get("error", "") for _, r in zip(bodies, results) if r[0] != 200})
    for e in errors:
        print("  error:", e)
    write_json(
        "serve_load",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
            "answered": len(answered),
            "lost": lost,
            "server_alive": alive,
            "wall_s": wall,
            "errors": errors,
        },
    )
    if lost or not alive:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
