import json

import pytest
import torch

from synthscale.cli import main
from synthscale.compute import flops as C
from synthscale.compute.flops import count_flops, param_counts
from synthscale.config import ModelConfig, ObjectiveConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.objectives import get_objective

TEXT = TextSpec(vocab_size=40, max_length=8)
B = 2


def setup(name, size, side, patch=1, **cfg):
    torch.manual_seed(0)
    obj = get_objective(ObjectiveConfig.of(name, **cfg))
    model_cfg = ModelConfig(size=size, patch_size=patch, text_layers=2)
    if obj.latent == "continuous":
        latent = LatentSpec("continuous", 4, side, side)
        x = torch.randn(B, 4, side, side)
    else:
        latent = LatentSpec("discrete", 3, side, side, vocab_size=64, levels=(8, 2, 4))
        x = torch.randint(0, 64, (B, side, side))
    text = torch.randint(3, 40, (B, 8))
    text[0, 5:] = 0
    return obj, obj.build_model(model_cfg, latent, TEXT), model_cfg, latent, x, text


def close(measured, analytic, tol=0.01):
    return abs(measured - analytic) <= tol * analytic


CASES = [
    (name, size, side, patch)
    for name in ("flow", "masked", "autoregressive")
    for size in ("2x64", "4x128")
    for side, patch in ((4, 1), (8, 1))
] + [("flow", "2x64", 8, 2)]
CASES = [(*case, {}) for case in CASES] + [
    (name, size, side, 1, {"factorised": True})  # per-channel level embeddings and softmax heads
    for name in ("masked", "autoregressive")
    for size in ("2x64", "4x128")
    for side in (4, 8)
]


@pytest.mark.parametrize("name,size,side,patch,cfg", CASES)
def test_analytic_flops_equal_the_counter(name, size, side, patch, cfg):
    """Forward and a full training step (forward + backward), 16 and 64 image tokens, two sizes."""
    obj, model, model_cfg, latent, x, text = setup(name, size, side, patch, **cfg)
    forward = count_flops(lambda: obj.loss(model, x, text, torch.Generator().manual_seed(0)))
    assert close(forward, B * obj.forward_flops(model_cfg, latent, TEXT).total, 0.001)

    def step():
        obj.loss(model, x, text, torch.Generator().manual_seed(0)).backward()

    assert close(count_flops(step), obj.train_flops(model_cfg, latent, TEXT, B))


SAMPLING = [
    ("flow", 3, 1.0, {}),
    ("flow", 3, 2.5, {}),
    ("flow", 3, 2.5, {"sampler": "heun"}),
    ("masked", 4, 1.0, {}),
    ("masked", 4, 2.5, {}),
    ("autoregressive", 16, 1.0, {}),
    ("autoregressive", 16, 2.5, {}),
    ("masked", 4, 1.0, {"factorised": True}),
    ("masked", 4, 2.5, {"factorised": True}),
    ("autoregressive", 16, 1.0, {"factorised": True}),
    ("autoregressive", 16, 2.5, {"factorised": True}),
]


@pytest.mark.parametrize("name,steps,cfg_scale,cfg", SAMPLING)
def test_sampling_flops_equal_the_counter(name, steps, cfg_scale, cfg):
    obj, model, model_cfg, latent, _, text = setup(name, "2x64", 4, **cfg)
    measured = count_flops(lambda: obj.sample(model, text, steps, cfg_scale, torch.Generator().manual_seed(0)))
    shared = {"batch": B} if name == "autoregressive" else {}  # its null caption's prefill serves the batch
    assert close(measured, B * obj.sample_flops(model_cfg, latent, TEXT, steps, cfg_scale, **shared), 0.001)


@pytest.mark.parametrize("factorised", [False, True])
def test_kv_cache_counts_per_position(factorised):
    obj, model, model_cfg, latent, _, text = setup("autoregressive", "2x64", 4, factorised=factorised)
    recompute = count_flops(lambda: obj.sample(model, text, 16, 1.0, torch.Generator(), kv_cache=False))
    assert close(recompute, B * obj.sample_flops(model_cfg, latent, TEXT, 16, 1.0, kv_cache=False), 0.001)
    assert obj.sample_flops(model_cfg, latent, TEXT, 16, 1.0) < recompute / B / 3


def test_cfg_doubles_the_generator_not_the_text_encoder():
    obj = get_objective("masked")
    args = (ModelConfig(size="4x128"), LatentSpec("discrete", 10, 8, 8, vocab_size=1024), TEXT)
    plain, guided = obj.sample_flops_split(*args, 8, 1.0), obj.sample_flops_split(*args, 8, 3.0)
    assert guided.generator == 2 * plain.generator and guided.text_encoder == plain.text_encoder > 0
    fwd = obj.forward_flops(*args)
    assert plain.generator == 8 * fwd.generator  # K steps of the full forward
    assert obj.train_flops(*args, batch=32) == 3 * 32 * fwd.total


