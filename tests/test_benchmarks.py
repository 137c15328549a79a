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


def test_step_ceiling_benchmark_times_before_now_and_the_kernels_alone(tmp_path, monkeypatch):
    argv = ["--sizes", "1x64", "--objectives", "masked", "--batch", "2", "--repeats", "1", "--stacked", "2"]
    result = run_benchmark("step_ceiling.py", argv, tmp_path, monkeypatch)
    assert [r["img_tokens"] for r in result["rows"]] == [16, 64]
    for r in result["rows"]:
        assert r["n_matmuls"] > 0 and all(r[k] > 0 for k in ("before_ms", "now_ms", "matmuls_ms", "speedup"))
        assert r["stacked_x2_max_gain"] > 0 and "stacked_x4_max_gain" not in r


@pytest.mark.slow
def test_train_step_study_benchmark_compares_eager_and_the_trainers_path(tmp_path, monkeypatch):
    argv = ["--study", "--sizes", "1x64", "--objectives", "flow", "--batch", "2", "--repeats", "1"]
    result = run_benchmark("train_step.py", argv, tmp_path, monkeypatch)
    assert [(r["img_tokens"], r["patch"]) for r in result["rows"]] == [(16, 2), (64, 1)]
    for r in result["rows"]:
        assert r["eager_steps_s"] > 0 and r["compiled_steps_s"] > 0 and r["compile_cold_s"] > 0
        assert {r["path_first_run"], r["path_repeat_run"]} <= {"eager", "compile"}


@pytest.mark.slow
def test_sampling_benchmark_versus_llamagen(tmp_path, monkeypatch):
    argv = ["--versus-llamagen", "--sizes", "1x64", "--batch", "2", "--repeats", "1"]
    result = run_benchmark("sampling.py", argv, tmp_path, monkeypatch)
    assert [r["cfg"] for r in result["rows"]] == [1.0, 2.0]
    assert all(r["llamagen_eager_s"] > 0 and r["compiled_vs_llamagen"] > 0 for r in result["rows"])
    assert all(r["llamagen_eager_cpu_s"] > 0 and r["eager_vs_llamagen_cpu"] > 0 for r in result["rows"])


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


def test_code_entropy_benchmark_on_a_discrete_autoencoder(tiny_study, tmp_path, monkeypatch):
    fsq = tiny_study / "autoencoder" / "fsq-tiny" / "model"
    (row,) = run_benchmark("code_entropy.py", [str(fsq), "--n", "8"], tmp_path, monkeypatch)["rows"]
    assert row["images"] == 8 and row["vocab_size"] == 16 and 1 <= row["distinct_codes"] <= 16
    assert 0 <= row["entropy_nats"] <= math.log(8) + 1e-6 and 1 / 8 <= row["share_at_mode"] <= 1
    with pytest.raises(SystemExit, match="continuous autoencoder"):
        run_benchmark("code_entropy.py", [str(tiny_study / "autoencoder" / "kl-tiny" / "model")], tmp_path, monkeypatch)


def test_study_stages_benchmark_sums_stages_and_rates_training(tmp_path, monkeypatch):
    study = tmp_path / "study"
    stages = {
        "autoencoder/kl-a": {"seconds": 10.0, "cpu_seconds": 9.5},
        "train/flow-b": {"seconds": 20.0, "cpu_seconds": 19.0, "steps": 7, "train_flops": 4e10, "train_seconds": 16.0},
    }
    for name, info in stages.items():
        (study / name).mkdir(parents=True)
        (study / name / "done.json").write_text(json.dumps(info))
    (study / "train" / "flow-c").mkdir()  # unfinished: no done.json, not counted
    (study / "precision.json").write_text(json.dumps({"choice": "fp32"}))
    out = tmp_path / "out"
    out.mkdir()
    rows = {r["stage"]: r for r in run_benchmark("study_stages.py", [str(study)], out, monkeypatch)["stages"]}
    assert set(rows) == {"kl-a", "flow-b"}
    assert rows["flow-b"]["gflop_per_s"] == 2.5 and rows["flow-b"]["precision"] == "fp32"  # 4e10 FLOPs in 16 s
    assert rows["kl-a"]["cpu_s"] == 9.5 and "gflop_per_s" not in rows["kl-a"]


def _simulated_store(root: Path, seeds: int, rng_seed: int = 0) -> None:
    """A results store of a simulated study (study/simulate.py) with `seeds` replicate seeds per cell."""
    import dataclasses

    import numpy as np

    from synthscale.study import simulate as sim
    from synthscale.study.results import ResultsStore

    data = sim.simulate_study(np.random.default_rng(rng_seed), None, dataclasses.replace(sim.Design(), seeds=seeds))
    with ResultsStore.of(root) as store:
        store.set_meta("notes", "SIMULATED")
        store.set_meta("main_autoencoders", json.dumps(data.main_autoencoders))
        for r in data.runs:
            store.add_run(
                r["run"], r["objective"], r["size"], 20000, r["autoencoder"], status="done", config=r["config"]
            )
        store.add_records(
            [dict(r, params_nonembedding=r["params"], step=r["milestone"] + 1) for r in data.seed_records]
        )


