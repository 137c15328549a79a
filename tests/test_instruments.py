"""Instruments: R-precision on hand-made embeddings, the in-domain encoder on a folder of real-looking images made
here (its ceiling, sanity, cache and bad inputs), pretrained instruments from local paths, the plan's refusals."""

import json

import numpy as np
import pytest
import torch

from synthscale.config import ConfigError, DataConfig, StudyConfig, load
from synthscale.evaluate.retrieval import UndefinedMetric, cosine_score, distinct_captions, r_precision
from tests.instrument_helpers import textured_folder

FAST_ENCODER = ["steps=150", "width=8", "batch_size=64", "text_width=32"]


def _unit_rows(n, d=64, seed=0):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---------------------------------------------------------------------------------------------- R-precision


def test_r_precision_perfect_random_and_tied_embeddings():
    captions = [f"caption {i}" for i in range(500)]
    distinct, ids = distinct_captions(captions)
    cap = _unit_rows(len(distinct))
    perfect = r_precision(cap[ids], cap, ids, seed=1)
    assert perfect["r_precision"] == 1.0 and perfect["r_precision_lo"] == 1.0
    assert perfect["r_precision_candidates"] == 100  # the own caption and 99 others
    rand = r_precision(_unit_rows(2000, seed=2), _unit_rows(2000, seed=3), np.arange(2000), seed=1)
    assert rand["r_precision_lo"] < 0.01 < rand["r_precision_hi"] and rand["r_precision"] < 0.02  # chance: 1/100
    blind = r_precision(torch.ones(300, 8), torch.ones(300, 8), np.arange(300), seed=1)  # every cosine ties
    assert blind["r_precision"] == pytest.approx(0.01)  # a tie among 100 counts 1/100: chance, not 0 or 1
    # the seed fixes the candidate draws and the interval
    assert r_precision(_unit_rows(300, seed=2), cap[:300], np.arange(300), seed=5) == r_precision(
        _unit_rows(300, seed=2), cap[:300], np.arange(300), seed=5
    )


def test_r_precision_counts_duplicate_captions_once():
    labels = [f"class {i % 10}" for i in range(200)]  # class-label captions: each repeats 20 times
    distinct, ids = distinct_captions(labels)
    assert len(distinct) == 10 and ids[:12].tolist() == [*range(10), 0, 1]
    cap = _unit_rows(10)
    images = cap[ids] + 0.05 * _unit_rows(200, seed=9)
    out = r_precision(images, cap, ids, seed=0)
    # fewer than 100 distinct captions: all 10 compete, and an image never has to beat its own caption's duplicate
    assert out["r_precision"] == 1.0 and out["r_precision_candidates"] == 10
    with pytest.raises(UndefinedMetric, match="1 distinct caption"):
        r_precision(images, cap[:1], np.zeros(200, dtype=int))


def test_cosine_score_is_100_times_the_mean_cosine_with_an_interval():
    cap = _unit_rows(100)
    same = cosine_score(cap, cap)
    assert same["clipscore"] == pytest.approx(100) and same["clipscore_lo"] == pytest.approx(100)
    mixed = cosine_score(_unit_rows(400, seed=4), _unit_rows(400, seed=5), seed=0)
    assert mixed["clipscore_lo"] < mixed["clipscore"] < mixed["clipscore_hi"] and abs(mixed["clipscore"]) < 3


# ---------------------------------------------------------------------------------------------- the encoder


@pytest.fixture(scope="module")
def texture_data(tmp_path_factory):
    root = textured_folder(tmp_path_factory.mktemp("textures"), n=480)
    return DataConfig(
        dataset="folder", path=str(root), resolution=32, val_fraction=0.15, test_fraction=0.15, max_caption_tokens=8
    )


@pytest.fixture(scope="module")
def texture_encoder(texture_data, tmp_path_factory):
    from synthscale.evaluate.instruments import open_instrument

    cache = tmp_path_factory.mktemp("instruments")
    return open_instrument("encoder", texture_data, cache, {"encoder": FAST_ENCODER}), cache


def test_encoder_ceiling_and_sanity_on_real_images(texture_encoder, texture_data):
    from synthscale.evaluate.instruments.ceiling import measure_ceiling

    encoder, _ = texture_encoder
    meta = encoder.meta
    assert meta["train"]["trained"] and meta["train"]["distinct_captions"] == 16
    assert encoder.name == f"encoder:{meta['key']}"
    ceiling = measure_ceiling(encoder, texture_data, n=48)
    real = ceiling["real_test"]
    assert real["rprec_encoder_candidates"] == 16  # 16 classes: chance is 1/16
    assert real["rprec_encoder_lo"] > 0.5 and real["clipscore_encoder"] > 20
    fd_real = ceiling["real_val"]["fd_encoder"]
    sanity = ceiling["sanity"]
    assert set(sanity["ratios"]) == {"blur", "channel_shuffle", "noise"}
    # colour and sharpness are what the captions' classes differ by: both corruptions are far from real
    assert ceiling["corrupted"]["channel_shuffle"]["fd_encoder"] > 2 * fd_real
    assert ceiling["corrupted"]["blur"]["fd_encoder"] > 2 * fd_real
    assert sanity["passed"] == (not sanity["failed"])


