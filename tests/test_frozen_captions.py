"""A run with `data.text_encoder`: the generator trains on a frozen pretrained caption encoder (a tiny random
BERT made in the test), counts its FLOPs in the caption-encoder column, checkpoints without its weights, and
reloads only with the same encoder."""

import json
import shutil

import pytest
import torch

from synthscale.compute import flops as C
from synthscale.config import ConfigError, RunConfig, load
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.objectives import get_objective
from synthscale.objectives.base import text_encoder_flops, text_encoder_train_flops
from tests.test_pretrained import bert_dir, transformers  # noqa: F401  (the tiny-BERT fixture)


def run_config(bert_dir):  # noqa: F811 (the imported fixture)
    return load(
        RunConfig,
        None,
        [
            f"data.text_encoder={bert_dir}",
            "data.max_caption_tokens=8",
            "data.size=64",
            "random_latents=continuous:4x4x4",
            "model.size=2x64",
            "objective.name=flow",
            "train.batch_size=8",
            "train.budget_flops=3e8",
            "train.warmup_steps=1",
            "train.checkpoint_every=50",
        ],
    )


def test_frozen_caption_encoder_flops_columns():
    obj = get_objective("masked")
    cfg = load(RunConfig, None, ["model.size=2x64"]).model
    latent, learned = LatentSpec("discrete", 6, 4, 4, vocab_size=64), TextSpec(40, 8)
    frozen = TextSpec(40, 8, frozen_flops=10_000, frozen_width=16)
    projection = C.linear(8, 16, 64)
    assert text_encoder_flops(cfg, frozen) == 10_000 + projection
    assert text_encoder_train_flops(cfg, frozen) == 10_000 + 3 * projection  # forward only for the frozen part
    assert text_encoder_train_flops(cfg, learned) == 3 * text_encoder_flops(cfg, learned)
    fwd = obj.forward_flops(cfg, latent, frozen)
    assert obj.train_flops(cfg, latent, frozen, 4) == 4 * (3 * fwd.generator + 10_000 + 3 * projection)
    assert obj.sample_flops_split(cfg, latent, frozen, 4, 3.0).text_encoder == 10_000 + projection
    # parameters: the projection replaces the learned encoder; the frozen weights are not the network's
    with_learned, with_frozen = obj.param_counts(cfg, latent, learned), obj.param_counts(cfg, latent, frozen)
    enc = obj.build_model(cfg, latent, learned).text_encoder
    assert with_learned["total"] - with_frozen["total"] == sum(p.numel() for p in enc.parameters()) - (16 * 64 + 64)


def test_a_run_trains_and_reloads_with_the_frozen_encoder(bert_dir, tmp_path):  # noqa: F811
    from safetensors import safe_open

    from synthscale.model.pretrained_text import FrozenPrefix, FrozenTextEncoder
    from synthscale.train import load_generator, train

    bert_dir = shutil.copytree(bert_dir, tmp_path / "bert")  # this test rewrites the folder at its end
    run_cfg = run_config(bert_dir)
    summary = train(run_cfg, tmp_path / "run", progress=False)
    assert summary["steps"] >= 2 and summary["final_loss"] == summary["final_loss"]  # finite
    enc = FrozenTextEncoder(bert_dir, 8, width=64)
    projection = C.linear(8, 16, 64)
    text = TextSpec(enc.vocab_size, 8, enc.pad_id, frozen_flops=enc.forward_flops() - projection, frozen_width=16)
    obj = get_objective("flow")
    expected = obj.train_flops(run_cfg.model, LatentSpec("continuous", 4, 4, 4), text, 8)
    assert summary["flops_per_step"] == expected
    assert expected != obj.train_flops(run_cfg.model, LatentSpec("continuous", 4, 4, 4), TextSpec(enc.vocab_size, 8), 8)
    final = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    with safe_open(str(final / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    assert [n for n in names if n.startswith("text_encoder.")] == [
        "text_encoder.encoder.proj.bias",
        "text_encoder.encoder.proj.weight",
    ]
    meta = json.loads((final / "meta.json").read_text())
    assert meta["text_encoder_hash"] == enc.weights_hash and meta["text_spec"]["frozen_width"] == 16

    g = load_generator(tmp_path / "run", weights="ema")
    assert isinstance(g.model.text_encoder, FrozenPrefix) and g.text_spec.frozen_flops == text.frozen_flops
    captions = enc.tokenizer.encode(["a red circle", "a blue square"])
    out = g.objective.sample(g.model, captions, 2, 3.0, torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 4, 4) and torch.isfinite(out).all()

    # another encoder in the same folder: the checkpoint refuses it instead of sampling with the wrong features
    torch.manual_seed(1)
    model = transformers.BertModel.from_pretrained(str(bert_dir))
    for p in model.parameters():
        p.data.add_(0.01)
    model.save_pretrained(bert_dir)
    with pytest.raises(ConfigError, match="trained with caption encoder"):
        load_generator(tmp_path / "run")
