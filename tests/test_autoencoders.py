import json
import math

import numpy as np
import pytest
import torch

from synthscale.autoencoders import (
    CheckpointError,
    ImageSizeError,
    build_autoencoder,
    load_autoencoder,
    save_autoencoder,
    to_tensor,
    to_uint8,
)
from synthscale.autoencoders.fsq import FSQ
from synthscale.autoencoders.lfq import LFQ
from synthscale.autoencoders.train import evaluate_autoencoder, psnr_of_mse, train_autoencoder
from synthscale.cli import main
from synthscale.config import AutoencoderConfig, ConfigError, DataConfig, load

WIDTHS = {2: [4, 8], 4: [4, 8, 8], 8: [4, 8, 8, 8]}


def tiny_cfg(kind="kl", f=4, **kw) -> AutoencoderConfig:
    channels = {"kl": 4, "lfq": 6, "fsq": 3}[kind]
    cfg = AutoencoderConfig(
        name=f"tiny-{kind}-f{f}",
        kind=kind,
        downsample=f,
        latent_channels=channels,
        widths=WIDTHS[f],
        fsq_levels=[5, 4, 3],
        data=DataConfig(size=64, val_size=8, test_size=16, holdout_size=8),
    )
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup = 3, 8, 1
    for k, v in kw.items():
        setattr(cfg.train if hasattr(cfg.train, k) else cfg, k, v)
    return cfg


