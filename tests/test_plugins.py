"""Objectives as plug-ins: each declares its own config dataclass, the registry is the one list of names, and a
config field added later with a default neither re-keys nor refuses the runs and study stages made before it."""

import dataclasses
import importlib.util
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import synthscale.objectives as objectives
from synthscale.compute.flops import count_flops
from synthscale.config import (
    ConfigError,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    StudyConfig,
    canonical,
    config_hash,
    from_stored,
    load,
)
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.objectives.autoregressive import AutoregressiveObjective
from synthscale.objectives.flow import FlowConfig, FlowObjective
from synthscale.study.plan import _latent_shape, plan_study
from synthscale.train import list_checkpoints, train
from tests.test_trainer import final_tensors, same_tensors, tiny_cfg

SPEC = Path(__file__).parents[1] / "configs" / "studies" / "default.yaml"


def test_each_objective_config_holds_only_its_own_fields():
    flow, masked, ar = (ObjectiveConfig.of(n) for n in ("flow", "masked", "autoregressive"))
    assert {f.name for f in dataclasses.fields(flow)} == {"name", "cfg_dropout", "t_mean", "t_std", "sampler"}
    assert {f.name for f in dataclasses.fields(masked)} == {
        "name",
        "cfg_dropout",
        "temperature",
        "top_k",
        "mask_temperature",
        "factorised",
    }
    assert {f.name for f in dataclasses.fields(ar)} == {"name", "cfg_dropout", "temperature", "top_k", "factorised"}
    cfg = load(RunConfig, None, ["objective.name=masked", "objective.mask_temperature=2"])
    assert type(cfg.objective).__name__ == "MaskedConfig" and cfg.objective.mask_temperature == 2.0
    with pytest.raises(ConfigError, match=r"unknown key 'objective.temperature'.*t_mean"):
        load(RunConfig, None, ["objective.temperature=0.5"])  # flow has no temperature
    # switching objective drops the previous objective's own keys, keeps the shared ones
    cfg = load(RunConfig, None, ["objective.t_std=2", "objective.cfg_dropout=0.2", "objective.name=autoregressive"])
    assert cfg.objective == ObjectiveConfig.of("autoregressive", cfg_dropout=0.2)
    with pytest.raises(ConfigError, match=r"objective.name' is 'diffusion'.*'flow', 'masked', 'autoregressive'"):
        load(RunConfig, None, ["objective.name=diffusion"])
    with pytest.raises(ConfigError, match="cannot configure the 'masked' objective"):
        objectives.get_objective("masked").__class__(ObjectiveConfig.of("flow"))


def test_the_registry_is_the_one_list_of_names(monkeypatch):
    """A fourth objective registered in one place is known to config validation, the study and its latent map."""

    @dataclass
    class EchoConfig(ObjectiveConfig):
        name: str = "echo"
        knob: int = 3

    class Echo(AutoregressiveObjective):
        name, config = "echo", EchoConfig

    monkeypatch.setitem(objectives.OBJECTIVES, "echo", Echo)
    assert ObjectiveConfig.names() == ["flow", "masked", "autoregressive", "echo"]
    assert load(RunConfig, None, ["objective.name=echo", "objective.knob=5"]).objective == EchoConfig(knob=5)
    study = load(StudyConfig, SPEC, ["objectives=[flow, echo]"])
    plan = plan_study(study, "/tmp/unused", SPEC.parent)
    kinds = {r.run_cfg.objective.name: plan.autoencoders[r.autoencoder][0].kind for r in plan.runs}
    assert kinds == {"flow": "kl", "echo": "fsq"}  # discrete, like the objective it derives from
    # the findings read paradigms, not names: echo stands for next-token where autoregressive is absent
    assert objectives.by_paradigm(["masked", "echo", "flow"]) == {
        "masked-token": "masked",
        "next-token": "echo",
        "diffusion": "flow",
    }
    assert objectives.by_paradigm(["autoregressive", "echo"]) == {"next-token": "autoregressive"}
    monkeypatch.delitem(objectives.OBJECTIVES, "echo")
    with pytest.raises(ConfigError, match="'echo' is not an objective; valid objectives: flow, masked, autoregressive"):
        plan_study(load(StudyConfig, SPEC, ["objectives=[flow, echo]"]), "/tmp/unused", SPEC.parent)  # the registry


def test_pre_split_run_configs_still_read():
    """config.json of a run written when one ObjectiveConfig held every objective's fields."""
    old = {"name": "flow", "cfg_dropout": 0.1, "t_mean": 0.0, "t_std": 1.0, "sampler": "heun", "temperature": 1.0}
    old |= {"top_k": 0, "mask_temperature": 4.5}
    cfg = load(RunConfig, None, [f"objective={json.dumps(old)}"])
    assert cfg.objective == FlowConfig(sampler="heun")
    with pytest.raises(ConfigError, match="unknown key 'objective.temperature'"):  # a value it never had: refused
        load(RunConfig, None, [f"objective={json.dumps(old | {'temperature': 0.7})}"])


