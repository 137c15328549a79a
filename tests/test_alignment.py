"""Prompt following: the fact checks on hand-made scenes, the summary and its intervals, and (with the trained
probe) the must-show: real renders score ≥ 0.97 whole-prompt, the same renders under shuffled captions near chance."""

import math

import numpy as np
import pytest

from synthscale.config import ProbeConfig
from synthscale.evaluate.alignment import (
    FACTS,
    alignment_instruments,
    is_holdout,
    prompt_facts,
    prompt_following,
    relation_holds,
    summarise,
)
from synthscale.evaluate.probes import AttributeProbe, real_renders


def obj(shape="circle", colour="red", size="small", row=0, col=0):
    return {"shape": shape, "colour": colour, "size": size, "row": row, "col": col}


def single(**kw):
    return {"task": "single", "count": 1, "relation": None, "objects": [obj(**kw)]}


def two(a, b, relation):
    return {"task": "two", "count": 2, "relation": relation, "objects": [a, b]}


def count(n, **kw):
    return {
        "task": "count",
        "count": n,
        "relation": None,
        "objects": [obj(row=k // 3, col=k % 3, **kw) for k in range(n)],
    }


def test_single_object_facts():
    p = single(shape="square", colour="blue", size="large", row=1, col=2)
    f = prompt_facts(p, [obj("square", "blue", "large", 1, 2)])
    assert all(f[k] == 1.0 for k in ("shape", "colour", "size", "position", "count", "prompt"))
    assert math.isnan(f["relation"])  # not stated by a single-object prompt
    f = prompt_facts(p, [obj("square", "green", "large", 1, 2)])
    assert f["colour"] == 0.0 and f["shape"] == 1.0 and f["prompt"] == 0.0
    f = prompt_facts(p, [obj("square", "blue", "large", 0, 0)])
    assert f["position"] == 0.0 and f["colour"] == 1.0 and f["prompt"] == 0.0
    # the right object plus a stray one: attributes hold, the count (exactly one) does not
    f = prompt_facts(p, [obj("circle", "red", "small", 0, 0), obj("square", "blue", "large", 1, 2)])
    assert f["shape"] == f["colour"] == f["position"] == 1.0 and f["count"] == 0.0 and f["prompt"] == 0.0
    f = prompt_facts(p, [])  # nothing drawn: every stated fact fails
    assert all(f[k] == 0.0 for k in ("shape", "colour", "size", "position", "count", "prompt"))


def test_two_object_facts_and_matching():
    a, b = obj("circle", "red", "small", 1, 0), obj("square", "green", "large", 1, 2)
    p = two(a, b, "to the left of")
    assert prompt_facts(p, [a, b])["prompt"] == 1.0
    # seen order does not matter: objects are matched, not zipped
    assert prompt_facts(p, [b, a])["prompt"] == 1.0
    # right objects, wrong sides
    f = prompt_facts(p, [dict(a, col=2), dict(b, col=0)])
    assert f["relation"] == 0.0 and f["shape"] == f["colour"] == f["size"] == 1.0 and f["prompt"] == 0.0
    # one colour wrong: colour fails for the prompt (both objects must have theirs), shape still holds
    f = prompt_facts(p, [a, dict(b, colour="blue")])
    assert f["colour"] == 0.0 and f["shape"] == 1.0 and f["relation"] == 1.0
    # only one object drawn
    f = prompt_facts(p, [a])
    assert f["count"] == 0.0 and f["relation"] == 0.0 and f["shape"] == 0.0
    assert math.isnan(f["position"])  # two-object prompts state a relation, not cells


def test_relations_read_from_cells():
    left, right, top = obj(row=1, col=0), obj(row=1, col=2), obj(row=0, col=1)
    assert relation_holds("to the left of", left, right) and not relation_holds("to the left of", right, left)
    assert relation_holds("to the right of", right, left)
    assert relation_holds("above", top, left) and relation_holds("below", left, top)
    with pytest.raises(ValueError, match="unknown relation"):
        relation_holds("inside", left, right)


def test_count_facts():
    p = count(3, shape="diamond", colour="yellow", size="large")
    assert prompt_facts(p, p["objects"])["prompt"] == 1.0
    # positions are not stated by a counting prompt: any three cells will do
    moved = [dict(o, row=2, col=k) for k, o in enumerate(p["objects"])]
    assert prompt_facts(p, moved)["prompt"] == 1.0
    f = prompt_facts(p, p["objects"][:2])
    assert f["count"] == 0.0 and f["shape"] == 0.0 and f["prompt"] == 0.0
    f = prompt_facts(p, [*p["objects"][:2], dict(p["objects"][2], colour="red")])
    assert f["count"] == 1.0 and f["colour"] == 0.0
    empty = count(0)
    assert prompt_facts(empty, [])["prompt"] == 1.0
    f = prompt_facts(empty, [obj()])
    assert f["count"] == 0.0 and f["prompt"] == 0.0 and math.isnan(f["shape"])


def test_summary_intervals_are_seeded_and_cover_the_mean():
    rng = np.random.default_rng(0)
    prompts = [single(colour="red" if i % 4 == 0 else "green", shape="triangle") for i in range(200)]
    facts = [{"prompt": float(rng.random() < 0.7), **{k: 1.0 for k in FACTS}} for _ in prompts]
    for f in facts:
        f["relation"] = float("nan")
    s1 = summarise(facts, prompts, holdout=[["red", "triangle"]], n_boot=500, seed=3)
    s2 = summarise(facts, prompts, holdout=[["red", "triangle"]], n_boot=500, seed=3)
    s3 = summarise(facts, prompts, holdout=[["red", "triangle"]], n_boot=500, seed=4)
    assert s1 == s2 and s1 != s3
    held_out = [is_holdout(p, [["red", "triangle"]]) for p in prompts]
    test = [f["prompt"] for f, h in zip(facts, held_out) if not h]  # prompt_acc: the test prompts alone
    mean = np.mean(test)
    assert s1["prompt_acc"] == pytest.approx(mean)
    assert s1["prompt_acc_lo"] < mean < s1["prompt_acc_hi"]
    assert 0.09 < s1["prompt_acc_hi"] - s1["prompt_acc_lo"] < 0.19  # ≈ 2·1.96·sqrt(.7·.3/150) = 0.147
    assert "attr_acc_relation" not in s1  # nothing states a relation: left out, not NaN
    assert s1["attr_acc_shape"] == s1["attr_acc_shape_lo"] == s1["attr_acc_shape_hi"] == 1.0
    held = [f["prompt"] for f, h in zip(facts, held_out) if h]
    assert len(held) == 50 and s1["holdout_prompt_acc"] == pytest.approx(np.mean(held))
    # the compositional-generalisation gap, with its own interval
    assert s1["holdout_gap"] == pytest.approx(np.mean(held) - mean)
    assert s1["holdout_gap_lo"] < s1["holdout_gap"] < s1["holdout_gap_hi"]
    assert s1["task_acc_single"] == s1["prompt_acc"] and "task_acc_two" not in s1


def test_image_and_prompt_counts_must_match(tiny_data_cfg):
    images, attrs, _ = real_renders(tiny_data_cfg, "test", 4)
    with pytest.raises(ValueError, match="one image per prompt"):
        prompt_following(AttributeProbe(32, ProbeConfig(width=4)), images, attrs[:3])


# ---------------------------------------------------------------------------------------------- with the trained probe


def test_real_renders_follow_their_prompts_and_shuffled_captions_do_not(trained_probe, probe_data_cfg):
    images, attrs, _ = real_renders(probe_data_cfg, "test", 600, start=1000)
    held_images, held_attrs, _ = real_renders(probe_data_cfg, "holdout", 200, start=1000)
    images, attrs = np.concatenate([images, held_images]), attrs + held_attrs
    scores = prompt_following(trained_probe, images, attrs, holdout=probe_data_cfg.holdout, n_boot=200, seed=0)
    assert scores["prompt_acc"] >= 0.97, scores
    assert scores["holdout_prompt_acc"] >= 0.97, scores
    for fact in FACTS:
        assert scores[f"attr_acc_{fact}"] >= 0.99, (fact, scores)
    assert scores["prompt_acc_lo"] <= scores["prompt_acc"] <= scores["prompt_acc_hi"]

    shuffled = [attrs[i] for i in np.random.default_rng(0).permutation(len(attrs))]
    chance = prompt_following(trained_probe, images, shuffled, n_boot=0)
    assert chance["prompt_acc"] < 0.03, chance  # a random caption's facts (shape·colour·size·place) rarely all hold
    assert chance["attr_acc_count"] < 0.75  # single vs two objects: right about half the time

    again = prompt_following(trained_probe, images, attrs, holdout=probe_data_cfg.holdout, n_boot=200, seed=0)
    assert again == scores  # same seed, same numbers
    inst = alignment_instruments(trained_probe, attrs, probe_data_cfg.holdout, n_boot=200)
    assert inst["extractor"] == f"probe:{trained_probe.key}" and inst["prompts"] == 800
    assert inst["prompts_holdout"] == 200


# ---------------------------------------------------------------------------------------------- CLIP score (optional)


def test_clip_score_mechanics(tiny_clip, probe_data_cfg):
    import torch

    from synthscale.evaluate.reference import ClipScorer, load_clip

    images, _, captions = real_renders(probe_data_cfg, "test", 6)
    scorer = ClipScorer(tiny_clip, batch_size=4)
    got = scorer.score(images, captions)
    # the same number by hand: 100 · cosine of the projected embeddings, mean over pairs, floored at 0
    model, processor = load_clip(tiny_clip)
    with torch.no_grad():
        pixels = processor(images=list(torch.from_numpy(images).permute(0, 3, 1, 2)), return_tensors="pt")[
            "pixel_values"
        ]
        text = processor(text=captions, return_tensors="pt", padding=True)
        a = model.get_image_features(pixels)
        b = model.get_text_features(text["input_ids"], text["attention_mask"])
    want = max(0.0, float((100 * torch.cosine_similarity(a, b, dim=-1)).mean()))
    assert got == pytest.approx(want, abs=1e-3)
    assert scorer.score(images, captions) == got  # deterministic
    assert (
        scorer.instruments()["clip_model"].startswith(f"clip:{tiny_clip.name}:") and scorer.instruments()["clip_n"] == 6
    )
    with pytest.raises(ValueError, match="one caption per image"):
        scorer.score(images, captions[:2])


def test_clip_needs_a_local_model(tmp_path):
    from synthscale.evaluate.reference import load_clip

    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        load_clip(tmp_path / "nowhere")
