"""The CPU benchmarks run end to end at toy settings and write their result files, so an API change cannot break a
benchmark unnoticed until someone needs its numbers. Nothing here judges speed (see benchmarks/ for that)."""

import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


def run_benchmark(name: str, argv: list[str], tmp_path: Path, monkeypatch) -> dict:
    monkeypatch.syspath_prepend(str(BENCH))
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)  # never overwrite the real results
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(BENCH / name), run_name="__main__")
    (written,) = tmp_path.glob("*.json")
    return json.loads(written.read_text())


def test_train_step_benchmark(tmp_path, monkeypatch):
    result = run_benchmark(
        "train_step.py", ["--sizes", "2x64", "--batch", "2", "--repeats", "1"], tmp_path, monkeypatch
    )
    rows = {(r["objective"], r["img_tokens"]): r for r in result["rows"]}
    assert set(rows) == {(o, n) for o in ("flow", "masked", "autoregressive") for n in (16, 64)}
    for r in rows.values():
        assert r["GFLOP_step"] > 0 and all(math.isfinite(r[k]) and r[k] > 0 for k in ("fp32_of_peak", "bf16_of_peak"))
    assert result["peak_fp32_flops"] > 0 and result["goal_met"] == {}  # the goal size (6x192) was not run


def test_sampling_benchmark(tmp_path, monkeypatch):
    result = run_benchmark("sampling.py", ["--size", "2x64", "--batch", "2", "--repeats", "1"], tmp_path, monkeypatch)
    labels = {r["objective"] for r in result["rows"]}
    assert labels == {"flow", "masked", "autoregressive (KV cache)", "autoregressive (recompute)"}
    for tokens in ("16", "64"):  # JSON keys
        assert result["kv_speedup"][tokens]["flops"] > 1  # the cache always saves FLOPs; time is not judged here
    assert isinstance(result["goal_met"], bool)


@pytest.mark.parametrize(
    "name, argv, key",
    [
        ("trainer_overhead.py", ["--size", "2x64", "--batch", "4", "--steps", "12", "--repeats", "1"], "rows"),
        ("userdata.py", ["--n", "24"], "rows"),
        ("latent_cache.py", ["--items", "64"], "rows"),
    ],
)
def test_small_benchmarks_run(name, argv, key, tmp_path, monkeypatch):
    result = run_benchmark(name, argv, tmp_path, monkeypatch)
    assert result[key]


def test_serve_load_benchmark_answers_every_request(tiny_study, tmp_path, monkeypatch):
    result = run_benchmark(
        "serve_load.py", [str(tiny_study), "--requests", "9", "--concurrency", "9"], tmp_path, monkeypatch
    )
    assert result["answered"] == 9 and result["lost"] == 0 and result["server_alive"]
    assert [r["objective"] for r in result["rows"]] == ["flow", "masked", "autoregressive", "all"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_serve_page_in_headless_chromium(tiny_study, tmp_path, monkeypatch):
    """The page in a real browser: three columns of images with their latency and FLOPs (and a screenshot)."""
    shot = tmp_path / "page.png"
    result = run_benchmark(
        "serve_browser.py", [str(tiny_study), "--n", "2", "--screenshot", str(shot)], tmp_path, monkeypatch
    )
    assert result["ok"] and [r["images"] for r in result["rows"]] == [2, 2, 2] and shot.stat().st_size > 10_000


def test_instruments_benchmark_on_a_made_folder(tmp_path, monkeypatch):
    from tests.instrument_helpers import textured_folder

    folder = textured_folder(tmp_path / "images", n=160)
    argv = ["--data", str(folder), "--n", "16", "--score-n", "32", "--cache", str(tmp_path / "cache")]
    argv += [f"--encoder-set={kv}" for kv in ("steps=5", "width=4", "batch_size=16", "text_width=16")]
    result = run_benchmark("instruments.py", argv, tmp_path / "out", monkeypatch)
    assert result["encoder"].startswith("encoder:") and result["score"]["images"] == 32
    assert set(result["ceiling"]["corrupted"]) == {"blur", "channel_shuffle", "noise"}
