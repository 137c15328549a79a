"""The study end to end on a tiny grid: planning, running, resuming after a kill, ingesting, reporting."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthscale.cli import main
from synthscale.config import ConfigError, RunConfig, StudyConfig, from_dict, load
from synthscale.study.plan import plan_study
from synthscale.study.run import load_study_config, run_study
from synthscale.train.location import relocate

SPEC = Path(__file__).parents[1] / "configs" / "studies" / "default.yaml"
TINY = [
    "sizes=[2x64]",
    "objectives=[flow, autoregressive]",
    "autoencoder_overrides=[train.steps=15, train.batch_size=16]",
    "ablation_autoencoders=[]",
    "budgets=[3e9]",
    "data.size=512",
    "data.val_size=128",
    "data.test_size=64",
    "data.holdout_size=32",
    "seeds=[0]",
    "lr_sweep=null",
    "run_overrides=[flow:model.patch_size=1, train.batch_size=16, train.milestones_per_decade=2, "
    "train.first_milestone_flops=5e8, train.warmup_steps=2, train.checkpoint_every=5]",
    "probe_overrides=[steps=15, eval_items=64]",
    "encoder_overrides=[steps=10, train_items=256, width=8, batch_size=32]",
    "evaluation.n=16",
    "evaluation.holdout_n=4",
    "evaluation.cfg_scale=3.0",  # a fixed scale (and the CFG sweep), as studies without `best` evaluate
    "evaluation.cfg_sweep=[1.0]",
    "evaluation.sweep={flow: [2, 4]}",
    "evaluation.steps={flow: 4}",
    "evaluation.loss_batches=1",
    "evaluation.batch_size=16",
    "evaluation.speed=false",
    "evaluation.instruments=[probe, encoder]",  # the default has the probe only; test the agreement table too
    "evaluation.weights=[ema, raw]",  # and EMA only: test the raw-weights ablation too
    "executor=sequential",
]


def test_run_set_appends_to_the_specs_run_overrides(tmp_path, capsys):
    """`--run-set` adds one run override and keeps the spec's (`--set run_overrides=[...]` replaces the list)."""
    study = load_study_config(
        SPEC, ["budgets=[1e12]", "lr_sweep=null"], ["masked:train.batch_size=16", "train.lr=5e-4"]
    )
    spec_overrides = load(StudyConfig, SPEC).run_overrides
    assert study.run_overrides == [*spec_overrides, "masked:train.batch_size=16", "train.lr=5e-4"]
    runs = {r.run_cfg.objective.name: r.run_cfg for r in plan_study(study, tmp_path, SPEC.parent).runs}
    assert (runs["masked"].train.batch_size, runs["flow"].train.batch_size) == (16, 32)
    assert runs["flow"].model.patch_size == 1 and {c.train.lr for c in runs.values()} == {5e-4}

    def flow_params(*extra: str) -> list[str]:  # the dry run's parameter counts of the flow runs
        assert main(["study", str(SPEC), "--out", str(tmp_path), "--dry-run", *extra]) == 0
        return [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.strip().startswith("flow-")]

    patch2, spec = flow_params("--run-set", "flow:model.patch_size=2", "--set", "parity=none"), flow_params()
    assert len(patch2) == len(spec) == 3 and patch2 != spec  # patch 2 instead of 1: another input layer (3 seeds)
    assert main(["study", str(SPEC), "--out", str(tmp_path), "--dry-run", "--run-set", "train.lr"]) == 2
    assert "expected [objective:]key=value" in capsys.readouterr().err


def test_plan_keys_are_content_not_paths(tmp_path):
    study = load(StudyConfig, SPEC)
    a, b = plan_study(study, tmp_path / "a", SPEC.parent), plan_study(study, tmp_path / "b", SPEC.parent)
    assert [s.id for s in a.stages] == [s.id for s in b.stages]
    kinds = [s.kind for s in a.stages]
    assert len(a.runs) == 3 * 3  # objectives × seeds (one size, no ablation in the default)
    # before the sweep has run: each objective's two LR candidates beside its runs (which wait for the choice; the
    # seed-0 run is then the chosen candidate's stage)
    assert kinds.count("train") == len(a.runs) + 2 * 3
    assert kinds.count("ceiling") == kinds.count("autoencoder") == 2
    changed = plan_study(load(StudyConfig, SPEC, ["run_overrides=[train.lr=1e-4]"]), tmp_path / "a", SPEC.parent)
    assert {s.id for s in changed.stages if s.kind == "autoencoder"} == {
        s.id for s in a.stages if s.kind == "autoencoder"
    }
    assert not {s.id for s in changed.stages if s.kind == "train"} & {s.id for s in a.stages if s.kind == "train"}


