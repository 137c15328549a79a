"""The training step's path (eager or torch.compile): chosen by amortising the compile time over the run's
remaining steps, recorded in the run, and computing the same losses as eager up to rounding."""

from __future__ import annotations

import json

import pytest

from synthscale.train import fastpath, train
from tests.test_trainer import losses, tiny_cfg


@pytest.fixture(autouse=True)
def own_inductor_cache(tmp_path, monkeypatch):
    """This machine's records (and inductor's cache) in a fresh folder: no test sees another's measurements."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


def test_compile_only_when_the_run_is_long_enough_to_pay_for_it():
    # priors: 45 s cold compile, 1.3× faster steps → compiling 20 ms steps saves 4.6 ms a step
    short = fastpath.decide(remaining_steps=5_000, eager_step_s=0.020, known=None)  # 100 s eager
    long = fastpath.decide(remaining_steps=100_000, eager_step_s=0.020, known=None)  # 2000 s eager
    assert short["choice"] == "eager" and long["choice"] == "compile"
    assert short["predicted_compile_s"] == fastpath.PRIOR_COLD_S and short["basis"] == "priors"
    # on a machine shared with other processes the compile stretches like the steps: the same run stays eager
    busy = fastpath.decide(remaining_steps=100_000, eager_step_s=0.020, known=None, load=50.0)
    assert busy["choice"] == "eager" and busy["predicted_compile_s"] == 50 * fastpath.PRIOR_COLD_S
    # a graph this machine compiled before is warm in inductor's cache: the short run now pays too
    warm = fastpath.decide(5_000, 0.020, known={"speedup": 1.3, "compile_s": [45.0]})
    assert warm["choice"] == "compile" and warm["predicted_compile_s"] == fastpath.PRIOR_WARM_S
    # a measured warm compile replaces the prior; a step that compiled no faster never compiles again
    assert fastpath.decide(5_000, 0.02, {"speedup": 1.3, "compile_s": [45.0, 9.0]})["predicted_compile_s"] == 9.0
    assert fastpath.decide(10**9, 0.02, {"speedup": 0.9, "compile_s": [45.0, 4.0]})["choice"] == "eager"


def test_step_path_probes_compiles_measures_and_falls_back():
    path = fastpath.StepPath("auto", remaining_steps=10**6, key="k")
    switches = [path.observe(0.02) for _ in range(fastpath.PROBE_STEPS)]
    assert switches[-1] == "compile" and set(switches[:-1]) == {None} and path.phase == "compiled"
    # the compiled trial: a 30 s first step (the compile), then steps slower than eager → back to eager
    switches = [path.observe(30.0)] + [path.observe(0.025) for _ in range(fastpath.PROBE_STEPS - 1)]
    assert switches[-1] == "eager" and path.phase == "done" and path.decision["choice"] == "eager"
    assert path.decision["compile_s"] == pytest.approx(30.0 - 0.025)
    record = fastpath.read_records()["k"]  # kept for the next run of this graph
    assert record["speedup"] == pytest.approx(0.02 / 0.025) and record["compile_s"] == [pytest.approx(29.975)]
    assert fastpath.StepPath("auto", 10**6, "k").observe(0.02) is None  # done: observes nothing more
    again = fastpath.StepPath("auto", 10**6, "k")
    assert [again.observe(0.02) for _ in range(fastpath.PROBE_STEPS)][-1] is None  # measured slower: stays eager
    assert again.decision["basis"] == "measured on this machine"


def test_a_short_run_stays_eager_and_records_it(tmp_path):
    summary = train(tiny_cfg(8), tmp_path / "run", progress=False)
    assert summary["fast_path"]["choice"] == "eager" and summary["fast_path"]["basis"] == "priors"
    assert summary["fast_path"]["remaining_steps"] == 8 - fastpath.PROBE_STEPS
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["sessions"][-1]["fast_path"] == summary["fast_path"]
    forced = train(tiny_cfg(2, "train.fast_path=eager"), tmp_path / "forced", progress=False)
    heap = fastpath.keep_freed_memory()  # True under glibc
    assert forced["fast_path"] == {"choice": "eager", "basis": "train.fast_path=eager", "malloc_heap_kept": heap}


@pytest.mark.slow
def test_the_compiled_path_trains_like_eager(tmp_path, monkeypatch):
    """A run that switches to the compiled step after its probe (priors set so compiling pays) gives the eager
    run's losses up to rounding, and records the compile it measured."""
    steps = fastpath.PROBE_STEPS * 2 + 3
    eager = train(tiny_cfg(steps, "train.fast_path=eager"), tmp_path / "eager", progress=False)
    monkeypatch.setattr(fastpath, "PRIOR_COLD_S", 0.0)
    monkeypatch.setattr(fastpath, "PRIOR_SPEEDUP", 100.0)
    auto = train(tiny_cfg(steps), tmp_path / "auto", progress=False)
    assert auto["fast_path"]["predicted_speedup"] == 100.0 and auto["fast_path"]["compile_s"] > 0
    assert "measured_speedup" in auto["fast_path"]
    assert [x for _, x in losses(tmp_path / "auto")] == pytest.approx(
        [x for _, x in losses(tmp_path / "eager")], rel=1e-5
    )
    assert eager["fast_path"]["choice"] == "eager"