def test_keys_cover_every_field_and_a_changed_default_rekeys(tmp_path, monkeypatch):
    """A field at its default is key material too: a release that changes flow's default re-runs flow's stages
    (and only those), where leaving defaults out of the key would reuse stages made under the old value."""
    assert canonical(ObjectiveConfig.of("flow")) == dataclasses.asdict(FlowConfig())
    assert config_hash(ObjectiveConfig.of("flow")) != config_hash(ObjectiveConfig.of("masked"))
    assert config_hash(RunConfig()) != config_hash(load(RunConfig, None, ["train.lr=1e-4"]))
    before = plan_study(load(StudyConfig, SPEC), tmp_path / "study", SPEC.parent)

    @dataclass
    class FlowConfigNewDefault(FlowConfig):
        t_std: float = 1.5  # was 1.0

    monkeypatch.setattr(FlowObjective, "config", FlowConfigNewDefault)
    after = plan_study(load(StudyConfig, SPEC), tmp_path / "study", SPEC.parent)
    changed = {(s.kind, s.name) for s in after.stages} - {(s.kind, s.name) for s in before.stages}
    assert not changed  # the same stages ...
    rekeyed = {s.id for s in after.stages} - {s.id for s in before.stages}
    flow = {s.id for r in after.runs if r.run_cfg.objective.name == "flow" for s in (r.train, r.evaluate)}
    assert flow <= rekeyed  # ... flow's train and evaluate stages get new keys: they run again
    sweep = {s.id for s in after.stages if s.kind == "lr-sweep" or s.kind == "train" and s.id not in flow}
    assert all("flow" in i for i in rekeyed - flow) and rekeyed - flow <= sweep  # with flow's LR sweep, only


def test_a_field_without_a_neutral_value_rekeys(monkeypatch):
    """The migration is opt-in per field: a new field not listed in `added_fields` is key material like any other."""

    @dataclass
    class FlowConfigUnlisted(FlowConfig):
        new_knob: float = 0.5

    cfg = RunConfig(objective=ObjectiveConfig.of("flow"))
    assert config_hash(dataclasses.replace(cfg, objective=FlowConfigUnlisted())) != config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, objective=FlowConfigWithKnob())) == config_hash(cfg)
    assert config_hash(dataclasses.replace(cfg, objective=FlowConfigWithKnob(new_knob=0.7))) != config_hash(cfg)


@dataclass
class FlowConfigWithKnob(FlowConfig):
    """FlowConfig as a later release might have it: one more field, with a default that behaves as before it."""

    added_fields: ClassVar[dict[str, Any]] = {"new_knob": 0.5}
    new_knob: float = 0.5


def test_a_new_defaulted_field_neither_rekeys_nor_refuses(tmp_path, monkeypatch):
    """Make a run (cut back to mid-run) and a study plan with today's FlowConfig, then give flow a new field with a
    default: the plan's stage keys are the same, and the old run folder resumes to the same weights."""
    cfg = tiny_cfg(6)
    full = train(cfg, tmp_path / "full", progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "cut" / "done.json").unlink()
    for info in list_checkpoints(tmp_path / "cut")[1:]:
        shutil.rmtree(info.path)
    before = [s.id for s in plan_study(load(StudyConfig, SPEC), tmp_path / "study", SPEC.parent).stages]

    monkeypatch.setattr(FlowObjective, "config", FlowConfigWithKnob)
    new_cfg = load(RunConfig, None, [f"objective={json.dumps(dataclasses.asdict(cfg.objective))}"])
    new_cfg = dataclasses.replace(cfg, objective=new_cfg.objective)
    assert isinstance(new_cfg.objective, FlowConfigWithKnob) and new_cfg.objective.new_knob == 0.5
    assert config_hash(new_cfg) == config_hash(cfg)
    after = [s.id for s in plan_study(load(StudyConfig, SPEC), tmp_path / "study", SPEC.parent).stages]
    assert after == before

    resumed = train(new_cfg, tmp_path / "cut", progress=False)  # config.json lacks new_knob: not refused
    assert resumed["steps"] == full["steps"] and resumed["final_loss"] == full["final_loss"]
    for group in ("model", "ema"):
        assert same_tensors(final_tensors(tmp_path / "full", group), final_tensors(tmp_path / "cut", group))
    changed = dataclasses.replace(new_cfg, objective=FlowConfigWithKnob(new_knob=0.7))
    with pytest.raises(ConfigError, match=r"objective.new_knob: '\(absent\)' → 0.7"):
        train(changed, tmp_path / "cut", progress=False)


def test_a_stored_config_lacking_an_added_field_reads_as_made(monkeypatch):
    """A run folder written before a field existed was made at the field's neutral value, whatever today's default."""

    @dataclass
    class FlowConfigKnobDefaultChanged(FlowConfigWithKnob):
        new_knob: float = 0.7  # a later release changed the added field's default

    old = json.loads(json.dumps(dataclasses.asdict(RunConfig(objective=ObjectiveConfig.of("flow")))))
    monkeypatch.setattr(FlowObjective, "config", FlowConfigKnobDefaultChanged)
    assert from_stored(RunConfig, old, source="config.json").objective.new_knob == 0.5
    assert load(RunConfig, None, [f"objective={json.dumps(old['objective'])}"]).objective.new_knob == 0.7