def test_encoder_is_trained_once_and_an_older_version_is_never_reused(texture_encoder, texture_data, monkeypatch):
    import synthscale.evaluate.instruments.encoder as enc
    from synthscale.evaluate.instruments import open_instrument

    encoder, cache = texture_encoder
    folder = enc.encoder_dir(texture_data, cache, enc.encoder_config(FAST_ENCODER))
    stamp = (folder / "encoder.safetensors").stat().st_mtime_ns
    # the data-size axis shares it: another train size, same distribution
    import dataclasses

    again = open_instrument("encoder", dataclasses.replace(texture_data, size=50), cache, {"encoder": FAST_ENCODER})
    assert again.name == encoder.name and (folder / "encoder.safetensors").stat().st_mtime_ns == stamp
    images = np.stack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 200, np.uint8)])
    assert torch.equal(again.features(images), encoder.features(images))
    # a cache written by another version: refused on load, trained again by load_or_train
    meta = json.loads((folder / "encoder.json").read_text())
    (folder / "encoder.json").write_text(json.dumps({**meta, "version": enc.ENCODER_VERSION - 1}))
    with pytest.raises(enc.StaleInstrument, match="version"):
        enc.load_encoder(folder)
    calls = []
    real_train = enc.train_encoder
    monkeypatch.setattr(enc, "train_encoder", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    retrained = enc.load_or_train_encoder(texture_data, cache, enc.encoder_config(FAST_ENCODER))
    assert calls == [1] and retrained.meta["version"] == enc.ENCODER_VERSION


def test_encoder_scores_any_image_set_through_the_interface(texture_encoder, texture_data):
    from synthscale.evaluate.instruments import Prompts, score_images
    from synthscale.evaluate.instruments.ceiling import real_prompts

    encoder, _ = texture_encoder
    images, prompts = real_prompts(texture_data, "test", 40)
    bound = encoder.bind(images, seed=0)
    # captions shuffled against their images: prompt following falls, quality (same images) stays
    rolled = Prompts(prompts.captions[8:] + prompts.captions[:8])
    right, wrong = score_images([bound], images, prompts), score_images([bound], images, rolled)
    assert right["fd_encoder"] == wrong["fd_encoder"] == pytest.approx(0, abs=1e-3)
    assert right["rprec_encoder"] > wrong["rprec_encoder"] + 0.3
    assert right["clipscore_encoder_lo"] > wrong["clipscore_encoder_hi"]
    card = bound.describe()
    assert card["kind"] == "encoder" and card["quality"] == "fd_encoder" and card["following"] == "rprec_encoder"


def test_bad_inputs_fewer_test_images_and_one_caption(tmp_path, texture_encoder, texture_data):
    from synthscale.evaluate.instruments import open_instrument
    from synthscale.evaluate.instruments.ceiling import measure_ceiling

    encoder, _ = texture_encoder
    with pytest.raises(ValueError, match=r"asks for 5000 prompts but the test split has \d+ items.*test_fraction"):
        measure_ceiling(encoder, texture_data, n=5000)
    same = DataConfig(dataset="folder", path=str(textured_folder(tmp_path / "same", n=60, one_caption=True)))
    same = DataConfig(**{**same.__dict__, "resolution": 32, "val_fraction": 0.2, "test_fraction": 0.2})
    flat = open_instrument("encoder", same, tmp_path / "cache", {"encoder": ["steps=2", "width=4"]})
    assert not flat.meta["train"]["trained"] and "same" in flat.meta["train"]["note"]
    ceiling = measure_ceiling(flat, same, n=8)
    assert ceiling["real_test"] == {} and "fd_encoder" in ceiling["real_val"]  # quality only, and it says why
    assert any("same" in note for note in flat.describe()["notes"])


# ---------------------------------------------------------------------------------------------- pretrained, plan


def test_wrong_instrument_paths_are_refused_when_the_study_is_planned(tmp_path):
    from pathlib import Path

    from synthscale.study.plan import plan_study

    spec = Path(__file__).parents[1] / "configs" / "studies" / "default.yaml"
    missing = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(ConfigError, match=rf"no file at {missing}.*weights-inception-2015-12-05"):
        plan_study(load(StudyConfig, spec, [f"evaluation.instruments=[inception:{missing}]"]), tmp_path, spec.parent)
    with pytest.raises(ConfigError, match=r"nowhere/config.json.*save_pretrained"):
        plan_study(
            load(StudyConfig, spec, [f"evaluation.instruments=[clip:{tmp_path / 'nowhere'}]"]), tmp_path, spec.parent
        )
    with pytest.raises(ConfigError, match="unknown instrument 'fid'"):
        plan_study(load(StudyConfig, spec, ["evaluation.instruments=[fid]"]), tmp_path, spec.parent)
    folder = load(StudyConfig, spec, ["data.dataset=folder", f"data.path={tmp_path}", "evaluation.instruments=[probe]"])
    with pytest.raises(ConfigError, match="exact scene labels"):
        plan_study(folder, tmp_path, spec.parent)
    unset = load(StudyConfig, spec, ["evaluation.instruments=[]"])
    plan = plan_study(unset, tmp_path, spec.parent)  # none named, on shapes: the probe and the encoder
    assert [s.name for s in plan.instruments] == ["probe", "encoder"]
    evaluate = next(s for s in plan.stages if s.kind == "evaluate")
    assert {s.id for s in plan.instruments} <= set(evaluate.deps)


def test_clip_instrument_from_a_local_folder(tiny_clip, texture_data):
    from synthscale.evaluate.instruments import deciding, open_instrument
    from synthscale.evaluate.instruments.ceiling import real_prompts

    clip = open_instrument(f"clip:{tiny_clip}", texture_data, "unused")
    images, prompts = real_prompts(texture_data, "test", 24)
    scores = clip.bind(images).score(images, prompts)
    assert scores["clipscore_clip_lo"] <= scores["clipscore_clip"] <= scores["clipscore_clip_hi"]
    assert 0 <= scores["rprec_clip"] <= 1 and scores["rprec_clip_candidates"] == len(set(prompts.captions))
    assert clip.name.startswith("clip:") and "fd_clip" not in scores  # CLIP here measures prompt following only
    cards = [clip.card(), {"kind": "encoder", "precedence": 2, "quality": "fd_encoder", "following": "rprec_encoder"}]
    assert deciding(cards, "following")["kind"] == "clip" and deciding(cards, "quality")["kind"] == "encoder"


def test_inception_instrument_from_a_local_weights_file(tmp_path):
    pytest.importorskip("torch_fidelity")  # the reference-metrics extra; core and test installs lack it
    from synthscale.evaluate.instruments import open_instrument

    with pytest.raises(ConfigError, match="weights-inception"):
        open_instrument(f"inception:{tmp_path / 'missing.pth'}", DataConfig(), tmp_path)


# ---------------------------------------------------------------------------------------------- a study on real images

SPEC = __import__("pathlib").Path(__file__).parents[1] / "configs" / "studies" / "default.yaml"


def _folder_study(path) -> list[str]:
    return [
        "data.dataset=folder",
        f"data.path={path}",
        "data.resolution=32",
        "data.val_fraction=0.15",
        "data.test_fraction=0.15",
        "data.max_caption_tokens=8",
        "data.size=400",
        "sizes=[2x64]",
        "objectives=[flow, autoregressive]",
        "autoencoder_overrides=[train.steps=15, train.batch_size=16]",
        "ablation_autoencoders=[]",
        "budgets=[3e9]",
        "seeds=[0]",
        "lr_sweep=null",
        "run_overrides=[flow:model.patch_size=1, train.batch_size=16, train.milestones_per_decade=2, "
        "train.first_milestone_flops=5e8, train.warmup_steps=2, train.checkpoint_every=5]",
        "encoder_overrides=[" + ", ".join(FAST_ENCODER) + "]",
        "evaluation.instruments=[]",  # the dataset's default (user data: the encoder), not default.yaml's probe
        "evaluation.n=24",
        "evaluation.holdout_n=0",
        "evaluation.sweep={flow: [2, 4]}",
        "evaluation.steps={flow: 4}",
        "evaluation.loss_batches=1",
        "evaluation.batch_size=24",
        "evaluation.speed=false",
        "executor=sequential",
    ]


def test_folder_study_instrument_stage_stores_ceiling_and_sanity(tmp_path):
    """The fast part of the study below: planning a folder study gives an encoder stage (no probe), which trains
    the encoder into the study's instrument cache and stores its ceiling at the evaluation's n."""
    from synthscale.study.grid import run_stage, stage_dir
    from synthscale.study.plan import plan_study

    folder = textured_folder(tmp_path / "images", n=240)
    plan = plan_study(load(StudyConfig, SPEC, _folder_study(folder)), tmp_path / "s", SPEC.parent)
    assert [s.name for s in plan.instruments] == ["encoder"]
    state, summary = run_stage(str(tmp_path / "s"), plan.instruments[0], threads=1)
    assert state == "done", summary
    stored = json.loads((stage_dir(tmp_path / "s", plan.instruments[0]) / "instrument.json").read_text())
    assert stored["kind"] == "encoder" and stored["following"] == "rprec_encoder"
    assert stored["ceiling"]["n"] == 24 and stored["ceiling"]["real_test"]["rprec_encoder"] > 0.5
    assert set(stored["ceiling"]["sanity"]["ratios"]) == {"blur", "channel_shuffle", "noise"}
    assert list((tmp_path / "s" / "instruments").glob("encoder-*/encoder.safetensors"))


@pytest.mark.slow
def test_whole_study_on_a_folder_of_real_looking_images(tmp_path):
    from synthscale.study.run import run_study

    folder = textured_folder(tmp_path / "images", n=480)
    result = run_study(SPEC, tmp_path / "s", _folder_study(folder), progress=False)
    assert set(result["states"].values()) == {"done"}, result["states"]
    records = [
        json.loads(line)
        for p in (tmp_path / "s").glob("train/*/eval/records.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert {r["objective"] for r in records} == {"flow", "autoregressive"}
    for r in records:  # every run scored for quality and prompt following, with intervals
        m = r["metrics"]
        assert {"fd_encoder", "kid_encoder", "rprec_encoder_lo", "rprec_encoder_hi", "clipscore_encoder_lo"} <= set(m)
        card = r["instruments"]["scored_by"]["encoder"]
        assert card["ceiling"]["real_test"]["rprec_encoder"] > m["rprec_encoder_lo"]  # real data beats a tiny model
        assert "sanity" in card["ceiling"]
    report = result["report"]["markdown"].read_text()
    assert "## Instruments" in report and "prompt following: R-precision, in-domain encoder" in report
    # a second study in the same folder (another CFG scale) re-evaluates but reuses the trained encoder
    weights = next((tmp_path / "s" / "instruments").glob("encoder-*/encoder.safetensors"))
    stamp = weights.stat().st_mtime_ns
    again = run_study(SPEC, tmp_path / "s", _folder_study(folder) + ["evaluation.cfg_scale=2.0"], progress=False)
    assert set(again["states"].values()) == {"done"} and weights.stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "s" / "instruments").glob("encoder-*"))) == 1


