"""The results store: one SQLite file per study (stdlib `sqlite3`), written by the study's stages and read by the
fits, plots and report. Every write is one transaction, so a crash never leaves half of a batch behind.

Schema (version 1). Metrics and instruments are JSON objects, queryable with SQLite's json_extract:

    meta(key TEXT PRIMARY KEY, value TEXT)           schema_version; study (a name or the spec as JSON); notes
                                                     (shown as a banner); main_autoencoders (optional JSON
                                                     objective → autoencoder of the main grid)
    runs(run TEXT PRIMARY KEY,                       run id (a study uses the run folder's name, config hash last)
         objective, size, data_size, autoencoder,    the grid coordinates
         params, params_nonembedding,                N (total, non-embedding); NULL until known
         budget_flops,                               the run's training FLOPs budget
         status  pending | running | done | failed | blocked (a stage it needs failed),
         error,                                      what went wrong when status = failed
         config_hash, config,                        hash and JSON of the full run config
         updated)                                    unix time of the last change
    autoencoders(name TEXT PRIMARY KEY, kind continuous | discrete, metrics JSON (psnr, ssim, usage, ...),
         config_hash, config JSON, updated)
    records(run, milestone, weights, steps, cfg_scale,   PRIMARY KEY: one row per (run, milestone, eval setting)
         objective, size, params, params_nonembedding, data_size, autoencoder, step,
         train_flops,                                training FLOPs at the milestone (analytic, 2 per MAC, fwd+bwd)
         sample_flops_per_image,                     generator FLOPs per sampled image (CFG included)
         config_hash,                                hash of the run's config (the run id when the run is unknown)
         metrics JSON, instruments JSON,             the numbers and how each was measured
         decode_flops_per_image)                     the autoencoder decoder's FLOPs per image; NULL: not counted
                                                     (schema 2; a version-1 store gains the column when opened)
    artifacts(run, kind, milestone, weights, steps, cfg_scale, path, caption)
         PRIMARY KEY (run, kind, milestone, weights, steps, cfg_scale); -1 / '' where a key does not apply.
         `run` is an autoencoder name for autoencoder artifacts. `path` is relative to the store's folder
         when the file lies under it, so a study folder can be moved.

Example: `SELECT objective, train_flops, json_extract(metrics, '$.fd_probe') FROM records WHERE weights='ema'`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import numbers
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from synthscale import atomic
from synthscale.evaluate.record import EvalRecord

SCHEMA_VERSION = 2  # 2: records.decode_flops_per_image
STORE_NAME = "results.sqlite"  # the store's file name inside a study folder
RUN_STATUSES = ("pending", "running", "done", "failed", "blocked")  # blocked: a stage it needs failed
AUTOENCODER_KINDS = ("continuous", "discrete")
WEIGHTS = ("ema", "raw")
RECORD_KEY = ("run", "milestone", "weights", "steps", "cfg_scale")
# record columns in table order (metrics and instruments follow)
RECORD_COLUMNS = (
    *RECORD_KEY,
    "objective",
    "size",
    "params",
    "params_nonembedding",
    "data_size",
    "autoencoder",
    "step",
    "train_flops",
    "sample_flops_per_image",
    "config_hash",
)
# nullable record columns added after version 1, appended after `instruments` (ALTER TABLE adds them there)
LATER_RECORD_COLUMNS = ("decode_flops_per_image",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    objective TEXT NOT NULL,
    size TEXT NOT NULL,
    data_size INTEGER NOT NULL,
    autoencoder TEXT NOT NULL,
    params INTEGER,
    params_nonembedding INTEGER,
    budget_flops REAL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'blocked')),
    error TEXT,
    config_hash TEXT,
    config TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS autoencoders (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('continuous', 'discrete')),
    metrics TEXT NOT NULL,
    config_hash TEXT,
    config TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    run TEXT NOT NULL,
    milestone INTEGER NOT NULL,
    weights TEXT NOT NULL CHECK (weights IN ('ema', 'raw')),
    steps INTEGER NOT NULL,
    cfg_scale REAL NOT NULL,
    objective TEXT NOT NULL,
    size TEXT NOT NULL,
    params INTEGER NOT NULL,
    params_nonembedding INTEGER NOT NULL,
    data_size INTEGER NOT NULL,
    autoencoder TEXT NOT NULL,
    step INTEGER NOT NULL,
    train_flops REAL NOT NULL,
    sample_flops_per_image REAL NOT NULL,
    config_hash TEXT NOT NULL,
    metrics TEXT NOT NULL,
    instruments TEXT NOT NULL,
    decode_flops_per_image REAL,
    PRIMARY KEY (run, milestone, weights, steps, cfg_scale)
);
CREATE INDEX IF NOT EXISTS records_by_objective ON records (objective, train_flops);
CREATE TABLE IF NOT EXISTS artifacts (
    run TEXT NOT NULL,
    kind TEXT NOT NULL,
    milestone INTEGER NOT NULL DEFAULT -1,
    weights TEXT NOT NULL DEFAULT '',
    steps INTEGER NOT NULL DEFAULT -1,
    cfg_scale REAL NOT NULL DEFAULT -1,
    path TEXT NOT NULL,
    caption TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run, kind, milestone, weights, steps, cfg_scale)
);
"""


