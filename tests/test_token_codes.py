"""Factorised code embeddings and heads (objectives/codes.py): the per-channel softmaxes define a proper
distribution over whole codes, draws follow it, and the digits are the autoencoders' own."""

import math

import pytest
import torch
import torch.nn.functional as F

from synthscale.autoencoders import build_autoencoder
from synthscale.config import AutoencoderConfig, ConfigError, DataConfig, ModelConfig, ObjectiveConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.objectives import get_objective
from synthscale.objectives.codes import LevelEmbedding, TokenCodes

LEVELS = (4, 3, 2)  # unequal, as FSQ's: the smaller channels are padded
SPEC = LatentSpec("discrete", 3, 2, 2, vocab_size=24, levels=LEVELS)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def joint_log_probs(codes: TokenCodes, logits: torch.Tensor) -> torch.Tensor:
    """log p(v) for every code v [..., V], written out from the per-channel softmaxes (channel i: columns
    sum(L_<i) … sum(L_≤i) − 1; v's digit i = v // Π L_<i mod L_i)."""
    out = 0
    start = 0
    for i, n in enumerate(LEVELS):
        logp = logits[..., start : start + n].log_softmax(-1)  # [..., L_i]
        digit = torch.arange(codes.vocab_size) // math.prod(LEVELS[:i]) % n  # [V]
        out = out + logp[..., digit]
        start += n
    return out


def test_factorised_loss_and_log_prob_are_the_code_distribution():
    codes = TokenCodes(SPEC, factorised=True)
    assert codes.width == sum(LEVELS)
    logits = torch.randn(50, sum(LEVELS), generator=gen(0)) * 2
    ids = torch.randint(0, 24, (50,), generator=gen(1))
    joint = joint_log_probs(codes, logits)  # [50, V]
    torch.testing.assert_close(joint.logsumexp(-1), torch.zeros(50), atol=1e-5, rtol=0)  # normalised over codes
    torch.testing.assert_close(codes.nll(logits, ids), F.cross_entropy(joint, ids))  # nats per code
    torch.testing.assert_close(codes.log_prob(logits, ids), joint.gather(-1, ids[:, None])[:, 0])


def test_full_codes_are_the_plain_softmax():
    codes = TokenCodes(SPEC, factorised=False)
    logits, ids = torch.randn(8, 24, generator=gen(0)), torch.randint(0, 24, (8,), generator=gen(1))
    assert codes.width == 24 and not codes.factorised
    assert torch.equal(codes.nll(logits, ids), F.cross_entropy(logits, ids))
    torch.testing.assert_close(codes.log_prob(logits, ids), logits.log_softmax(-1)[torch.arange(8), ids])


def test_factorised_draws_follow_the_code_distribution_and_top_k_is_per_channel():
    codes = TokenCodes(SPEC, factorised=True)
    row = torch.tensor([0.5, -1.0, 1.0, 0.0, 0.3, -0.5, 1.2, 0.0, 0.7])  # channel logits: 4 | 3 | 2
    logits = row.expand(40000, 9)
    draws = codes.draw(logits, gen(0), 1.0, 0)
    freq = torch.bincount(draws, minlength=24).float() / draws.numel()
    torch.testing.assert_close(freq, joint_log_probs(codes, row).exp(), atol=0.01, rtol=0)
    # top-2 per channel: levels {0, 2} × {1, 2} × {0, 1} — 8 codes stay possible, not 2
    top2 = codes.draw(logits, gen(1), 1.0, 2)
    allowed = {a + 4 * b + 12 * c for a in (0, 2) for b in (0, 2) for c in (0, 1)}
    assert set(top2.unique().tolist()) == allowed
    # greedy: every channel's argmax, which is the most likely code
    greedy = codes.draw(logits[:3], gen(2), 0.0, 0)
    assert int(joint_log_probs(codes, row).argmax()) == 2 + 4 * 2 + 12 * 1
    assert greedy.tolist() == [2 + 4 * 2 + 12 * 1] * 3


def test_level_embedding_sums_levels_and_gives_the_extra_id_its_own_row():
    emb = LevelEmbedding(LEVELS, 8)
    torch.nn.init.normal_(emb.table.weight)
    w = emb.table.weight  # rows: channel 0 levels 0-3, channel 1 levels 4-6, channel 2 levels 7-8, extra 9
    code = 3 + 4 * 2 + 12 * 1  # digits (3, 2, 1)
    torch.testing.assert_close(emb(torch.tensor([code]))[0], w[3] + w[4 + 2] + w[7 + 1])
    torch.testing.assert_close(emb(torch.tensor([24]))[0], w[9])  # mask / BOS
    # codes sharing a level share its vector: a loss on one code moves only its three rows
    emb(torch.tensor([code])).sum().backward()
    assert emb.table.weight.grad.abs().sum(-1).nonzero()[:, 0].tolist() == [3, 6, 8]


def _tiny(kind):
    cfg = AutoencoderConfig(
        name=f"tiny-{kind}",
        kind=kind,
        downsample=4,
        widths=[4, 8, 8],
        latent_channels=4 if kind == "fsq" else 5,
        fsq_levels=[8, 5, 5, 5],
    )
    cfg.data = DataConfig(size=8)
    return build_autoencoder(cfg)


