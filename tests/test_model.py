import pytest
import torch

from synthscale.config import ConfigError, ModelConfig
from synthscale.data.latents import TextSpec
from synthscale.model import SIZES, Network, TextEncoder, Transformer, attention_mask, get_size


def test_size_registry_has_paper_and_cpu_presets():
    assert [(SIZES[n].depth, SIZES[n].width) for n in ("S", "B", "L", "XL")] == [
        (12, 384),
        (12, 768),
        (24, 1024),
        (28, 1152),
    ]
    for name in ("2x64", "4x128", "6x192", "8x256"):
        s = get_size(name)
        assert f"{s.depth}x{s.width}" == name and s.heads >= 2 and s.width % s.heads == 0


def test_unknown_size_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown model size 'M'.*4x128"):
        get_size("M")


def test_adaln_zero_blocks_are_identity_at_init():
    torch.manual_seed(0)
    net = Transformer(width=64, depth=3, heads=2, adaln=True)
    x, c = torch.randn(2, 10, 64), torch.randn(2, 64)
    for block in net.blocks:
        assert torch.equal(block(x, c=c), x)
    # and the test can fail: once the gates move, the block changes its input
    torch.nn.init.normal_(net.blocks[0].ada.weight, std=0.1)
    assert not torch.allclose(net.blocks[0](x, c=c), x)


def test_adaln_transformer_needs_conditioning():
    with pytest.raises(ValueError, match="conditioning vector c"):
        Transformer(64, 1, 2, adaln=True)(torch.randn(1, 3, 64))


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=20, max_length=8, width=64, depth=2, heads=2, pad_id=0)
    tokens = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0]])
    h, valid = enc(tokens)
    assert valid.tolist() == [[True] * 3 + [False] * 5]
    with torch.no_grad():
        enc.pos.weight[3:] += 10.0  # only pad positions change
    h2, _ = enc(tokens)
    torch.testing.assert_close(h2[:, :3], h[:, :3])


def test_empty_caption_gives_finite_features():
    enc = TextEncoder(20, 6, 64, 2, 2)
    h, _ = enc(torch.zeros(2, 6, dtype=torch.long))
    assert torch.isfinite(h).all()


def test_prefix_causal_mask_pattern():
    valid = torch.tensor([[True, True, False]])  # caption of 2 tokens + 1 pad, then 3 image positions
    m = attention_mask(valid, 6, causal=True)[0, 0].int().tolist()
    assert m == [
        [1, 1, 0, 0, 0, 0],  # caption sees the caption only
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],  # image position 0 sees the caption and itself
        [1, 1, 0, 1, 1, 0],
        [1, 1, 0, 1, 1, 1],
    ]
    bi = attention_mask(valid, 6, causal=False)[0, 0]
    assert bi.all(0).tolist() == [True, True, False, True, True, True]
    # decoding rows are the matching rows of the full mask
    step = attention_mask(valid, 5, causal=True, q_start=4)[0, 0]
    assert step.int().tolist() == [m[4][:5]]


def test_kv_cache_decoding_matches_full_forward():
    torch.manual_seed(0)
    net = Network(ModelConfig(size="2x64"), TextSpec(vocab_size=20, max_length=4), image_tokens=6)
    tokens = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 8]])
    prefix, valid = net.encode_text(tokens)
    x = torch.randn(2, 6, 64)
    seq = torch.cat([prefix, x], 1)
    full = net.backbone(seq, attention_mask(valid, 10, causal=True))
    cache = net.backbone.new_cache(10)
    parts = [net.backbone(seq[:, :5], attention_mask(valid, 5, causal=True), cache=cache)]
    for i in range(5, 10):
        parts.append(net.backbone(seq[:, i : i + 1], attention_mask(valid, i + 1, causal=True, q_start=i), cache=cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="KV cache holds 10"):
        net.backbone(seq[:, :1], attention_mask(valid, 11, causal=True, q_start=10), cache=cache)


def test_null_caption_replaces_dropped_rows_only():
    torch.manual_seed(0)
    net = Network(ModelConfig(size="2x64"), TextSpec(vocab_size=20, max_length=4), image_tokens=4)
    tokens = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 0]])
    h, valid = net.encode_text(tokens)
    hd, vd = net.encode_text(tokens, drop=torch.tensor([False, True]))
    assert torch.equal(hd[0], h[0]) and torch.equal(vd[0], valid[0])
    assert torch.equal(hd[1], net.null.weight) and vd[1].all()


def test_network_takes_a_caption_encoder_of_the_same_call():
    from synthscale.config import ObjectiveConfig
    from synthscale.data.latents import LatentSpec
    from synthscale.objectives import get_objective

    torch.manual_seed(0)
    own = TextEncoder(vocab_size=20, max_length=4, width=64, depth=1, heads=2)
    obj = get_objective(ObjectiveConfig.of("masked"))
    model = obj.build_model(
        ModelConfig(size="2x64"),
        LatentSpec("discrete", 4, 2, 2, vocab_size=16),
        TextSpec(vocab_size=20, max_length=4),
        text_encoder=own,
    )
    assert model.text_encoder is own and len(own.transformer.blocks) == 1
    tokens = torch.tensor([[3, 4, 0, 0]])
    torch.testing.assert_close(model.encode_text(tokens)[0], own(tokens)[0])


def test_attention_splits_qkv_like_three_selects():
    """q, k, v by unbind (one stacked gradient) compute what the three selects of the QKV output did."""
    import torch.nn.functional as F

    from synthscale.model.transformer import Attention, _rms

    torch.manual_seed(0)
    attn = Attention(64, 2)
    x = torch.randn(3, 7, 64, requires_grad=True)
    mask = torch.rand(3, 1, 7, 7, generator=torch.Generator().manual_seed(1)) < 0.8
    mask[..., 0] = True  # every query sees a key

    def selects(x):
        B, T, D = x.shape
        h = attn.qkv(x).view(B, T, 3, 2, D // 2)
        q, k, v = _rms(attn.q_norm, h[:, :, 0]), _rms(attn.k_norm, h[:, :, 1]), h[:, :, 2]
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return attn.proj(y.transpose(1, 2).reshape(B, T, D))

    params = [x, *attn.parameters()]
    out, ref = attn(x, mask), selects(x)
    w = torch.randn_like(out)
    for g, r in zip(torch.autograd.grad((out * w).sum(), params), torch.autograd.grad((ref * w).sum(), params)):
        assert torch.allclose(g, r, rtol=1e-5, atol=1e-7)
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7)


def test_cpu_rms_norm_backward_is_rms_norms():
    """QK-norm's hand-written CPU backward gives F.rms_norm's output and gradients (input and weight), on the
    strided q of a QKV view as the attention passes it."""
    from synthscale.model.transformer import _rms

    norm = torch.nn.RMSNorm(32)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    qkv = torch.randn(4, 9, 3, 2, 32, requires_grad=True)
    g = torch.randn(4, 9, 2, 32)
    out = _rms(norm, qkv.unbind(2)[0])
    ref = torch.nn.functional.rms_norm(qkv.unbind(2)[0], (32,), norm.weight, None)
    got = torch.autograd.grad((out * g).sum(), [qkv, norm.weight])
    want = torch.autograd.grad((ref * g).sum(), [qkv, norm.weight])
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # inference keeps ATen's kernel
        assert torch.equal(
            _rms(norm, qkv.unbind(2)[0]), torch.nn.functional.rms_norm(qkv.unbind(2)[0], (32,), norm.weight)
        )