def test_generator_code_version_rekeys_training_not_autoencoders(tmp_path, monkeypatch):
    import synthscale.objectives as objectives

    study = load(StudyConfig, SPEC)
    before = plan_study(study, tmp_path, SPEC.parent)
    monkeypatch.setattr(objectives, "GENERATOR_VERSION", objectives.GENERATOR_VERSION + 1)
    after = plan_study(study, tmp_path, SPEC.parent)

    def ids(plan, kind):
        return {s.id for s in plan.stages if s.kind == kind}

    for kind in ("autoencoder", "instrument", "cache"):
        assert ids(before, kind) == ids(after, kind)
    for kind in ("train", "evaluate"):
        assert ids(before, kind) and not ids(before, kind) & ids(after, kind)


def test_precision_auto_is_measured_once_and_keys_the_runs(tmp_path):
    from synthscale.train.precision import measure_precision

    study = load(StudyConfig, SPEC, ["precision=auto"])
    before = plan_study(study, tmp_path, SPEC.parent)  # not measured yet: float32
    assert {r.run_cfg.train.precision for r in before.runs} == {"fp32"}
    (tmp_path / "precision.json").write_text(json.dumps({"choice": "bf16"}))
    after = plan_study(study, tmp_path, SPEC.parent)
    assert {r.run_cfg.train.precision for r in after.runs} == {"bf16"}
    assert not {r.train.id for r in before.runs} & {r.train.id for r in after.runs}
    assert {s.id for s in before.stages if s.kind == "autoencoder"} == {
        s.id for s in after.stages if s.kind == "autoencoder"
    }
    measured = measure_precision("2x64", 4, repeats=1)
    assert measured["fp32_ms"] > 0 and measured["bf16_ms"] > 0
    assert measured["choice"] == ("bf16" if measured["bf16_speedup"] >= measured["min_speedup"] else "fp32")
    assert measure_precision("2x64", 2, "masked", repeats=1)["fp32_ms"] > 0  # a study with token methods only
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or auto"):
        load(StudyConfig, SPEC, ["precision=fp16"])


def test_objective_scoped_overrides_and_errors(tmp_path):
    scoped = ["parity=none", "run_overrides=[flow:model.patch_size=2]"]
    plan = plan_study(load(StudyConfig, SPEC, scoped), tmp_path, SPEC.parent)
    patches = {r.run_cfg.objective.name: r.run_cfg.model.patch_size for r in plan.runs}
    assert patches == {"flow": 2, "masked": 1, "autoregressive": 1}
    with pytest.raises(ValueError, match="not an objective"):
        plan_study(load(StudyConfig, SPEC, ["run_overrides=[diffusion:train.lr=1]"]), tmp_path, SPEC.parent)
    with pytest.raises(ValueError, match="continuous"):
        plan_study(
            load(StudyConfig, SPEC, ["continuous_autoencoder=../autoencoders/lfq-f8.yaml"]), tmp_path, SPEC.parent
        )
    with pytest.raises(ConfigError, match=r"evaluation.sweep of run masked-.*1\.\.64 for 64 image tokens, got 100"):
        plan_study(load(StudyConfig, SPEC, ["evaluation.sweep={masked: [4, 100]}"]), tmp_path, SPEC.parent)


def test_seeds_key_runs_apart_and_seed_zero_keeps_its_keys(tmp_path):
    one = plan_study(load(StudyConfig, SPEC, ["seeds=[0]", "lr_sweep=null"]), tmp_path, SPEC.parent)
    three = plan_study(load(StudyConfig, SPEC, ["seeds=[0, 1, 2]", "lr_sweep=null"]), tmp_path, SPEC.parent)
    assert len(three.runs) == 3 * len(one.runs)
    ids = lambda plan, kind: {s.id for s in plan.stages if s.kind == kind}  # noqa: E731
    assert ids(one, "train") <= ids(three, "train") and ids(one, "evaluate") <= ids(three, "evaluate")
    assert len(ids(three, "train")) == len(ids(three, "evaluate")) == len(three.runs)  # every seed its own key
    assert ids(one, "cache") == ids(three, "cache")  # the latent cache does not depend on the seed
    cells: dict[tuple, set[int]] = {}
    for r in three.runs:
        c = r.run_cfg
        cells.setdefault((c.objective.name, c.model.size, c.train.budget_flops), set()).add(c.seed)
    assert all(seeds == {0, 1, 2} for seeds in cells.values())
    with pytest.raises(ValueError, match="seeds must be distinct"):
        load(StudyConfig, SPEC, ["seeds=[1, 1]"])
    with pytest.raises(ConfigError, match="list the seeds in `seeds:` only"):
        plan_study(load(StudyConfig, SPEC, ["seeds=[0, 1]", "run_overrides=[seed=3]"]), tmp_path, SPEC.parent)