def _load_example(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "next_patch", Path(__file__).parents[1] / "docs/examples/next_patch.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "next_patch", module)  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def test_the_documented_fourth_objective_is_one_file_and_one_registry_entry(tmp_path, monkeypatch):
    """docs/examples/next_patch.py, registered: its FLOPs equal the counter, it trains through the trainer on
    its own config and samples latents of the right shape."""
    example = _load_example(monkeypatch)
    monkeypatch.setitem(objectives.OBJECTIVES, "next_patch", example.NextPatchObjective)
    obj = objectives.get_objective("next_patch")
    model_cfg, latent = ModelConfig(size="2x64", patch_size=2, text_layers=1), LatentSpec("continuous", 4, 4, 4)
    text_spec = TextSpec(vocab_size=40, max_length=6)
    torch.manual_seed(0)
    model = obj.build_model(model_cfg, latent, text_spec)
    x, text = torch.randn(2, 4, 4, 4), torch.randint(3, 40, (2, 6))
    measured = count_flops(lambda: obj.loss(model, x, text, torch.Generator().manual_seed(0)))
    assert measured == 2 * obj.forward_flops(model_cfg, latent, text_spec).total
    sample = lambda: obj.sample(model, text, 4, 2.0, torch.Generator().manual_seed(0))  # noqa: E731
    assert count_flops(sample) == 2 * obj.sample_flops(model_cfg, latent, text_spec, 4, 2.0)
    assert sample().shape == (2, 4, 4, 4)

    cfg = tiny_cfg(3, "objective.name=next_patch", "objective.noise=0.1", "model.patch_size=2")
    assert cfg.objective == example.NextPatchConfig(noise=0.1)
    summary = train(cfg, tmp_path, progress=False)
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])


KEY_FIELDS = Path(__file__).parent / "fixtures" / "key_fields.json"


def test_every_new_key_field_is_listed_with_its_neutral_value():
    """The fields of every hashed config when keys began to cover every field (a frozen list: never edit it). A
    field added since must be in its class's `added_fields`, or it would silently re-key every study folder."""
    from synthscale.config import (
        AutoencoderConfig,
        AutoencoderTrainConfig,
        DataConfig,
        EncoderConfig,
        EvalSettings,
        ProbeConfig,
        TrainConfig,
        added_fields,
    )

    frozen = json.loads(KEY_FIELDS.read_text())
    hashed = [DataConfig, ModelConfig, TrainConfig, RunConfig, EvalSettings, AutoencoderConfig, AutoencoderTrainConfig]
    hashed += [ProbeConfig, EncoderConfig, *(o.config for o in objectives.OBJECTIVES.values())]
    for cls in (c for c in hashed if c.__name__ in frozen):  # a class added since keys nothing made before it
        new = {f.name for f in dataclasses.fields(cls)} - set(frozen.get(cls.__name__, [])) - set(added_fields(cls))
        assert not new, (
            f"{cls.__name__}.{sorted(new)[0]} is new: add it to {cls.__name__}.added_fields with the value that "
            "behaves as before it existed, so that finished stages keep their keys"
        )


def test_study_defaults_are_the_default_study(tmp_path):
    """`StudyConfig()` (a spec that sets nothing) trains what configs/studies/default.yaml trains, on the same
    autoencoders, and evaluates it the same way: only the instruments stay the dataset's defaults, and replicate
    seeds and the LR sweep, which multiply the cost, stay opt-in."""
    spec, blank = load(StudyConfig, SPEC, ["seeds=[0]", "lr_sweep=null"]), StudyConfig()  # both opt-in: they cost
    for key in ("data", "sizes", "data_sizes", "budgets", "ablation_autoencoders", "precision", "executor", "workers"):
        assert getattr(blank, key) == getattr(spec, key), key
    ev = lambda s: {k: v for k, v in dataclasses.asdict(s.evaluation).items() if k not in ("steps", "sweep")}  # noqa: E731
    assert {**ev(blank), "instruments": []} == {**ev(spec), "instruments": []}
    a = plan_study(spec, tmp_path, SPEC.parent)
    b = plan_study(blank, tmp_path, SPEC.parents[2])
    assert [r.run_cfg.objective.name for r in b.runs] == [r.run_cfg.objective.name for r in a.runs]
    same = ("autoencoder", "cache", "train")
    assert [s.id for s in b.stages if s.kind in same] == [s.id for s in a.stages if s.kind in same]
    for r in b.runs:  # the objective's default steps and sweep are the ones default.yaml names
        objective, latent = (
            objectives.get_objective(r.run_cfg.objective),
            _latent_shape(b.autoencoders[r.autoencoder][0], []),
        )
        assert spec.evaluation.steps.get(objective.name, objective.default_steps(latent)) == objective.default_steps(
            latent
        )
        assert spec.evaluation.sweep.get(objective.name, objective.steps_grid(latent)) == objective.steps_grid(latent)
