import json

from synthscale.study.grid import Stage, execute, status_of


def toy_ok(stage_dir, value, log):
    with open(log, "a") as f:
        f.write(f"{value}\n")
    return {"value": value}


def toy_fail(stage_dir, log):
    with open(log, "a") as f:
        f.write("fail\n")
    raise RuntimeError("this run diverged")


def graph(log):
    a = Stage("train", "a", "k1", "tests.test_grid:toy_ok", {"value": 1, "log": str(log)})
    b = Stage("train", "b", "k2", "tests.test_grid:toy_fail", {"log": str(log)})
    c = Stage("evaluate", "c", "k3", "tests.test_grid:toy_ok", {"value": 3, "log": str(log)}, deps=[b.id])
    d = Stage("evaluate", "d", "k4", "tests.test_grid:toy_ok", {"value": 4, "log": str(log)}, deps=[a.id])
    return [a, b, c, d]


def test_failed_stage_does_not_stop_the_others_and_rerun_skips_done(tmp_path):
    log = tmp_path / "log.txt"
    stages = graph(log)
    states = execute(tmp_path / "study", stages, progress=False)
    assert states == {stages[0].id: "done", stages[1].id: "failed", stages[2].id: "blocked", stages[3].id: "done"}
    failure = json.loads((tmp_path / "study" / stages[1].id / "failed.json").read_text())
    assert "this run diverged" in failure["error"]
    assert sorted(log.read_text().split()) == ["1", "4", "fail"]

    log.write_text("")
    execute(tmp_path / "study", stages, progress=False)
    assert log.read_text().split() == ["fail"]  # only the failed stage runs again
    assert status_of(tmp_path / "study", stages[0]) == "done"


def test_process_executor_runs_the_same_graph(tmp_path):
    log = tmp_path / "log.txt"
    stages = graph(log)
    states = execute(tmp_path / "study", stages, executor="processes", workers=2, progress=False)
    assert [states[s.id] for s in stages] == ["done", "failed", "blocked", "done"]