class ResultsError(ValueError):
    """Results that cannot be stored or read as given; the message names the item, the problem and the fix."""


def store_path(study_dir: str | os.PathLike) -> Path:
    return Path(study_dir) / STORE_NAME


class ResultsStore:
    """One study's results. `ResultsStore(path)` opens (or creates) the SQLite file; `ResultsStore.of(study_dir)`
    opens a study folder's. Safe for several processes: writers wait on each other (busy timeout)."""

    def __init__(self, path: str | os.PathLike, create: bool = True, timeout: float = 60.0):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ResultsError(
                f"no results store at {self.path}; run the study first (synthscale study SPEC --out "
                f"{self.path.parent}) or point at a study folder that has {STORE_NAME}"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each public write is exactly one transaction
        self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            with self._transaction() as c:
                row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is not None and int(row[0]) > SCHEMA_VERSION:
                    raise ResultsError(
                        f"{self.path} has schema version {row[0]}, newer than this synthscale's "
                        f"{SCHEMA_VERSION}; upgrade synthscale to read it"
                    )
                _migrate(c)
                c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise ResultsError(
                f"{self.path} is not a readable results store ({e}); move it aside and re-run the study to rebuild it"
            ) from e

    @classmethod
    def of(cls, study_dir: str | os.PathLike, create: bool = True) -> ResultsStore:
        """The store of a study folder (STUDY_DIR/results.sqlite); create=False: it must exist already."""
        return cls(store_path(study_dir), create=create)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two writing processes queue instead of deadlocking
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------------ meta

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def meta(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self._conn.execute("SELECT key, value FROM meta ORDER BY key")}

    # ------------------------------------------------------------------------------------------ runs

    def add_run(
        self,
        run: str,
        objective: str,
        size: str,
        data_size: int,
        autoencoder: str,
        *,
        status: str = "pending",
        error: str | None = None,
        params: int | None = None,
        params_nonembedding: int | None = None,
        budget_flops: float | None = None,
        config: dict[str, Any] | None = None,
        config_hash: str | None = None,
    ) -> None:
        """Register a run of the grid (or replace its row): its coordinates, status and, when it failed, why."""
        _need_text(run=run, objective=objective, size=size, autoencoder=autoencoder)
        _check_status(status, run)
        row = (
            run,
            objective,
            size,
            int(data_size),
            autoencoder,
            _opt_int(params),
            _opt_int(params_nonembedding),
            _opt_float(budget_flops, "budget_flops", run),
            status,
            error,
            config_hash,
            _to_json(config, f"run {run!r} config") if config is not None else None,
            time.time(),
        )
        with self._transaction() as c:
            c.execute("INSERT OR REPLACE INTO runs VALUES (" + ",".join("?" * len(row)) + ")", row)

    def set_run_status(self, run: str, status: str, error: str | None = None) -> None:
        """Mark a registered run pending / running / done / failed / blocked (with its error text)."""
        _check_status(status, run)
        with self._transaction() as c:
            cur = c.execute(
                "UPDATE runs SET status = ?, error = ?, updated = ? WHERE run = ?", (status, error, time.time(), run)
            )
            if cur.rowcount == 0:
                raise ResultsError(f"run {run!r} is not in {self.path}; add it with add_run(...) first")

    def runs(self, status: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM runs", []
        if status is not None:
            sql, args = sql + " WHERE status = ?", [status]
        rows = self._conn.execute(sql + " ORDER BY objective, size, data_size, autoencoder, run", args)
        return [_decode(dict(r), ("config",)) for r in rows]

    # ------------------------------------------------------------------------------------------ autoencoders

    def add_autoencoder(
        self,
        name: str,
        kind: str,
        metrics: dict[str, float] | None = None,
        *,
        config: dict[str, Any] | None = None,
        config_hash: str | None = None,
    ) -> None:
        """Register an autoencoder with its reconstruction metrics (psnr, ssim, codebook usage, ...)."""
        _need_text(name=name)
        if kind not in AUTOENCODER_KINDS:
            raise ResultsError(f"autoencoder {name!r}: kind {kind!r} is not one of {AUTOENCODER_KINDS}")
        row = (
            name,
            kind,
            _to_json(_clean_metrics(metrics or {}, f"autoencoder {name!r}"), name),
            config_hash,
            _to_json(config, f"autoencoder {name!r} config") if config is not None else None,
            time.time(),
        )
        with self._transaction() as c:
            c.execute("INSERT OR REPLACE INTO autoencoders VALUES (?, ?, ?, ?, ?, ?)", row)

    def autoencoders(self) -> list[dict[str, Any]]:
        rows = self._conn.execute("SELECT * FROM autoencoders ORDER BY name")
        return [_decode(dict(r), ("metrics", "config")) for r in rows]

    # ------------------------------------------------------------------------------------------ records

    def add_records(self, records: Sequence[EvalRecord | dict[str, Any]]) -> int:
        """Store evaluation records in one transaction; a record with the key of a stored one replaces it.
        Every record is checked before anything is written, so a bad one leaves the store untouched."""
        rows = [self._record_row(_as_record(r, i)) for i, r in enumerate(records)]
        with self._transaction() as c:
            cols = (*RECORD_COLUMNS, "metrics", "instruments", *LATER_RECORD_COLUMNS)
            sql = f"INSERT OR REPLACE INTO records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            c.executemany(sql, rows)
        return len(rows)

    def _record_row(self, r: EvalRecord) -> tuple:
        where = f"record (run {r.run!r}, milestone {r.milestone}, {r.weights}, steps {r.steps}, cfg {r.cfg_scale})"
        _need_text(run=r.run, objective=r.objective, size=r.size, autoencoder=r.autoencoder)
        if r.weights not in WEIGHTS:
            raise ResultsError(f"{where}: weights {r.weights!r} must be one of {WEIGHTS}")
        for name in ("train_flops", "sample_flops_per_image"):
            v = getattr(r, name)
            if not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ResultsError(f"{where}: {name} must be a finite number ≥ 0, got {v!r}")
        decode = r.decode_flops_per_image
        if decode is not None and (not isinstance(decode, numbers.Real) or not math.isfinite(decode) or decode < 0):
            raise ResultsError(f"{where}: decode_flops_per_image must be None or a finite number ≥ 0, got {decode!r}")
        metrics = _clean_metrics(r.metrics, where)
        clash = set(metrics) & set(RECORD_COLUMNS + LATER_RECORD_COLUMNS + ("instruments",))
        if clash:
            raise ResultsError(f"{where}: metric names {sorted(clash)} clash with record columns; rename them")
        row = self._conn.execute("SELECT config_hash FROM runs WHERE run = ?", (r.run,)).fetchone()
        config_hash = row[0] if row is not None and row[0] else r.run
        return (
            r.run,
            int(r.milestone),
            r.weights,
            int(r.steps),
            float(r.cfg_scale),
            r.objective,
            r.size,
            int(r.params),
            int(r.params_nonembedding),
            int(r.data_size),
            r.autoencoder,
            int(r.step),
            float(r.train_flops),
            float(r.sample_flops_per_image),
            config_hash,
            _to_json(metrics, where),
            _to_json(r.instruments, where),
            None if decode is None else float(decode),
        )

    def records(self, **where: Any) -> list[dict[str, Any]]:
        """Stored records as dicts (EvalRecord fields + config_hash), filtered by equality on any record column,
        e.g. records(objective="flow", weights="ema"). Ordered by objective, size, run, milestone, setting."""
        columns = RECORD_COLUMNS + LATER_RECORD_COLUMNS
        bad = set(where) - set(columns)
        if bad:
            raise ResultsError(f"records(): cannot filter on {sorted(bad)}; columns are {list(columns)}")
        sql = "SELECT * FROM records"
        if where:
            sql += " WHERE " + " AND ".join(f"{k} = ?" for k in where)
        sql += " ORDER BY objective, size, data_size, autoencoder, run, milestone, weights, steps, cfg_scale"
        return [_decode(dict(r), ("metrics", "instruments")) for r in self._conn.execute(sql, list(where.values()))]

    def eval_records(self, **where: Any) -> list[EvalRecord]:
        out = []
        for d in self.records(**where):
            d.pop("config_hash")
            out.append(EvalRecord.from_dict(d))
        return out

    def table(self, **where: Any) -> tuple[list[str], list[list[Any]]]:
        """Records flattened for export: the record columns, one column per metric name (None where a record did
        not measure it), and the instruments as a JSON string."""
        recs = self.records(**where)
        metric_names = sorted({m for r in recs for m in r["metrics"]})
        columns = [*RECORD_COLUMNS, *LATER_RECORD_COLUMNS, *metric_names, "instruments"]
        rows = [
            [r[c] for c in RECORD_COLUMNS + LATER_RECORD_COLUMNS]
            + [r["metrics"].get(m) for m in metric_names]
            + [json.dumps(r["instruments"], sort_keys=True)]
            for r in recs
        ]
        return columns, rows

    # ------------------------------------------------------------------------------------------ artifacts

    def add_artifact(
        self,
        run: str,
        kind: str,
        path: str | os.PathLike,
        *,
        milestone: int = -1,
        weights: str = "",
        steps: int = -1,
        cfg_scale: float = -1.0,
        caption: str = "",
    ) -> None:
        """Register a file a stage wrote (e.g. kind="samples": a sample grid PNG of a run at a milestone and
        setting; kind="reconstructions" with run = an autoencoder name). Re-adding the same key replaces it."""
        _need_text(run=run, kind=kind)
        p = Path(path)
        if not p.is_file():
            raise ResultsError(f"artifact {kind!r} of {run!r}: {p} does not exist; write the file before adding it")
        p = p.resolve()
        base = self.path.parent.resolve()
        stored = str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
        row = (run, kind, int(milestone), weights, int(steps), float(cfg_scale), stored, caption)
        with self._transaction() as c:
            c.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def artifacts(self, run: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Registered artifacts with `path` made absolute."""
        sql, args, cond = "SELECT * FROM artifacts", [], []
        for col, val in (("run", run), ("kind", kind)):
            if val is not None:
                cond.append(f"{col} = ?")
                args.append(val)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        out = []
        for r in self._conn.execute(sql + " ORDER BY run, kind, milestone, weights, steps, cfg_scale", args):
            d = dict(r)
            d["path"] = str(self.path.parent / d["path"])  # an absolute stored path stays as it is
            out.append(d)
        return out

    def keep_only(self, runs: Iterable[str], autoencoders: Iterable[str]) -> dict[str, int]:
        """Forget every run, record, autoencoder and artifact outside `runs` and `autoencoders` (one transaction):
        what a study's spec no longer plans — a changed LR sweep, seed list or grid — must not reach its report.
        Returns how many rows of each table went."""
        keep_runs, keep_aes = json.dumps(sorted(runs)), json.dumps(sorted(autoencoders))
        outside = "NOT IN (SELECT value FROM json_each(?))"
        gone = {}
        with self._transaction() as c:
            for table, where, args in (
                ("records", f"run {outside}", (keep_runs,)),
                ("runs", f"run {outside}", (keep_runs,)),
                ("autoencoders", f"name {outside}", (keep_aes,)),
                ("artifacts", f"run {outside} AND run {outside}", (keep_runs, keep_aes)),
            ):
                gone[table] = c.execute(f"DELETE FROM {table} WHERE {where}", args).rowcount
        return gone

    # ------------------------------------------------------------------------------------------ export

    def export_csv(self, path: str | os.PathLike) -> Path:
        columns, rows = self.table()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(columns)
        w.writerows(rows)
        atomic.write_text(path, buf.getvalue())
        return Path(path)

    def export_parquet(self, path: str | os.PathLike) -> Path:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ResultsError("Parquet export needs pyarrow: pip install 'synthscale[parquet]' (or use --csv)") from e
        columns, rows = self.table()
        data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        # metric columns are all floats (None = not measured); declare them so an all-None column keeps its type
        schema = pa.schema([(c, _ARROW_TYPES.get(c, "float64")) for c in columns])
        table = pa.table({c: pa.array(data[c], type=schema.field(c).type) for c in columns}, schema=schema)
        with atomic.atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return Path(path)


_ARROW_TYPES = {
    "run": "string",
    "milestone": "int64",
    "weights": "string",
    "steps": "int64",
    "cfg_scale": "float64",
    "objective": "string",
    "size": "string",
    "params": "int64",
    "params_nonembedding": "int64",
    "data_size": "int64",
    "autoencoder": "string",
    "step": "int64",
    "train_flops": "float64",
    "sample_flops_per_image": "float64",
    "decode_flops_per_image": "float64",
    "config_hash": "string",
    "instruments": "string",
}


# ---------------------------------------------------------------------------------------------- checks


def _migrate(c: sqlite3.Connection) -> None:
    """Bring a version-1 store up to this schema: add the nullable record columns it lacks (old rows read NULL:
    "not measured")."""
    have = {row[1] for row in c.execute("PRAGMA table_info(records)")}
    for col in LATER_RECORD_COLUMNS:
        if col not in have:
            c.execute(f"ALTER TABLE records ADD COLUMN {col} REAL")


def _as_record(r: EvalRecord | dict[str, Any], i: int) -> EvalRecord:
    if isinstance(r, EvalRecord):
        return r
    if isinstance(r, dict):
        try:
            return EvalRecord.from_dict(r)
        except TypeError as e:
            raise ResultsError(f"record #{i} is not an EvalRecord dict ({e}); build it with EvalRecord(...)") from e
    raise ResultsError(f"record #{i} is a {type(r).__name__}; pass EvalRecord objects or their to_dict()")


def _need_text(**fields: Any) -> None:
    for name, v in fields.items():
        if not isinstance(v, str) or not v:
            raise ResultsError(f"{name} must be a non-empty string, got {v!r}")


def _check_status(status: str, run: str) -> None:
    if status not in RUN_STATUSES:
        raise ResultsError(f"run {run!r}: status {status!r} is not one of {RUN_STATUSES}")


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_float(v: Any, name: str, where: str) -> float | None:
    if v is None:
        return None
    if not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ResultsError(f"{where}: {name} must be a finite number, got {v!r}")
    return float(v)


def _clean_metrics(metrics: dict[str, Any], where: str) -> dict[str, float]:
    """Numbers only; None and NaN mean "not measured" and are left out, so readers see absent, never NaN."""
    if not isinstance(metrics, dict):
        raise ResultsError(f"{where}: metrics must be a dict name → number, got {type(metrics).__name__}")
    out = {}
    for k, v in metrics.items():
        if v is None:
            continue
        if hasattr(v, "item") and not isinstance(v, numbers.Real):  # numpy / torch scalars
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ResultsError(
                f"{where}: metric {k!r} = {v!r} is not a number; store numbers only (put descriptions in instruments)"
            )
        v = float(v)
        if math.isnan(v):
            continue
        out[str(k)] = v
    return out


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy / torch scalars
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (set, tuple)):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON-serialisable")


def _to_json(obj: Any, where: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ResultsError(f"{where}: cannot store {obj!r} as JSON ({e}); use numbers, strings, lists, dicts") from e


def _decode(d: dict[str, Any], json_cols: tuple[str, ...]) -> dict[str, Any]:
    for c in json_cols:
        if c in d and d[c] is not None:
            d[c] = json.loads(d[c])
    return d
