import csv
import multiprocessing
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from synthscale.cli import main
from synthscale.evaluate.record import EvalRecord
from synthscale.study.results import _SCHEMA, RECORD_COLUMNS, ResultsError, ResultsStore, store_path


def _record(run="r1", milestone=0, weights="ema", steps=20, cfg=3.0, **metrics) -> EvalRecord:
    return EvalRecord(
        run=run,
        objective="flow",
        size="2x64",
        params=1000,
        params_nonembedding=900,
        data_size=256,
        autoencoder="kl-f4c4",
        milestone=milestone,
        step=10 * (milestone + 1),
        train_flops=1e9 * (milestone + 1),
        weights=weights,
        steps=steps,
        cfg_scale=cfg,
        sample_flops_per_image=1e6 * steps,
        metrics=metrics or {"loss": 0.5, "fd_probe": 12.0, "prompt_acc": 0.4},
        instruments={"extractor": "probe:abc", "n": 64},
    )


def test_records_round_trip_with_run_config_hash(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.add_run("r1", "flow", "2x64", 256, "kl-f4c4", status="done", config={"a": 1}, config_hash="h-r1")
    recs = [_record(milestone=m, weights=w) for m in range(3) for w in ("ema", "raw")] + [_record(run="r2")]
    assert store.add_records(recs) == 7
    assert store.eval_records() == sorted(recs, key=lambda r: (r.run, r.milestone, r.weights))
    by_run = {r["run"]: r["config_hash"] for r in store.records()}
    assert by_run == {"r1": "h-r1", "r2": "r2"}  # unknown run: its id is its config hash
    assert len(store.records(weights="raw", milestone=1)) == 1
    with pytest.raises(ResultsError, match="cannot filter"):
        store.records(colour="red")


def test_re_adding_replaces_never_duplicates(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.add_records([_record(milestone=m) for m in range(4)])
    store.add_records([_record(milestone=m) for m in range(4)])
    assert len(store.records()) == 4
    store.add_records([_record(milestone=2, loss=0.25)])  # same key, new numbers
    rows = store.records(milestone=2)
    assert len(rows) == 1 and rows[0]["metrics"] == {"loss": 0.25}
    store.add_records([_record(milestone=2, cfg=1.0)])  # another setting is another row
    assert len(store.records()) == 5


def test_a_bad_record_leaves_the_store_untouched(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.add_records([_record(milestone=0)])
    with pytest.raises(ResultsError, match="fd_probe"):
        store.add_records([_record(milestone=1), _record(milestone=2, fd_probe="good")])
    with pytest.raises(ResultsError, match="weights"):
        store.add_records([_record(milestone=1), _record(milestone=2, weights="ema2")])
    negative = _record(milestone=1)
    negative.train_flops = -1.0
    with pytest.raises(ResultsError, match="train_flops"):
        store.add_records([negative])
    assert [r["milestone"] for r in store.records()] == [0]


def test_a_failure_inside_the_transaction_rolls_back(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    ok = [_record(milestone=m) for m in range(3)]
    too_big = _record(milestone=3)
    too_big.params = 2**70  # passes the checks, then fails in SQLite after three rows were inserted
    with pytest.raises(OverflowError):
        store.add_records(ok + [too_big])
    assert store.records() == []
    store.add_records(ok)  # the store still works
    assert len(ResultsStore(tmp_path / "r.sqlite").records()) == 3  # and another connection sees the commit


def test_missing_metrics_are_absent_not_nan(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.add_records([_record(loss=float("nan"), fd_probe=None, kid=0.01)])
    assert store.records()[0]["metrics"] == {"kid": 0.01}


def test_runs_autoencoders_status_and_errors(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.add_run("r1", "masked", "4x128", 20000, "lfq-f8", params=12345, budget_flops=1e13)
    store.set_run_status("r1", "failed", "RuntimeError: loss is NaN")
    store.add_autoencoder("lfq-f8", "discrete", {"psnr": 21.5, "usage": 0.9})
    (run,) = store.runs()
    assert (run["status"], run["error"], run["params"], run["budget_flops"]) == (
        "failed",
        "RuntimeError: loss is NaN",
        12345,
        1e13,
    )
    assert store.runs(status="done") == []
    assert store.autoencoders()[0]["metrics"] == {"psnr": 21.5, "usage": 0.9}
    with pytest.raises(ResultsError, match="not in"):
        store.set_run_status("r9", "done")
    with pytest.raises(ResultsError, match="status"):
        store.add_run("r2", "flow", "2x64", 1, "kl", status="finished")
    with pytest.raises(ResultsError, match="kind"):
        store.add_autoencoder("x", "vector")


def test_keep_only_forgets_what_the_spec_no_longer_plans(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    png = tmp_path / "grid.png"
    png.write_bytes(b"png")
    for run in ("kept", "stale"):
        store.add_run(run, "flow", "2x64", 256, "kl-f4c4", status="done")
        store.add_records([_record(run=run, milestone=m) for m in range(2)])
        store.add_artifact(run, "samples", png, milestone=0)
    for ae in ("kl-f4c4", "kl-f4c8"):
        store.add_autoencoder(ae, "continuous", {"psnr": 30.0})
        store.add_artifact(ae, "reconstructions", png)
    gone = store.keep_only(["kept"], ["kl-f4c4"])
    assert gone == {"records": 2, "runs": 1, "autoencoders": 1, "artifacts": 2}
    assert [r["run"] for r in store.runs()] == ["kept"]
    assert {r["run"] for r in store.records()} == {"kept"} and len(store.records()) == 2
    assert [a["name"] for a in store.autoencoders()] == ["kl-f4c4"]
    assert sorted(a["run"] for a in store.artifacts()) == ["kept", "kl-f4c4"]
    assert store.keep_only(["kept"], ["kl-f4c4"]) == {"records": 0, "runs": 0, "autoencoders": 0, "artifacts": 0}


def test_artifacts_are_stored_relative_and_survive_a_move(tmp_path):
    study = tmp_path / "study"
    (study / "samples").mkdir(parents=True)
    (study / "samples" / "g.png").write_bytes(b"png")
    store = ResultsStore.of(study)
    for _ in range(2):  # the same key twice: one row
        store.add_artifact("r1", "samples", study / "samples" / "g.png", milestone=3, weights="ema", steps=20)
    with pytest.raises(ResultsError, match="does not exist"):
        store.add_artifact("r1", "samples", study / "nope.png")
    store.close()
    with sqlite3.connect(store_path(study)) as c:
        assert c.execute("SELECT path FROM artifacts").fetchall() == [("samples/g.png",)]
    moved = shutil.move(study, tmp_path / "moved")
    (art,) = ResultsStore.of(moved, create=False).artifacts(kind="samples")
    assert Path(art["path"]).read_bytes() == b"png"


def test_opening_errors_are_clear(tmp_path):
    with pytest.raises(ResultsError, match="no results store"):
        ResultsStore.of(tmp_path / "missing", create=False)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ResultsError, match="not a readable results store"):
        ResultsStore(junk)
    ResultsStore(tmp_path / "v.sqlite").set_meta("schema_version", "99")
    with pytest.raises(ResultsError, match="newer"):
        ResultsStore(tmp_path / "v.sqlite")


def test_a_version_1_store_gains_the_decoder_column_and_its_old_records_still_load(tmp_path):
    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)  # a store as synthscale wrote it before decoder FLOPs were counted
    conn.executescript(_SCHEMA.replace("    decode_flops_per_image REAL,\n", ""))
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    old = _record(milestone=0)
    conn.execute(
        "INSERT INTO records VALUES (" + ",".join("?" * 17) + ")",
        (*(getattr(old, c) for c in RECORD_COLUMNS[:-1]), "r1", '{"loss": 0.5}', "{}"),
    )
    conn.commit()
    conn.close()
    store = ResultsStore(path)
    assert store.meta()["schema_version"] == "2"
    [row] = store.records()
    assert row["decode_flops_per_image"] is None and row["metrics"] == {"loss": 0.5}  # not counted, not zero
    new = _record(milestone=1)
    new.decode_flops_per_image = 4.4e7
    store.add_records([new])
    assert [r.decode_flops_per_image for r in store.eval_records()] == [None, 4.4e7]
    with pytest.raises(ResultsError, match="decode_flops_per_image"):
        bad = _record(milestone=2)
        bad.decode_flops_per_image = float("nan")
        store.add_records([bad])


def test_csv_export_has_a_column_per_metric(tmp_path):
    store = ResultsStore.of(tmp_path)
    store.add_records([_record(milestone=0, loss=0.5), _record(milestone=1, loss=0.4, kid=0.02)])
    assert main(["results", str(tmp_path), "--csv", str(tmp_path / "out.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "out.csv").read_text().splitlines()))
    assert [r["milestone"] for r in rows] == ["0", "1"]
    assert (rows[0]["loss"], rows[0]["kid"], rows[1]["kid"]) == ("0.5", "", "0.02")
    assert rows[0]["train_flops"] == "1000000000.0" and '"extractor": "probe:abc"' in rows[0]["instruments"]


def test_parquet_export_round_trips(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    store = ResultsStore.of(tmp_path)
    store.add_records([_record(milestone=0, loss=0.5), _record(milestone=1, kid=0.02)])
    store.export_parquet(tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert table["milestone"] == [0, 1] and table["loss"] == [0.5, None] and table["kid"] == [None, 0.02]


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch, capsys):
    ResultsStore.of(tmp_path).add_records([_record()])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    assert main(["results", str(tmp_path), "--parquet", str(tmp_path / "o.parquet")]) == 2
    assert "synthscale[parquet]" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()


def test_results_command_without_a_store_is_a_clear_error(tmp_path, capsys):
    assert main(["results", str(tmp_path / "nowhere")]) == 2
    assert "no results store" in capsys.readouterr().err


def _writer(path: str, run: str) -> None:
    store = ResultsStore(path)
    for m in range(15):
        store.add_records([_record(run=run, milestone=m, weights=w) for w in ("ema", "raw")])


def test_two_processes_write_one_store(tmp_path):
    path = str(tmp_path / "r.sqlite")
    ResultsStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"run{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(ResultsStore(path).records()) == 60