def test_seed_noise_benchmark_measures_the_simulated_spread(tmp_path, monkeypatch):
    """Five seeds of a simulated study: the benchmark recovers its between-seed spread (run offset and AR(1)
    noise, plus evaluation noise) and calibrates the rules at it, every false-confirmation bound ≤ 5 %."""
    _simulated_store(tmp_path / "study", seeds=5)
    out = tmp_path / "out"
    out.mkdir()
    result = run_benchmark("seed_noise.py", [str(tmp_path / "study"), "--false", "60", "--true", "5"], out, monkeypatch)
    noise = result["noise"]
    assert noise["source"] == "measured" and noise["seeds"] == 5
    assert set(noise["prompt_logit_sd"]) == {"flow", "masked", "autoregressive"}
    # simulated: prompt 0.10 logit per run + 0.05 AR + binomial noise at 128 prompts (~0.2 logit); FD 0.05 + 0.03
    # + 0.05 evaluation (log)
    assert 0.1 < noise["prompt_used"] < 0.6 and 0.04 < noise["fd_used"] < 0.2
    assert result["bounds_held"] and len(result["cells"]) == 6


def test_llamagen_shaped_loop_decodes_the_same_model(monkeypatch):
    """The benchmark's LlamaGen-shaped loop is a fair baseline: greedy, it picks the sampler's tokens."""
    import torch

    monkeypatch.syspath_prepend(str(BENCH))
    import sampling

    from synthscale.config import ModelConfig, ObjectiveConfig
    from synthscale.data.latents import LatentSpec
    from synthscale.objectives import get_objective

    obj = get_objective(ObjectiveConfig.of("autoregressive", temperature=0.0))
    torch.manual_seed(0)
    model = obj.build_model(ModelConfig(size="1x64"), LatentSpec("discrete", 10, 4, 4, vocab_size=64), sampling.TEXT)
    for p in model.parameters():  # away from the zero-initialised head: distinct logits
        torch.nn.init.normal_(p, std=0.5)
    text = torch.randint(3, sampling.TEXT.vocab_size, (3, sampling.TEXT.max_length))
    text[:, 12:] = 0
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, generator=None: probs.argmax(-1, keepdim=True))
    for cfg in (1.0, 2.0):
        ours = obj.sample(model, text, 16, cfg, torch.Generator().manual_seed(0)).reshape(3, -1)
        assert torch.equal(sampling.llamagen_eager(model, text, cfg, torch.Generator().manual_seed(0)), ours)


def test_replication_benchmark_compares_two_seed_sets(tmp_path, monkeypatch):
    """Two simulated studies of one design with other seeds: the benchmark tables each paradigm's top-level mean
    with its interval from each, says whether each lies inside the other's, and compares the verdicts."""
    for name in ("a", "b"):
        _simulated_store(tmp_path / name, seeds=3, rng_seed=0 if name == "a" else 1)
    out = tmp_path / "out"
    out.mkdir()
    result = run_benchmark("replication.py", [str(tmp_path / "a"), str(tmp_path / "b")], out, monkeypatch)
    assert {(c["metric"], c["objective"]) for c in result["cells"]} == {
        (m, o) for m in ("prompt_acc", "fd_probe") for o in ("flow", "masked", "autoregressive")
    }
    for metric in ("prompt_acc", "fd_probe"):
        inside = all(c["each inside the other's interval"] == "yes" for c in result["cells"] if c["metric"] == metric)
        assert result["means_inside_intervals"][metric] == inside
    assert [f["finding"] for f in result["findings"]] == [1, 2, 3, 4, 5, 6]
    assert result["verdicts_agree"] == all(f["A"] == f["B"] for f in result["findings"])


def test_study_summary_benchmark_quotes_the_seed_means(tmp_path, monkeypatch):
    """The summary a results page quotes: per level and paradigm the best model's mean over its seeds, each seed's
    value, and the verdicts."""
    _simulated_store(tmp_path / "study", seeds=3)
    out = tmp_path / "out"
    out.mkdir()
    result = run_benchmark("study_summary.py", [str(tmp_path / "study"), "--name", "sim"], out, monkeypatch)
    top = result["levels"][max(result["levels"], key=float)]
    assert set(top) == {"flow", "masked", "autoregressive"}
    for cells in top.values():
        for cell in cells.values():
            assert cell["seeds"] == [0, 1, 2] and len(cell["per_seed"]) == 3
            assert cell["mean"] == pytest.approx(sum(cell["per_seed"]) / 3)
            assert cell["interval"][0] <= cell["mean"] <= cell["interval"][1]
    assert sorted(result["findings"], key=int) == ["1", "2", "3", "4", "5", "6"]