# ---------------------------------------------------------------------------------------------- which one decides


def _card(kind, precedence, quality, following, label):
    return {
        "name": f"{kind}:a1b2c3d4",
        "kind": kind,
        "label": label,
        "precedence": precedence,
        "quality": quality,
        "following": following,
    }


def test_the_deciding_instrument_and_the_others_agreement():
    from synthscale.study import instruments as ins

    cards = {
        "probe": _card("probe", 0, "fd_probe", "prompt_acc", "attribute probe"),
        "encoder": _card("encoder", 2, "fd_encoder", "rprec_encoder", "in-domain encoder"),
    }
    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        fd = 10.0 + i
        acc = 0.9 - 0.05 * i
        records.append(
            {
                "metrics": {
                    "fd_probe": fd,
                    "fd_encoder": 2 * fd + rng.normal(0, 0.1),
                    "prompt_acc": acc,
                    "rprec_encoder": 1 - acc,
                },  # the encoder ranks prompt following the other way round
                "instruments": {"scored_by": cards},
            }
        )
    q, f = ins.decider(records, "quality"), ins.decider(records, "following")
    assert (q.metric, f.metric) == ("fd_probe", "prompt_acc")  # exact labels decide wherever present
    assert f.describe() == "prompt following: whole-prompt accuracy, attribute probe a1b2c3"
    (quality,), (following,) = ins.agreement(records, "quality"), ins.agreement(records, "following")
    assert quality["metric"] == "fd_encoder" and quality["rho"] > 0.95 and quality["agree"]
    assert following["rho"] < -0.95 and following["agree"] is False
    user = [{"metrics": r["metrics"], "instruments": {"scored_by": {"encoder": cards["encoder"]}}} for r in records]
    d = ins.decider(user, "following")
    assert d.metric == "rprec_encoder" and d.describe() == "prompt following: R-precision, in-domain encoder a1b2c3"
    assert ins.axis_label("rprec_encoder") == "R-precision (in-domain encoder) ↑"
    assert ins.axis_label("fd_probe") == "Fréchet distance (attribute probe) ↓"
    legacy = [{"metrics": {"fd_probe": 1.0, "prompt_acc": 0.5}, "instruments": {"extractor": "probe:ab"}}]
    assert ins.decider(legacy, "quality").name == "probe:ab"  # records from before instruments: the probe
