"""A real browser against `synthscale serve`: headless Chromium loads the page served on loopback, submits a
prompt (a link that fills the form and presses Draw), waits for the three paradigms' images and saves a screenshot.

Checks the rendered page (not the API): three columns, each with its images and its latency/FLOPs line, and no
error box. Needs Debian's `chromium` package (or --chromium PATH). Nothing leaves the machine: the server binds
127.0.0.1 and Chromium runs with networking extras disabled.

Usage: python benchmarks/serve_browser.py STUDY_DIR [--prompt "…"] [--level -1] [--n 4] [--seed 0]
       [--screenshot benchmarks/results/serve_page.png]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from common import RESULTS, print_table, write_json

from synthscale.study.serve import make_server

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,1000",
]


def chromium(binary: str, url: str, mode: list[str], budget_ms: int, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="synthscale-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *mode, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--prompt", default="a small red circle above a large blue square")
    ap.add_argument("--level", type=int, default=-1, help="compute level index (default: the highest)")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--screenshot", type=Path, default=RESULTS / "serve_page.png")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    if not args.chromium:
        raise SystemExit("no chromium found: apt-get install chromium, or pass --chromium PATH")

    server = make_server(args.study_dir, host="127.0.0.1", port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    app = server.RequestHandlerClass.app
    level = args.level % len(app.levels)
    query = urlencode({"prompt": args.prompt, "level": level, "n": args.n, "seed": args.seed, "run": 1})
    url = f"http://127.0.0.1:{server.server_address[1]}/?{query}"
    try:
        t0 = time.perf_counter()
        dom = chromium(args.chromium, url, ["--dump-dom"], 120_000, args.timeout).stdout
        dom_s = time.perf_counter() - t0
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = chromium(args.chromium, url, [f"--screenshot={args.screenshot.resolve()}"], 120_000, args.timeout)
    finally:
        server.shutdown()
        server.server_close()

    # each column is one <div class="col" id="col-OBJECTIVE" …>; its text runs to the next column
    columns = {m.group(1): m for m in re.finditer(r'<div class="col" id="col-(\w+)"([^>]*)>', dom)}
    starts = sorted(m.start() for m in columns.values()) + [dom.find("<script") % (len(dom) + 1)]
    rows = []
    for objective in app.choices[level]:
        m = columns.get(objective)
        body = dom[m.start() : starts[starts.index(m.start()) + 1]] if m else ""
        rows.append(
            {
                "objective": objective,
                "done": bool(m) and 'data-done="1"' in m.group(2),
                "images": body.count("<img"),
                "latency_line": "latency" in body and "FLOPs/image" in body,
            }
        )
    errors = re.findall(r'<div class="error">(.*?)</div>', dom)
    ok = (
        all(r["done"] and r["images"] == args.n and r["latency_line"] for r in rows)
        and not errors
        and args.screenshot.is_file()
    )
    print_table(rows, f"headless Chromium on {url} ({dom_s:.1f} s to render the race)")
    if errors:
        print("errors on the page:", *errors, sep="\n  ")
    if not args.screenshot.is_file():
        print("no screenshot:", shot.stderr[-2000:])
    print(f"screenshot: {args.screenshot}  all three columns drew {args.n} images: {ok}")
    write_json(
        "serve_browser",
        {
            "chromium": subprocess.run([args.chromium, "--version"], capture_output=True, text=True).stdout.strip(),
            "url": url,
            "level": level,
            "rows": rows,
            "errors": errors,
            "render_s": dom_s,
            "screenshot": str(args.screenshot),
            "ok": ok,
        },
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