@pytest.mark.parametrize("kind", ["fsq", "lfq"])
def test_digits_are_the_autoencoders_channels(kind):
    """A factorised head's channel i is the quantiser's channel i: FSQ's level digit, LFQ's bit."""
    ae = _tiny(kind)
    spec = ae.latent_spec(32)
    assert spec.levels == ((8, 5, 5, 5) if kind == "fsq" else (2,) * 5) and math.prod(spec.levels) == spec.vocab_size
    codes = TokenCodes(spec, factorised=True)
    ids = torch.randint(0, spec.vocab_size, (3, 4, 4), generator=gen(0))
    digits = codes.digits(ids).permute(0, 3, 1, 2)  # [B, d, h, w]
    q = ae.quantizer.codes(ids)  # FSQ: (digit − ⌊L/2⌋)/⌊L/2⌋; LFQ: ±1
    expected = q * ae.quantizer.half_width + ae.quantizer.half_width if kind == "fsq" else (q > 0).long()
    assert torch.equal(digits, expected.round().long())


def test_factorised_needs_levels_and_levels_must_fit_the_vocabulary():
    no_levels = LatentSpec("discrete", 10, 4, 4, vocab_size=1000)
    obj = get_objective(ObjectiveConfig.of("masked", factorised=True))
    with pytest.raises(ConfigError, match="objective.factorised needs the latents' per-channel levels"):
        obj.build_model(ModelConfig(size="2x64"), no_levels, TextSpec(30, 6))
    with pytest.raises(ConfigError, match="objective.factorised=false"):
        obj.forward_flops(ModelConfig(size="2x64"), no_levels, TextSpec(30, 6))
    with pytest.raises(ValueError, match="multiply to the discrete vocab_size"):
        LatentSpec("discrete", 2, 4, 4, vocab_size=1000, levels=[8, 5])
    assert LatentSpec("discrete", 2, 4, 4, vocab_size=40, levels=[8, 5]).levels == (8, 5)  # JSON lists read back
    assert get_objective("masked").cfg.factorised is False  # off by default


def test_factorised_head_has_sum_of_levels_outputs():
    for name in ("masked", "autoregressive"):
        model = get_objective(ObjectiveConfig.of(name, factorised=True)).build_model(
            ModelConfig(size="2x64"), SPEC, TextSpec(30, 6)
        )
        assert model.head.out_features == sum(LEVELS) and model.embed.table.num_embeddings == sum(LEVELS) + 1


@pytest.mark.parametrize("scored_rows", [False, True])
def test_token_cross_entropy_is_cross_entropy_with_its_gradient(scored_rows):
    """The hand-written backward (softmax − one-hot, weighted) against autograd's, on the gathered rows."""
    from synthscale.objectives.codes import token_cross_entropy

    logits = (torch.randn(300, 1000, generator=gen(0)) * 3).requires_grad_()
    ids = torch.randint(0, 1000, (300,), generator=gen(1))
    scored = torch.rand(300, generator=gen(2)) < 0.6 if scored_rows else None
    rows = scored if scored_rows else slice(None)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits[rows], ids[rows])
    (ref * 1.7).backward()
    got = token_cross_entropy(logits, ids, scored)
    (got * 1.7).backward()
    assert torch.allclose(got, ref, rtol=1e-6, atol=0)
    assert torch.allclose(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-9)
    if scored_rows:
        assert logits.grad[~scored].abs().max() == 0  # unscored rows get no gradient
    with torch.no_grad():  # evaluation takes F.cross_entropy itself
        assert torch.allclose(token_cross_entropy(logits, ids, scored), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("factorised", [False, True])
def test_masked_loss_is_the_nll_of_the_masked_tokens_with_its_gradient(factorised):
    """The masked objective scores every position with the unmasked ones weighted 0: the same loss and
    gradients as the NLL of the gathered masked logits (its formula before)."""
    spec = LatentSpec("discrete", 3, 4, 4, vocab_size=24, levels=LEVELS)
    text = TextSpec(vocab_size=16, max_length=6)
    obj = get_objective(ObjectiveConfig.of("masked", factorised=factorised))
    torch.manual_seed(0)
    model = obj.build_model(ModelConfig(size="1x64"), spec, text)
    for p in model.parameters():  # the head starts at zero: give the loss real logits
        torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else None
    latents = torch.randint(0, 24, (5, 4, 4), generator=gen(3))
    captions = torch.randint(3, 16, (5, 6), generator=gen(4))
    seen = {}
    forward = model.forward

    def capture(ids, prefix, valid):
        seen["ids"], seen["logits"] = ids, forward(ids, prefix, valid)
        return seen["logits"]

    model.forward = capture
    loss = obj.loss(model, latents, captions, gen(5))
    hidden = seen["ids"] == model.mask_id
    assert 0 < hidden.sum() < hidden.numel()
    ref = model.codes.nll(seen["logits"][hidden], latents.reshape(5, -1)[hidden])
    params = [p for p in model.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    assert torch.allclose(loss, ref, rtol=1e-6, atol=0)
    for g, r in zip(got_grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            assert torch.allclose(g, r, rtol=1e-4, atol=1e-7)
