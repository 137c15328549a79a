"""Per-paradigm tuning on validation data: CFG scale and temperature per milestone (`evaluation.cfg_scale: best`)
and the learning-rate sweep that runs before a study's grid. Nothing is chosen on test prompts."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthscale.config import ConfigError, EvalSettings, StudyConfig, load
from synthscale.evaluate import runner
from synthscale.evaluate.instruments import Instrument
from synthscale.evaluate.selection import choose
from synthscale.study import tuning
from synthscale.study.grid import DONE, stage_dir
from synthscale.study.plan import estimate_flops, plan_study
from synthscale.study.run import dry_run

SPEC = Path(__file__).parents[1] / "configs" / "studies" / "default.yaml"


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr_sweep=[]", "lr_sweep is empty"),
        ("lr_sweep=[1e-3, -3e-4]", r"lr_sweep: -0.0003 is not a valid candidate; every candidate must be > 0"),
        ("lr_sweep={flow: [1e-3, 1e-3]}", "lr_sweep.flow lists a value twice"),
        ("lr_sweep={diffusion: [1e-3]}", "'diffusion' is not an objective"),
        ("lr_sweep={flow: []}", "lr_sweep.flow is empty"),
        ("evaluation.cfg_candidates=[]", "evaluation.cfg_candidates is empty"),
        ("evaluation.cfg_candidates={masked: [2, -1]}", "evaluation.cfg_candidates.masked: -1"),
        ("evaluation.temperature_candidates={flow: [1.0]}", "'flow', which samples without a temperature"),
        ("evaluation.val_n=0", "evaluation.val_n must be ≥ 1"),
        ("evaluation.cfg_scale=good", "cfg_scale"),
    ],
)
def test_bad_candidates_are_refused_with_the_key_and_the_fix(override, message, tmp_path):
    """Refused when the spec is read, or (names of objectives, which the schema does not know) when it is
    planned, before anything runs."""
    with pytest.raises(ConfigError, match=message):
        plan_study(load(StudyConfig, SPEC, [override]), tmp_path)


def test_cfg_scale_is_a_float_or_best_and_candidates_are_per_objective():
    from synthscale.config import ObjectiveConfig

    assert load(StudyConfig, SPEC, ["evaluation.cfg_scale=2"]).evaluation.cfg_scale == 2.0
    ev = load(
        StudyConfig,
        SPEC,
        [
            "evaluation.cfg_scale=best",
            "evaluation.cfg_candidates={masked: [1, 4]}",
            "evaluation.temperature_candidates=[0.7, 1.0]",
        ],
    ).evaluation
    assert ev.cfg_scale == "best"
    # flow: the default scales, its own temperature (its config has none); masked: its own list and the temperatures
    assert ev.candidates(ObjectiveConfig.of("flow")) == ([1.0, 2.0, 3.0, 5.0], [None])
    assert ev.candidates(ObjectiveConfig.of("masked")) == ([1.0, 4.0], [0.7, 1.0])


def test_the_rule_weighs_quality_and_prompt_following_alike():
    scores = [
        {"cfg_scale": 1.0, "fd": 2.0, "acc": 0.1},  # best quality, worst following
        {"cfg_scale": 3.0, "fd": 3.0, "acc": 0.5},  # near the best on both: the lowest rescaled sum
        {"cfg_scale": 5.0, "fd": 9.0, "acc": 0.6},  # best following, worst quality
    ]
    assert choose(scores, "fd", "acc") == 1
    assert [round(s["badness"], 3) for s in scores] == [1.0, round(1 / 7 + 0.1 / 0.5, 3), 1.0]
    assert choose(scores, "fd", None) == 0 and choose(scores, None, "acc") == 2
    tied = [{"cfg_scale": 3.0, "fd": 2.0, "acc": 0.2}, {"cfg_scale": 1.0, "fd": 2.0, "acc": 0.2}]
    assert choose(tied, "fd", "acc") == 1  # equal on both: the smaller scale
    broken = [{"cfg_scale": 1.0, "fd": float("nan"), "acc": 0.9}, {"cfg_scale": 2.0, "fd": 5.0, "acc": 0.9}]
    assert choose(broken, "fd", "acc") == 1  # a distance that could not be computed ranks last


# ---------------------------------------------------------------------------------------------- CFG best


class Brightness(Instrument):
    """A made-up instrument for the mechanics: features = mean colour and its spread; following = share of
    images brighter than the middle grey. It records which captions it was asked to judge."""

    kind, label, precedence = "brightness", "test brightness", 0
    quality_names = {"fd": "fd_bright", "kid": "kid_bright"}
    following = "acc_bright"
    seen: list[list[str]] = []

    @classmethod
    def key(cls, arg, data_cfg, options):
        return "brightness"

    @classmethod
    def open(cls, arg, data_cfg, cache_root, options, progress, device):
        return cls("brightness:test")

    def features(self, images):
        x = images.float().reshape(len(images), -1, 3)
        return torch.cat([x.mean(1), x.std(1)], dim=1)

    def follow(self, images, prompts, seed):
        Brightness.seen.append(list(prompts.captions))
        share = float((np.asarray(images).mean(axis=(1, 2, 3)) > 127).mean())
        return {"acc_bright": share, "acc_bright_lo": share, "acc_bright_hi": share}


def test_cfg_best_chooses_per_milestone_on_validation_prompts_only(tiny_study, monkeypatch):
    run_dir = tiny_study / "train" / "masked"
    settings = EvalSettings(
        n=8,
        holdout_n=0,
        val_n=6,
        cfg_scale="best",
        cfg_candidates=[1.0, 3.0],
        temperature_candidates=[0.5, 1.0],
        cfg_sweep=[1.0],
        weights=["ema", "raw"],
        sweep={"masked": [2, 4]},
        steps={"masked": 4},
        loss_batches=1,
        batch_size=8,
        speed=False,
    )
    loads, choosing = [], [False]
    real_prompt_set, real_choose = runner.prompt_set, runner.RunEvaluator.choose

    def logged_prompt_set(data, split, n):
        loads.append((split, n, choosing[0]))
        return real_prompt_set(data, split, n)

    judged_while_choosing = []

    def logged_choose(self, *args):
        choosing[0], before = True, len(Brightness.seen)
        self.test = self.holdout = self.bound = None  # selection must not touch the test prompts or references
        try:
            return real_choose(self, *args)
        finally:
            choosing[0] = False
            judged_while_choosing.extend(Brightness.seen[before:])

    def evaluate_with_test_prompts(self, *args, **kwargs):
        self.test, self.bound = test, bound
        return real_evaluate(self, *args, **kwargs)

    real_evaluate = runner.RunEvaluator.evaluate
    monkeypatch.setattr(runner, "prompt_set", logged_prompt_set)
    monkeypatch.setattr(runner.RunEvaluator, "choose", logged_choose)
    Brightness.seen = []
    ev = runner.RunEvaluator(run_dir, [Brightness("brightness:test")], settings, device="cpu", progress=False)
    test, bound = ev.test, ev.bound
    monkeypatch.setattr(runner.RunEvaluator, "evaluate", evaluate_with_test_prompts)

    records = [
        r.to_dict()
        for r in runner.evaluate_run(run_dir, [Brightness("brightness:test")], settings, device="cpu", progress=False)
    ]
    selecting = [(split, n) for split, n, inside in loads if inside]
    assert selecting and set(selecting) == {("val", 6)}  # validation prompts only, val_n of them
    val_captions = real_prompt_set(ev.run_cfg.data, "val", 6).captions
    assert val_captions != test.captions[:6]
    assert judged_while_choosing and all(c == val_captions for c in judged_while_choosing)
    assert test.captions in Brightness.seen  # the records themselves are scored on the test prompts

    milestones = runner.milestones_of(run_dir)
    assert {r["milestone"] for r in records} == set(range(len(milestones)))
    for r in records:
        sel = r["instruments"]["cfg_selection"]
        assert sel["split"] == "val" and sel["n_val"] == 6 and sel["weights"] == "ema" and sel["steps"] == 4
        assert [(s["cfg_scale"], s["temperature"]) for s in sel["scores"]] == [(1, 0.5), (1, 1.0), (3, 0.5), (3, 1.0)]
        won = sel["scores"][choose([dict(s) for s in sel["scores"]], "fd_bright", "acc_bright")]
        assert sel["chosen"] == {"cfg_scale": won["cfg_scale"], "temperature": won["temperature"]}
        assert r["instruments"]["temperature"] == won["temperature"]  # every setting of the milestone samples at it
        if "cfg_scale" in sel["applied"]:
            assert r["cfg_scale"] == won["cfg_scale"]
        else:  # the fixed CFG sweep at the last milestone: its own scale, the milestone's temperature
            assert r["cfg_scale"] == 1.0 and r["milestone"] == len(milestones) - 1
    per_milestone = {(r["milestone"], json.dumps(r["instruments"]["cfg_selection"]["chosen"])) for r in records}
    assert len(per_milestone) == len(milestones)  # one choice per milestone, shared by raw weights and the sweeps
    assert {r["weights"] for r in records} == {"ema", "raw"} and {r["steps"] for r in records} >= {2, 4}

    sampled = []
    monkeypatch.setattr(runner.RunEvaluator, "sample", lambda self, *a, **k: sampled.append(1))
    again = runner.evaluate_run(run_dir, [Brightness("brightness:test")], settings, device="cpu", progress=False)
    assert not sampled and len(again) == len(records)  # resumed: the choices and the records are reused


def test_cfg_best_counts_the_validation_sampling_in_the_flops_estimate(tmp_path):
    fixed = estimate_flops(plan_study(load(StudyConfig, SPEC, ["evaluation.cfg_scale=3"]), tmp_path, SPEC.parent))
    best = estimate_flops(plan_study(load(StudyConfig, SPEC, ["evaluation.cfg_scale=best"]), tmp_path, SPEC.parent))
    assert best["eval_sample_flops"] > fixed["eval_sample_flops"]
    assert any("validation prompts" in n for n in best["notes"])
    assert best["train_flops"] == fixed["train_flops"]


# ---------------------------------------------------------------------------------------------- LR sweep


def test_lr_sweep_runs_first_and_the_grid_trains_at_its_choice(tmp_path):
    sweep = ["lr_sweep={flow: [3e-4, 1e-3, 3e-3]}", "seeds=[0]", "sizes=[2x64, 4x128]"]
    study = load(StudyConfig, SPEC, sweep)
    plan = plan_study(study, tmp_path, SPEC.parent)
    s = plan.lr_sweeps["flow"]
    assert set(plan.lr_sweeps) == {"flow"} and s.chosen is None
    assert s.point == ("2x64", max(study.data_sizes), min(study.budgets))
    assert [t.kwargs["run_config"]["train"]["lr"] for t in s.trains] == [3e-4, 1e-3, 3e-3]
    assert {t.kwargs["run_config"]["model"]["size"] for t in s.trains} == {"2x64"}
    for r in plan.runs:  # flow waits for the sweep; the others train at the spec's LR
        waiting = r.run_cfg.objective.name == "flow"
        assert r.train.fn.endswith("awaiting_lr_sweep") == waiting and (s.pick.id in r.train.deps) == waiting
        assert r.train.id in r.evaluate.deps
    text = dry_run(plan)
    assert "LR sweep flow: 0.0003, 0.001, 0.003 at 2x64" in text and "chosen by the sweep" in text
    first = {s.id for s in tuning.sweep_stages(plan)}
    assert {"autoencoder", "cache", "train", "lr-sweep"} == {i.split("/")[0] for i in first}
    est = estimate_flops(plan)
    # the chosen candidate is the grid's 2x64 run: two more runs than the grid
    assert est["train_flops"] == sum(r.run_cfg.train.budget_flops for r in plan.runs) + 2 * min(study.budgets)

    pick = stage_dir(tmp_path, s.pick)
    pick.mkdir(parents=True)
    (pick / DONE).write_text(json.dumps({"chosen_lr": 3e-4}))
    after = plan_study(study, tmp_path, SPEC.parent)
    assert after.lr_sweeps["flow"].chosen == 3e-4
    for before_run, r in zip(plan.runs, after.runs):
        flow = r.run_cfg.objective.name == "flow"
        assert r.run_cfg.train.lr == (3e-4 if flow else 1e-3) and (r.train.id != before_run.train.id) == flow
        if flow and r.run_cfg.model.size == "2x64":  # the cell the sweep trained at 3e-4: that run, not a second
            assert r.train is after.lr_sweeps["flow"].trains[0] and r.train.id in r.evaluate.deps
        else:
            assert r.train.fn.endswith("stages:train_stage") and r.train in after.stages
    assert len({s.id for s in after.stages}) == len(after.stages)
    assert "3e-04 (swept)" in dry_run(after) or "0.0003 (swept)" in dry_run(after)
    unswept = plan_study(load(StudyConfig, SPEC, [*sweep[1:], "lr_sweep=null"]), tmp_path, SPEC.parent)
    assert [r.train.id for r in unswept.runs if r.run_cfg.objective.name != "flow"] == [
        r.train.id for r in after.runs if r.run_cfg.objective.name != "flow"
    ]


def test_lr_sweep_over_seeds_trains_every_candidate_at_each_and_its_runs_are_the_grid_cells(tmp_path):
    over = ["lr_sweep={flow: [1e-3, 3e-3]}", "seeds=[0, 1, 2]", "lr_sweep_seeds=2", "objectives=[flow]"]
    study = load(StudyConfig, SPEC, over)
    s = plan_study(study, tmp_path, SPEC.parent).lr_sweeps["flow"]
    assert s.seeds == [0, 1]
    trained = [(t.kwargs["run_config"]["train"]["lr"], t.kwargs["run_config"]["seed"]) for t in s.trains]
    assert trained == [(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)]
    assert [(c["lr"], c["seed"]) for c in s.pick.kwargs["candidates"]] == trained
    one_seed = plan_study(load(StudyConfig, SPEC, [*over[:-2], "objectives=[flow]"]), tmp_path, SPEC.parent)
    assert one_seed.lr_sweeps["flow"].pick.key != s.pick.key  # another sweep, another pick
    assert "seeds 0, 1 (mean loss)" in dry_run(plan_study(study, tmp_path, SPEC.parent))

    pick = stage_dir(tmp_path, s.pick)
    pick.mkdir(parents=True)
    (pick / DONE).write_text(json.dumps({"chosen_lr": 3e-3}))
    after = plan_study(study, tmp_path, SPEC.parent)
    by_seed = {r.run_cfg.seed: r.train for r in after.runs}
    assert by_seed[0] is after.lr_sweeps["flow"].trains[2] and by_seed[1] is after.lr_sweeps["flow"].trains[3]
    assert by_seed[2] not in after.lr_sweeps["flow"].trains and by_seed[2].fn.endswith("stages:train_stage")
    budget = min(study.budgets)
    assert estimate_flops(after)["train_flops"] == 3 * budget + 2 * budget  # the grid + the other LR at two seeds
    with pytest.raises(ValueError, match=r"lr_sweep_seeds must be between 1 and the number of seeds \(3\), got 4"):
        load(StudyConfig, SPEC, [*over[:-2], "lr_sweep_seeds=4"])


def test_lr_sweep_stage_averages_a_candidates_seeds_and_a_diverged_seed_loses_it(tmp_path, monkeypatch):
    losses = {(1e-3, 0): 0.50, (1e-3, 1): 0.48, (3e-3, 0): 0.36, (3e-3, 1): 0.70, (1e-2, 0): 0.30, (1e-2, 1): None}
    candidates = []
    for (lr, seed), loss in losses.items():
        run = tmp_path / f"run-{lr:g}-{seed}"
        run.mkdir()
        (run / DONE).write_text(json.dumps({"diverged": "loss became NaN"} if loss is None else {"train_s": 1.0}))
        candidates.append({"lr": lr, "seed": seed, "run_dir": str(run), "run_config": {}})
    monkeypatch.setattr(tuning, "candidate_loss", lambda run_dir, *a: losses[_lr_seed(run_dir)])

    out = tuning.lr_sweep_stage(tmp_path / "pick", "flow", candidates, "ema", 16, 0)
    assert out["chosen_lr"] == 1e-3  # 0.49 on average; 3e-3's best seed (0.36) does not carry it
    rows = {c["lr"]: c for c in out["candidates"]}
    assert rows[1e-3]["val_loss"] == pytest.approx(0.49) and rows[3e-3]["val_loss"] == pytest.approx(0.53)
    assert rows[3e-3]["per_seed"] == [0.36, 0.70] and rows[3e-3]["seeds"] == [0, 1]
    assert rows[1e-2]["val_loss"] is None and rows[1e-2]["diverged"]  # one seed diverged: the LR loses
    assert out["by"].endswith("mean over seeds 0, 1")


def _lr_seed(run_dir) -> tuple[float, int]:
    _, lr, seed = Path(run_dir).name.split("-")
    return float(lr), int(seed)


def test_lr_sweep_stage_picks_the_lowest_validation_loss(tmp_path, monkeypatch):
    losses = {3e-4: 0.52, 1e-3: 0.31, 3e-3: 0.47}
    candidates = []
    for lr in losses:
        run = tmp_path / f"run-{lr:g}"
        run.mkdir()
        (run / DONE).write_text(json.dumps({"train_s": 1.0}))
        candidates.append({"lr": lr, "run_dir": str(run), "run_config": {}})
    diverged = tmp_path / "run-0.01"
    diverged.mkdir()
    (diverged / DONE).write_text(json.dumps({"diverged": "loss became NaN at step 12"}))
    candidates.append({"lr": 1e-2, "run_dir": str(diverged), "run_config": {}})
    monkeypatch.setattr(tuning, "candidate_loss", lambda run_dir, *a: losses[float(Path(run_dir).name[4:])])

    out = tuning.lr_sweep_stage(tmp_path / "pick", "flow", candidates, "ema", 16, 0)
    assert out["chosen_lr"] == 1e-3 and not out["edge"]
    assert [(c["lr"], c["val_loss"]) for c in out["candidates"]] == [*losses.items(), (1e-2, None)]
    assert out["candidates"][-1]["diverged"]
    assert json.loads((tmp_path / "pick" / tuning.LR_SWEEP_JSON).read_text()) == out

    with pytest.raises(ValueError, match="every candidate learning rate of flow .* diverged.*list smaller ones"):
        tuning.lr_sweep_stage(tmp_path / "pick2", "flow", candidates[-1:], "ema", 16, 0)


def test_tiny_study_with_lr_sweep_and_cfg_best(tmp_path):
    """A real tiny study: the sweep trains each candidate at both seeds, its pick stage chooses the lowest mean
    validation loss, the grid's runs are the sweep's at that LR, every milestone is sampled at a scale chosen on
    validation prompts, and the report shows both choices."""
    from synthscale.study.run import run_study
    from tests.test_study import TINY

    overrides = [
        *TINY,
        "objectives=[flow]",
        "lr_sweep=[1e-3, 3e-3]",
        "seeds=[0, 1]",
        "lr_sweep_seeds=2",
        "evaluation.cfg_scale=best",
        "evaluation.cfg_candidates=[1, 3]",
        "evaluation.val_n=8",
        "evaluation.instruments=[probe]",
        "evaluation.weights=[ema]",
        "evaluation.sweep={flow: [4]}",
    ]
    result = run_study(SPEC, tmp_path / "s", overrides, progress=False)
    assert set(result["states"].values()) == {"done"}
    picked = json.loads(next((tmp_path / "s").glob("lr-sweep/flow-pick-*/lr_sweep.json")).read_text())
    losses = {c["lr"]: c["val_loss"] for c in picked["candidates"]}
    assert set(losses) == {1e-3, 3e-3} and picked["chosen_lr"] == min(losses, key=losses.get)
    assert all(c["val_loss"] == pytest.approx(sum(c["per_seed"]) / 2) for c in picked["candidates"])
    # the grid's two runs (seeds 0 and 1) are the sweep's at the chosen LR: evaluated, not trained again
    assert len(list((tmp_path / "s").glob("train/*"))) == 4
    evaluated = sorted((tmp_path / "s").glob("evaluate/flow-*/done.json"))
    assert len(evaluated) == 2
    run = Path(json.loads(evaluated[0].read_text())["run_dir"])
    assert run.parent.name == "train"
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == picked["chosen_lr"]
    records = [json.loads(x) for x in (run / "eval" / "records.jsonl").read_text().splitlines()]
    assert records and all(r["instruments"]["cfg_selection"]["split"] == "val" for r in records)
    summary = Path(result["report"]["markdown"]).read_text()
    assert "### Learning-rate sweep" in summary and "### CFG/temperature chosen on validation" in summary
    assert "(mean; seed 0: " in summary and "mean over seeds 0, 1" in summary
    assert "CFG chosen on validation" in summary  # the primary setting names the choosing, not one scale


def test_served_and_sampled_models_use_the_temperature_their_milestone_was_evaluated_at(tiny_study):
    from synthscale.study.pick import _choice, use_chosen_temperature
    from synthscale.study.results import ResultsStore, store_path
    from synthscale.train import load_generator

    with ResultsStore(store_path(tiny_study)) as store:
        record = next(r for r in store.records() if r["objective"] == "masked")
    for temperature in (None, 0.5):
        r = {**record, "instruments": {**record["instruments"], "temperature": temperature}}
        choice = _choice(tiny_study, r, r["train_flops"], "fd_probe")
        g = load_generator(choice.run_dir, choice.step, choice.weights)
        use_chosen_temperature(g, choice)
        assert g.objective.cfg.temperature == (1.0 if temperature is None else temperature)