def test_token_parity_is_refused_with_the_fix_named(tmp_path):
    """Flow at patch 2 sees 16 image tokens and the token methods 64: parity: tokens refuses it at planning."""
    patch2 = "run_overrides=[flow:model.patch_size=2]"
    with pytest.raises(ConfigError, match=r"flow 16, masked 64.*model\.patch_size.*parity: none"):
        plan_study(load(StudyConfig, SPEC, [patch2]), tmp_path, SPEC.parent)
    plan = plan_study(load(StudyConfig, SPEC), tmp_path, SPEC.parent)  # default: 8×8 latents unpatchified, 64 each
    from synthscale.study import controls
    from synthscale.study.run import dry_run

    runs = controls.plan_controls(plan)
    assert {r.image_tokens for r in runs} == {64} and controls.token_mismatch(runs) is None
    text = dry_run(plan_study(load(StudyConfig, SPEC, [patch2, "parity=none"]), tmp_path, SPEC.parent))
    assert "comparison controls (parity: none" in text and "image tokens differ" in text
    assert "256 floats" in text and "bits" in text  # kl-f4c4 8×8×4 floats; fsq-f4 codes


def _records(root: Path) -> list[dict]:
    out = []
    for path in sorted(root.glob("train/*/eval/records.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            r["metrics"].pop("latency_s", None), r["metrics"].pop("throughput_ips", None)
            out.append(r)
    return out


def test_tiny_study_end_to_end_and_rerun_skips(tmp_path):
    result = run_study(SPEC, tmp_path / "s", TINY, progress=False)
    assert set(result["states"].values()) == {"done"}
    assert Path(result["report"]["html"]).is_file() and Path(result["report"]["markdown"]).is_file()
    # shapes: the exact probe decides, and the in-domain encoder's agreement with it is reported
    summary = Path(result["report"]["markdown"]).read_text()
    assert "decide with: image quality: Fréchet distance, attribute probe" in summary
    assert "fd_encoder (encoder:" in summary and "rprec_encoder (encoder:" in summary  # the agreement table
    records = _records(tmp_path / "s")
    assert {r["objective"] for r in records} == {"flow", "autoregressive"}
    assert {r["weights"] for r in records} == {"ema", "raw"}
    assert all("fd_probe" in r["metrics"] and "prompt_acc" in r["metrics"] for r in records)
    _check_cfg_best(tmp_path / "s")
    _check_ceilings(tmp_path / "s", Path(result["report"]["markdown"]))
    done_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*/*/done.json")}
    again = run_study(SPEC, tmp_path / "s", TINY, progress=False)
    assert set(again["states"].values()) == {"done"}
    assert {p: p.stat().st_mtime_ns for p in done_files} == done_files  # nothing re-ran
    _check_a_narrowed_spec_leaves_the_report(tmp_path / "s")
    _check_moved_study_resumes(tmp_path / "s", tmp_path / "moved", records)


def _check_a_narrowed_spec_leaves_the_report(root: Path):
    """Re-run with fewer objectives: the runs the spec no longer plans stay on disk but leave the results store
    (and so the report)."""
    from synthscale.study.results import ResultsStore, store_path

    run_study(SPEC, root, [*TINY, "objectives=[flow]"], progress=False)
    with ResultsStore(store_path(root)) as store:
        assert {r["objective"] for r in store.runs()} == {r["objective"] for r in store.records()} == {"flow"}
    assert any(root.glob("train/autoregressive-*/done.json"))


def _check_ceilings(root: Path, markdown: Path):
    """Each autoencoder's reconstructions of the evaluation images are scored by the probe, stored with the
    autoencoder in the results, and shown beside each paradigm's best model in the report."""
    from synthscale.study.results import ResultsStore, store_path

    stored = json.loads(next(root.glob("ceiling/fsq-f4-*/ceiling.json")).read_text())
    assert (stored["n"], stored["holdout_n"]) == (16, 4) and "probe" in {i["kind"] for i in stored["instruments"]}
    with ResultsStore(store_path(root)) as store:
        rows = {a["name"]: a["metrics"] for a in store.autoencoders()}
    assert set(rows) == {"kl-f4c4", "fsq-f4"}
    for m in rows.values():
        assert 0 <= m["ceiling_prompt_acc_lo"] <= m["ceiling_prompt_acc"] <= m["ceiling_prompt_acc_hi"] <= 1
        assert m["ceiling_fd_probe"] >= 0 and m["ceiling_psnr"] > 5
    assert rows["fsq-f4"]["ceiling_prompt_acc"] == stored["metrics"]["prompt_acc"]
    text = markdown.read_text()
    assert "### Autoencoder ceilings" in text and ("capped by its autoencoder" in text or "below its ceiling" in text)


def _check_moved_study_resumes(root: Path, moved: Path, records: list[dict]):
    """A study moved mid-run (here: one run cut back to its first checkpoint, its evaluation undone) resumes at
    the new place to the same records; a run whose autoencoder is not the one it recorded is refused."""
    shutil.move(root, moved)
    run = next(moved.glob("train/flow-*"))
    for path in sorted((run / "checkpoints").glob("step_*"))[1:] + [
        run / "done.json",
        run / "eval",
        *moved.glob("evaluate/flow-*"),
    ]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = run_study(SPEC, moved, TINY, progress=False)
    assert set(result["states"].values()) == {"done"}
    assert _strip(_records(moved)) == _strip(records)
    assert json.loads((run / "config.json").read_text())["autoencoder"].startswith(str(moved))

    other = next(moved.glob("train/autoregressive-*"))
    kl = next(moved.glob("autoencoder/kl-*")) / "model"
    wrong = {**json.loads((other / "config.json").read_text()), "autoencoder": str(kl)}
    with pytest.raises(ConfigError, match="fsq-f4.*point autoencoder at the folder it was trained with"):
        relocate(other, from_dict(RunConfig, wrong))  # the kl autoencoder for a run trained on fsq-f4 latents
    before = (other / "config.json").read_text()
    assert main(["evaluate", str(other), "--autoencoder", str(kl)]) == 2  # the CLI's way in: refused alike
    assert (other / "config.json").read_text() == before
    assert main(["evaluate", str(other), "--steps", "4"]) == 2  # next-token samples all 16 tokens: 16 steps


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(tmp_path):
    reference = tmp_path / "reference"
    run_study(SPEC, reference, TINY, progress=False)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "synthscale", "study", str(SPEC), "--out", str(killed), "--quiet", "--threads", "1"]
    for o in TINY:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 600
    while not list(killed.glob("train/*/checkpoints/step_*")) and time.time() < deadline:  # mid-training
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished_before = set(killed.glob("*/*/done.json"))
    stamps = {p: p.stat().st_mtime_ns for p in finished_before}
    run_study(SPEC, killed, TINY, progress=False)
    assert {p: p.stat().st_mtime_ns for p in finished_before} == stamps  # finished stages were not redone
    assert _strip(_records(killed)) == _strip(_records(reference))


def _strip(records):
    for r in records:
        r.pop("run", None)
        r["instruments"].pop("sample_grid", None)
        for card in r["instruments"].get("scored_by", {}).values():  # how long an instrument took to train
            for timing in ("train_seconds", "train_cpu_seconds"):
                card.get("train", {}).pop(timing, None)
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def _check_cfg_best(root: Path):
    """`--cfg best` picks the scale on validation prompts and records the choice beside the test numbers."""
    from synthscale.config import EvalSettings
    from synthscale.evaluate.probes import load_probe
    from synthscale.evaluate.runner import Setting, Tuning, evaluate_run, milestones_of
    from synthscale.evaluate.selection import choose

    run_dir = next(root.glob("train/flow-*"))
    probe = load_probe(next(root.glob("instruments/probe-*/probe.json")).parent)
    settings = EvalSettings(n=16, holdout_n=0, loss_batches=1, batch_size=16, speed=False, val_n=16)
    last = milestones_of(run_dir)[-1]
    plan = [Setting(last, 0, "ema", 2, None, tune=Tuning("ema", 2))]
    records = evaluate_run(run_dir, probe, settings, plan=plan, progress=False)
    chosen = [r for r in records if (r.instruments.get("cfg_selection") or {}).get("by")]
    assert len(chosen) == 1
    selection = chosen[0].instruments["cfg_selection"]
    scores = selection["scores"]
    assert [s["cfg_scale"] for s in scores] == settings.cfg_candidates and selection["split"] == "val"
    assert chosen[0].cfg_scale == scores[choose(scores, "fd_probe", "prompt_acc")]["cfg_scale"]


def test_paper_grid_dry_run_needs_no_data_or_weights(tmp_path, capsys):
    from synthscale.cli import main

    paper = SPEC.parent / "paper.yaml"
    assert main(["study", str(paper), "--out", str(tmp_path / "paper"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "flow-XL" in out and "autoregressive-S" in out and "estimated total:" in out
    assert not (tmp_path / "paper").exists()  # a dry run writes nothing
