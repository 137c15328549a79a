"""Are two studies' results the same? Compares STUDY_A/results.sqlite and STUDY_B/results.sqlite row by row.

A check for refactors ("same seeds, same records"): every column of every table is compared except where and
how fast it ran (latency, throughput, seconds, timestamps, device, threads), content hashes and study paths
(blanked, since stage keys may change), and the runs' stored config text.

    python benchmarks/compare_records.py STUDY_A STUDY_B     # exit status 0 when identical
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
from pathlib import Path

TIMING = re.compile(r"latency|throughput|seconds|_per_s|updated|wall|^device$|^threads$")
HEX = re.compile(r"[0-9a-f]{16}")


def scrub(value, roots: list[str]):
    """The value with timing keys dropped, content hashes and the study folder blanked (JSON text parsed)."""
    if isinstance(value, dict):
        return {k: scrub(v, roots) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [scrub(v, roots) for v in value]
    if isinstance(value, str):
        if value[:1] in "{[":
            try:
                return scrub(json.loads(value), roots)
            except ValueError:
                pass
        for root in roots:
            value = value.replace(root, "<study>")
        return HEX.sub("<hash>", value)
    return value


def table_rows(db: Path, table: str) -> tuple[list[str], list[str]]:
    """(compared columns, the rows as sorted canonical JSON)."""
    cur = sqlite3.connect(db).execute(f"SELECT * FROM {table}")
    cols = [d[0] for d in cur.description]
    keep = [c for c in cols if not TIMING.search(c) and c != "config"]
    roots = [str(db.parent), str(db.parent.resolve())]
    rows = [r for r in cur if not (table == "meta" and r[0] == "updated")]  # a timestamp
    return keep, sorted(json.dumps(scrub({c: r[cols.index(c)] for c in keep}, roots), sort_keys=True) for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="a study folder (holds results.sqlite)")
    ap.add_argument("b", type=Path, help="the other study folder")
    args = ap.parse_args()
    a, b = args.a / "results.sqlite", args.b / "results.sqlite"
    tables = [r[0] for r in sqlite3.connect(a).execute("SELECT name FROM sqlite_master WHERE type='table'")]
    differ = 0
    for table in tables:
        keep, rows_a = table_rows(a, table)
        _, rows_b = table_rows(b, table)
        same = rows_a == rows_b
        differ += not same
        verdict = "identical" if same else "DIFFER"
        print(f"{table}: {len(rows_a)} vs {len(rows_b)} rows, columns {', '.join(keep)}: {verdict}")
        for x, y in zip(rows_a, rows_b):
            if x != y:
                print(f"  first difference:\n  A {x[:600]}\n  B {y[:600]}")
                break
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
