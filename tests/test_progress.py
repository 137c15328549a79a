"""Progress output suits its destination: a live bar on a terminal, a line every ~10 % or minute in a log."""

import io

import pytest
from tqdm import tqdm

import synthscale.progress as progress
from synthscale.progress import LogProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_a_live_tqdm_bar():
    bar = progress_bar(range(5), desc="x", file=Terminal())
    assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2, 3, 4]


def test_a_log_gets_a_line_every_tenth_of_the_work():
    log = io.StringIO()
    bar = progress_bar(range(1000), desc="probe", unit="step", file=log)
    assert isinstance(bar, LogProgress) and sum(1 for _ in bar) == 1000
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and all(line.startswith("probe: ") for line in lines)  # not 1000 redraws
    assert lines[0].startswith("probe:  10% 100/1000 step [") and lines[-1].startswith("probe: 100% 1000/1000 step")


def test_a_log_gets_a_line_every_minute_of_slow_work(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    bar = progress_bar(total=10_000, desc="train", unit="step", file=log, initial=2000)
    for _ in range(5):
        clock[0] += 61.0
        bar.update(1)
        bar.set_postfix_str("loss 0.5")
    bar.write("a message")
    bar.close()
    lines = log.getvalue().splitlines()
    assert (
        lines[0] == "train:  20% 2001/10000 step [1:01, 0.0164 step/s]"
    )  # resumed at 2000: the pace is this session's
    assert lines[1].endswith("loss 0.5") and "a message" in lines and len(lines) == 6  # 5 minutes + the message


@pytest.mark.parametrize("file", [io.StringIO(), Terminal()])
def test_disabled_is_silent(file):
    bar = progress_bar(range(3), enabled=False, file=file)
    assert list(bar) == [0, 1, 2] and file.getvalue() == ""


def test_study_eta_weighs_stages_by_their_estimated_cost():
    """The ETA sums the estimated seconds left, rescaled by how the finished stages compared with their estimates,
    less what running stages have run, over the workers: not stages left × the mean time of the stages so far."""
    from synthscale.study.grid import Stage, StudyProgress

    stages = {s.id: s for s in (Stage(k, k, "0", "m:f", cost=c) for k, c in (("ae", 100), ("train", 600), ("ev", 300)))}
    ae, train, ev = stages
    states = dict.fromkeys(stages, "pending")
    view = StudyProgress(stages, states, enabled=False)
    assert view.eta_seconds() == 1000  # nothing measured yet: the estimates as they are
    states[ae] = "running"
    view.refresh()
    view.finished(ae, "done", {"seconds": 200.0})  # this machine runs at half the estimated pace
    assert view.eta_seconds() == 1800  # 2 × (600 + 300); counting stages would say 2 × 200 s
    states[train] = "running"
    view.refresh()
    now = view.started_at[train] + 100
    assert view.eta_seconds(now) == pytest.approx(1200 - 100 + 600)
    halves = StudyProgress(stages, dict(states), enabled=False, workers=2)
    halves.finished(ae, "done", {"seconds": 200.0})
    assert halves.eta_seconds(halves.started_at.get(train, 0.0) + 100) == pytest.approx(1700 / 2)


def test_study_stages_are_weighed_by_their_flops_and_images(tmp_path):
    """Training stages cost their FLOPs budget, evaluations their sampling FLOPs, autoencoders their images."""
    from pathlib import Path

    from synthscale.config import StudyConfig, load
    from synthscale.study.plan import TRAIN_FLOPS_PER_S, estimate_flops, plan_study, weigh_stages

    spec = Path(__file__).parents[1] / "configs" / "studies" / "default.yaml"
    plan = plan_study(load(StudyConfig, spec, ["budgets=[1e12, 4e12]", "sizes=[2x64, 4x128]"]), tmp_path, spec.parent)
    weigh_stages(plan)
    est = {e["run"]: e for e in estimate_flops(plan)["runs"]}
    for r in plan.runs:
        assert r.train.cost == pytest.approx(r.run_cfg.train.budget_flops / TRAIN_FLOPS_PER_S)
    evals = {r.train.name: r.evaluate.cost for r in plan.runs}
    small, large = "masked-2x64-d20000-4e12-fsq-f4", "masked-4x128-d20000-4e12-fsq-f4"
    assert evals[large] / evals[small] == pytest.approx(
        est[large]["eval_sample_flops"] / est[small]["eval_sample_flops"]
    )
    assert evals[large] > 3 * evals[small]  # counted as stages, they weighed the same
    aes = {cfg.name: stage.cost for cfg, stage in plan.autoencoders.values()}
    assert aes["fsq-f4"] / aes["kl-f4c4"] == pytest.approx(1600 / 1200)  # steps × batch: 1600 vs 1200 steps of 32


def test_study_eta_starts_from_the_pace_of_stages_finished_before(tmp_path):
    """A phase that follows another (the grid after the LR sweep) or a resumed study takes its pace from the stages
    already done, instead of trusting the estimates until a stage of its own finishes."""
    from synthscale.study.grid import Stage, StudyProgress

    stages = {s.id: s for s in (Stage(k, k, "0", "m:f", cost=c) for k, c in (("sweep", 100), ("train", 600)))}
    sweep, train = stages
    states = {sweep: "done", train: "pending"}
    view = StudyProgress(stages, states, enabled=False, seconds_done={sweep: 300.0})
    assert view.eta_seconds() == 1800  # 3 × the estimate: the sweep ran at a third of the estimated pace
    assert StudyProgress(stages, dict(states), enabled=False).eta_seconds() == 600  # no pace known: the estimate