def images(n=2, res=32, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("f", [2, 4, 8])
@pytest.mark.parametrize("kind", ["kl", "lfq", "fsq"])
def test_encode_decode_shapes(kind, f):
    torch.manual_seed(0)
    ae = build_autoencoder(tiny_cfg(kind, f)).eval()
    spec = ae.latent_spec(32)
    assert (spec.height, spec.width) == (32 // f, 32 // f)
    enc = ae.encode_for_cache(images())
    if kind == "kl":
        assert spec.kind == "continuous" and spec.channels == 4 and spec.vocab_size is None
        assert set(enc) == {"mean", "logvar"} and enc["mean"].shape == enc["logvar"].shape == (2, 4, 32 // f, 32 // f)
        x = torch.randn(2, 4, 32 // f, 32 // f)
    else:
        assert spec.kind == "discrete" and spec.vocab_size == {"lfq": 64, "fsq": 60}[kind]
        tokens = enc["tokens"]
        assert tokens.dtype == torch.int64 and tokens.shape == (2, 32 // f, 32 // f)
        assert 0 <= tokens.min() and tokens.max() < spec.vocab_size
        x = tokens
    out = ae.decode(x)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1


def test_lfq_indices_round_trip_and_codes_are_signs():
    q = LFQ(bits=5)
    z = torch.randn(3, 5, 4, 4)
    idx = q.indices(z)
    assert torch.equal(q.codes(idx), torch.where(z > 0, 1.0, -1.0))
    every = torch.arange(32).view(1, 4, 8)
    assert torch.equal(q.indices(q.codes(every)), every)  # indices → codes → indices is the identity
    zq, idx2, aux = q(z)
    assert torch.equal(idx2, idx) and torch.equal(zq, q.codes(idx))  # straight-through forward is the code
    assert set(aux) == {"entropy", "commit"}


def test_lfq_entropy_terms_match_the_explicit_codebook_softmax():
    q = LFQ(bits=3, temperature=0.5, diversity=1.0)
    z = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    codes = q.codes(torch.arange(8).view(1, 2, 4)).permute(0, 2, 3, 1).reshape(8, 3)  # [K, c]
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    probs = torch.softmax(-torch.cdist(flat, codes).pow(2) / 0.5, dim=1)  # [N, K]
    token_h = -(probs * probs.log()).sum(1).mean()
    avg = probs.mean(0)
    batch_h = -(avg * avg.log()).sum()
    _, _, aux = q(z)
    assert torch.allclose(aux["entropy"], token_h - batch_h, atol=1e-5)


def test_fsq_indices_round_trip_and_levels():
    q = FSQ([8, 5, 5, 5])
    assert q.vocab_size == 1000
    every = torch.arange(1000).view(1, 10, 100)
    codes = q.codes(every)
    assert codes.min() >= -1 and codes.max() <= 1
    z = torch.randn(2, 4, 4, 4) * 3
    zq, idx, _ = q(z)
    assert torch.allclose(zq, q.codes(idx))  # the forward code is what the indices decode to
    assert torch.equal(q.indices(z), idx)
    counts = [len(torch.unique(c)) for c in codes[0]]
    assert counts == [8, 5, 5, 5]


def test_fsq_every_index_survives_codes_to_indices():
    q = FSQ([8, 5, 3])
    every = torch.arange(q.vocab_size).view(1, 1, -1)
    codes = q.codes(every)  # [1, 3, 1, K] in [-1, 1]
    # a pre-activation whose quantised value is the code: atanh of the bounded value
    bounded = codes * q.half_width + q.offset
    z = torch.atanh((bounded / q.half_l).clamp(-0.999999, 0.999999)) - q.shift
    assert torch.equal(q.indices(z), every)


def test_fsq_commit_is_zero_on_levels_and_pulls_values_to_the_nearest_level():
    q = FSQ([8, 5, 3])
    every = torch.arange(q.vocab_size).view(1, 1, -1)
    bounded = q.codes(every) * q.half_width + q.offset
    on_levels = torch.atanh((bounded / q.half_l).clamp(-0.999999, 0.999999)) - q.shift
    assert q(on_levels)[2]["fsq_commit"].item() < 1e-8
    z = (on_levels + 0.05 * torch.randn(on_levels.shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    commit = q(z)[2]["fsq_commit"]
    assert commit.item() > 1e-6
    commit.backward()
    with torch.no_grad():  # one small step down the gradient: the same codes, closer to their levels
        stepped = z - 0.5 * z.grad / z.grad.norm()
        assert torch.equal(q.indices(stepped), q.indices(z))
        assert q(stepped)[2]["fsq_commit"] < commit


def test_fsq_commit_weight_enters_the_training_loss_only_when_set():
    from synthscale.autoencoders.train import objective

    torch.manual_seed(0)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    plain = build_autoencoder(tiny_cfg("fsq", 4))
    weighted_cfg = tiny_cfg("fsq", 4)
    weighted_cfg.fsq_commit_weight = 0.5
    weighted = build_autoencoder(weighted_cfg)
    weighted.load_state_dict(plain.state_dict())
    total_plain, parts = objective(plain, images, torch.Generator().manual_seed(0))
    total_weighted, _ = objective(weighted, images, torch.Generator().manual_seed(0))
    assert torch.isclose(total_plain, torch.tensor(parts["recon"]))  # weight 0: plain FSQ, as before
    assert torch.isclose(total_weighted - total_plain, torch.tensor(0.5 * parts["fsq_commit"]), rtol=1e-4)


@pytest.mark.parametrize("kind", ["lfq", "fsq"])
def test_decode_of_indices_is_deterministic(kind):
    torch.manual_seed(0)
    ae = build_autoencoder(tiny_cfg(kind, 4)).eval()
    tokens = ae.encode_for_cache(images())["tokens"]
    assert torch.equal(ae.decode(tokens), ae.decode(tokens.clone()))
    assert torch.equal(ae.encode_for_cache(images())["tokens"], tokens)


def test_wrong_inputs_are_clear_errors():
    torch.manual_seed(0)
    ae = build_autoencoder(tiny_cfg("kl", 4)).eval()
    with pytest.raises(ImageSizeError, match="32×32"):
        ae.encode_for_cache(images(res=64))
    with pytest.raises(ImageSizeError, match="32×32"):
        ae.latent_spec(16)
    with pytest.raises(ImageSizeError, match=r"\[B, 3, H, W\]"):
        ae.encode_for_cache(torch.zeros(2, 32, 32, 3))
    with pytest.raises(ImageSizeError, match="to_tensor"):
        ae.encode_for_cache(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ImageSizeError, match=r"\[-1, 1\]"):
        ae.encode_for_cache(torch.full((2, 3, 32, 32), 255.0))
    lfq = build_autoencoder(tiny_cfg("lfq", 4)).eval()
    with pytest.raises(ImageSizeError, match="64 codes"):
        lfq.decode(torch.full((1, 8, 8), 64))


def test_bad_configs_are_clear_errors():
    with pytest.raises(ConfigError, match="needs 3 widths"):
        build_autoencoder(AutoencoderConfig(downsample=4, widths=[8, 8]))
    with pytest.raises(ConfigError, match="power of two"):
        build_autoencoder(AutoencoderConfig(downsample=3))
    with pytest.raises(ConfigError, match="len\\(fsq_levels\\)=4"):
        build_autoencoder(AutoencoderConfig(kind="fsq", latent_channels=3, downsample=8, widths=[8, 8, 8, 8]))


def test_image_conversion_round_trip():
    u8 = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    x = to_tensor(u8)
    assert x.shape == (3, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), u8)


def test_save_load_round_trip_and_checkpoint_errors(tmp_path):
    torch.manual_seed(0)
    ae = build_autoencoder(tiny_cfg("lfq", 4)).eval()
    save_autoencoder(ae, tmp_path / "ae")
    back = load_autoencoder(tmp_path / "ae")
    assert not back.training and back.name == ae.name and back.weights_hash == ae.weights_hash
    x = images()
    assert torch.equal(back.encode_for_cache(x)["tokens"], ae.encode_for_cache(x)["tokens"])

    with pytest.raises(CheckpointError, match="not a folder"):
        load_autoencoder(tmp_path / "missing")
    weights = tmp_path / "ae" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # a torn write
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_autoencoder(tmp_path / "ae")
    weights.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_autoencoder(tmp_path / "ae")
    # weights of another architecture beside this config
    other = build_autoencoder(tiny_cfg("lfq", 8))
    save_autoencoder(other, tmp_path / "other")
    weights.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_autoencoder(tmp_path / "ae")
    # same shapes, other values (another training): the recorded hash catches it
    torch.manual_seed(1)
    save_autoencoder(build_autoencoder(tiny_cfg("lfq", 4)), tmp_path / "twin")
    weights.write_bytes((tmp_path / "twin" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="weights hash"):
        load_autoencoder(tmp_path / "ae")
    (tmp_path / "ae" / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        load_autoencoder(tmp_path / "ae")


def test_training_is_deterministic_for_a_seed(tmp_path):
    a = train_autoencoder(tiny_cfg("kl", 4), tmp_path / "a", progress=False)
    b = train_autoencoder(tiny_cfg("kl", 4), tmp_path / "b", progress=False)
    c = train_autoencoder(tiny_cfg("kl", 4, seed=1), tmp_path / "c", progress=False)
    assert a["weights_hash"] == b["weights_hash"] != c["weights_hash"]
    assert a["history"] == b["history"]
    ae = load_autoencoder(tmp_path / "a")
    assert ae.scale == pytest.approx(a["latent_scale"]) and ae.scale > 0


def test_training_reduces_the_reconstruction_loss(tmp_path):
    s = train_autoencoder(tiny_cfg("fsq", 4, steps=40, lr=3e-3, warmup=5), tmp_path / "fsq", progress=False)
    first, last = s["history"][0]["recon"], s["history"][-1]["recon"]
    assert last < 0.5 * first


def test_evaluate_writes_metrics_and_grid(tmp_path):
    train_autoencoder(tiny_cfg("lfq", 8), tmp_path / "ae", progress=False)
    r = evaluate_autoencoder(tmp_path / "ae", limit=8, progress=False)
    m = r["metrics"]
    assert set(m) == {"psnr", "psnr_pooled", "ssim", "l1", "codebook_usage", "perplexity"}
    assert m["psnr_pooled"] <= m["psnr"] + 1e-9  # Jensen: the mean of per-image PSNRs is the larger
    assert math.isfinite(m["psnr"]) and 0 < m["codebook_usage"] <= 1 and 1 <= m["perplexity"] <= 64
    assert r["instruments"]["n"] == 8 and r["instruments"]["split"] == "test"
    assert json.loads((tmp_path / "ae" / "eval.json").read_text())["metrics"] == m
    assert (tmp_path / "ae" / "reconstructions.png").stat().st_size > 0
    assert psnr_of_mse(1e-2) == pytest.approx(20.0)


def test_cli_train_eval_and_bad_override(tmp_path, capsys):
    sets = [
        "--set",
        "widths=[4,8,8]",
        "--set",
        "train.steps=2",
        "--set",
        "train.batch_size=4",
        "--set",
        "data.size=16",
        "--set",
        "data.test_size=8",
        "--set",
        "train.scale_items=16",
    ]
    out = tmp_path / "kl"
    assert main(["autoencoder", "train", "--out", str(out), "--quiet", "--threads", "1", *sets]) == 0
    assert "trained kl-f4c4" in capsys.readouterr().out
    assert main(["autoencoder", "eval", str(out), "--json", "--limit", "4", "--no-grid"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["name"] == "kl-f4c4" and r["latent"]["kind"] == "continuous"
    root = tmp_path / "caches"
    assert main(["autoencoder", "cache", str(out), "--root", str(root), "--set", "size=12", "--quiet"]) == 0
    assert "12 train items of kl-f4c4" in capsys.readouterr().out
    assert len(list(root.glob("*/cache.json"))) == 1
    assert main(["autoencoder", "train", "--out", str(tmp_path / "x"), "--set", "train.stpes=2"]) == 2
    assert "stpes" in capsys.readouterr().err
    assert main(["autoencoder", "eval", str(tmp_path / "nothing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_shipped_configs_load_and_match_their_names():
    from pathlib import Path

    root = Path(__file__).parents[1] / "configs" / "autoencoders"
    names = {"kl-f4c4", "kl-f4c8", "kl-f4c16", "lfq-f8", "fsq-f8", "lfq-f4"}
    assert names <= {p.stem for p in root.glob("*.yaml")}
    tokens = {"lfq-f8": 16, "fsq-f8": 16, "lfq-f4": 64}
    for name in names:
        cfg = load(AutoencoderConfig, root / f"{name}.yaml")
        assert cfg.name == name
        with torch.random.fork_rng():
            spec = build_autoencoder(cfg).latent_spec(cfg.data.resolution)
        if name in tokens:
            assert spec.kind == "discrete" and spec.tokens == tokens[name]
        else:
            assert spec.kind == "continuous" and spec.channels == int(name.split("c")[-1])


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_upsample_training_form_is_the_plain_form_up_to_rounding(layout):
    """Training folds nearest ×2 + 3×3 conv into one stride-2 transposed convolution: same outputs and gradients."""
    from synthscale.autoencoders.conv import Upsample

    torch.manual_seed(0)
    up = Upsample(6, 5)
    x = torch.randn(3, 6, 5, 7)  # not square: the fold holds for any size
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn(3, 5, 10, 14)
    outs = {}
    for mode in (True, False):  # training (folded), evaluation (plain)
        up.train(mode)
        y = up(x)
        outs[mode] = (y.detach(), *torch.autograd.grad(y, (x, up.conv.weight, up.conv.bias), grad))
    for folded, plain in zip(outs[True], outs[False]):
        assert folded.shape == plain.shape
        torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-5)


def test_upsample_training_form_skips_the_upsampled_tensor():
    """The folded form does 16 instead of 36 multiply-adds per input pixel and channel pair (why it is faster)."""
    from torch.utils.flop_counter import FlopCounterMode

    from synthscale.autoencoders.conv import Upsample

    up, x = Upsample(8, 4), torch.randn(2, 8, 5, 5)
    counts = {}
    for mode in (True, False):
        up.train(mode)
        with FlopCounterMode(display=False) as counter:
            up(x)
        counts[mode] = counter.get_total_flops()
    assert counts[False] == 2 * 9 * 8 * 4 * (2 * 10 * 10)  # 3×3 conv on the upsampled 10×10
    fold = 2 * 8 * 4 * (4 * 3 * 3 + 4 * 3 * 4)  # the kernel fold: [4, 3] @ [3, 3] @ [3, 4] per channel pair
    assert counts[True] == 2 * 16 * 8 * 4 * (2 * 5 * 5) + fold  # 4×4 taps per input pixel of 5×5


@pytest.mark.parametrize("kind", ["kl", "fsq"])
def test_trainer_steps_compute_the_previous_trainers_losses(kind):
    """The trainer's fast path (folded upsampling, fused AdamW, in-place residual sums) takes the same steps as the
    plain one (evaluation-form upsampling, unfused AdamW) up to float rounding."""
    from synthscale.autoencoders.conv import Upsample
    from synthscale.autoencoders.train import build_optimizer, train_step

    cfg = tiny_cfg(kind, 4, lr=3e-3, foreground_weight=30.0, fsq_commit_weight=0.1)
    losses = {}
    for path in ("fast", "plain"):
        torch.manual_seed(0)
        model = build_autoencoder(cfg).train()
        if path == "fast":
            opt = build_optimizer(model, cfg.train, torch.device("cpu"))
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(0.9, 0.99), weight_decay=0.0)
            for m in model.modules():
                if isinstance(m, Upsample):
                    m.train(False)
        noise = torch.Generator().manual_seed(0)
        losses[path] = [
            train_step(model, opt, images(8, seed=step), step, cfg.train, noise)[0] for step in range(cfg.train.steps)
        ]
    assert losses["fast"] == pytest.approx(losses["plain"], rel=1e-5)
    assert len(set(losses["fast"])) == len(losses["fast"])  # the steps changed the model