def test_dit_published_gflops_are_reproduced():
    """DiT (Peebles & Xie, Table 4) reports MACs ("Gflops") at 256×256 px, patch 2 (256 tokens, 4 → 8 channels
    out): S/2 6.06, B/2 23.01, L/2 80.71, XL/2 118.64. Same counting rules, same numbers."""
    from synthscale.model.sizes import get_size
    from synthscale.objectives.flow import FREQ_DIM

    for name, published in (("S", 6.06), ("B", 23.01), ("L", 80.71), ("XL", 118.64)):
        s = get_size(name)
        flops = (
            C.linear(256, 4 * 4, s.width)
            + C.linear(1, FREQ_DIM, s.width)
            + C.linear(1, s.width, s.width)
            + C.transformer(256, 256, s.width, s.depth, adaln=True)
            + C.linear(256, s.width, 8 * 4)
        )
        assert close(flops / 2 / 1e9, published), (name, flops / 2e9)


@pytest.mark.parametrize(
    "name,cfg",
    [("flow", {}), ("masked", {}), ("autoregressive", {}), ("masked", {"factorised": True})],
)
def test_param_counts(name, cfg):
    obj, model, model_cfg, latent, _, _ = setup(name, "2x64", 4, **cfg)
    counts = param_counts(model)
    assert obj.param_counts(model_cfg, latent, TEXT) == counts  # built on the meta device
    tables = [model.text_encoder.tok, model.text_encoder.pos, model.null, model.pos]
    if name != "flow":  # flow embeds patches with a matmul, the others look up ids
        tables += [model.embed.table if cfg else model.embed]
    assert counts["total"] - counts["non_embedding"] == sum(t.weight.numel() for t in tables)


def test_flops_cli_table_and_json(capsys):
    assert main(["flops", "--size", "B", "--objective", "flow", "--tokens", "256", "--text-tokens", "32"]) == 0
    out = capsys.readouterr().out
    assert "size B" in out and "sample 20 steps, CFG" in out and "non-embedding" in out  # the steps grid
    assert (
        main(["flops", "--size", "B", "--objective", "flow", "--tokens", "256", "--text-tokens", "32", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [s["steps"] for s in report["sample"]] == [4, 4, 10, 10, 20, 20]
    first, second = report["sample"][0], report["sample"][1]
    assert second["generator"] == 2 * first["generator"] and report["forward"]["macs"] * 2 == report["forward"]["total"]
    assert report["train_example"]["total"] == 3 * report["forward"]["total"]
    assert main(["flops", "--objective", "autoregressive", "--tokens", "64", "--json"]) == 0
    assert [s["steps"] for s in json.loads(capsys.readouterr().out)["sample"]] == [64, 64]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--size", "M"], "valid sizes"),
        (["--objective", "gan"], "valid objectives"),
        (["--tokens", "10"], "square"),
        (["--text-tokens", "0"], "--text-tokens"),
    ],
)
def test_flops_cli_bad_input(argv, needle, capsys):
    assert main(["flops", *argv]) == 2
    assert needle in capsys.readouterr().err


def _conv_decoder_flops_by_hand(widths: list[int], blocks: int, c_latent: int, side: int) -> int:
    """conv/Decoder counted layer by layer: 2 FLOPs per MAC of every 3×3 convolution (no 1×1 skips: the width
    changes only in the upsampling convolutions)."""

    def conv3(c_in: int, c_out: int, s: int) -> int:
        return 2 * 9 * c_in * c_out * s * s

    rev = list(reversed(widths))
    total = conv3(c_latent, rev[0], side)  # conv_in
    for i, w in enumerate(rev):
        s = side * 2**i
        if i:
            total += conv3(rev[i - 1], w, s)  # Upsample: nearest ×2 then a 3×3 conv
        total += blocks * 2 * conv3(w, w, s)  # ResBlock: two 3×3 convs
    return total + conv3(rev[-1], 3, side * 2 ** (len(rev) - 1))  # conv_out


@pytest.mark.parametrize("name", ["kl-f4c4", "fsq-f4", "lfq-f8"])
def test_decoder_flops_equal_a_hand_count(name):
    from pathlib import Path

    from synthscale.autoencoders import build_autoencoder
    from synthscale.config import AutoencoderConfig, load

    cfg = load(AutoencoderConfig, Path(__file__).parents[1] / "configs" / "autoencoders" / f"{name}.yaml")
    ae = build_autoencoder(cfg).eval()
    spec = ae.latent_spec(cfg.data.resolution)
    c_latent = spec.channels if spec.kind == "continuous" else ae.quantizer.dim
    expected = _conv_decoder_flops_by_hand(cfg.widths, cfg.blocks, c_latent, spec.height)
    assert C.decode_flops(ae) == expected
    if name == "kl-f4c4":  # the default study's diffusion decoder: ≈ 48 MFLOPs per 32×32 image
        assert expected == 48_365_568
