import math

import pytest
import torch

from synthscale.config import ConfigError, ModelConfig, ObjectiveConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.objectives import OBJECTIVES, base, get_objective
from synthscale.objectives.base import sample_logits

TEXT = TextSpec(vocab_size=30, max_length=6)
MODEL = ModelConfig(size="2x64", text_layers=1)
CONT = LatentSpec("continuous", channels=4, height=4, width=4)
# levels of unequal size, as FSQ's: the factorised heads pad the smaller channels
DISC = LatentSpec("discrete", channels=3, height=4, width=4, vocab_size=16, levels=(4, 2, 2))
NAMES = ["flow", "masked", "autoregressive"]
# every objective, and the token objectives with factorised embeddings and heads too
VARIANTS = [pytest.param(n, {}, id=n) for n in NAMES] + [
    pytest.param(n, {"factorised": True}, id=f"{n}-factorised") for n in ("masked", "autoregressive")
]


def spec(obj):
    return CONT if obj.latent == "continuous" else DISC


def batch(obj, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    if obj.latent == "continuous":
        x = torch.randn(B, 4, 4, 4, generator=g)
    else:
        x = torch.randint(0, 16, (B, 4, 4), generator=g)
    text = torch.randint(3, 30, (B, 6), generator=g)
    text[:, 4:] = 0  # right padding
    return x, text


def build(name, seed=0, fresh=False, **cfg):
    """Objective + model; unless `fresh`, the zero-initialised output head gets random weights so the output
    depends on the input (a fresh model predicts v = 0 / uniform logits whatever it is given)."""
    torch.manual_seed(seed)
    obj = get_objective(ObjectiveConfig.of(name, **cfg))
    model = obj.build_model(MODEL, spec(obj), TEXT)
    if not fresh:
        with torch.no_grad():
            model.head.weight.normal_(std=0.5)
            model.null.weight.normal_()  # a null caption far from any real one
            for m in model.modules():  # open the adaLN-Zero gates, or flow blocks stay identities
                if getattr(m, "ada", None) is not None:
                    m.ada.weight.normal_(std=0.05)
    return obj, model


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_registry_and_clear_errors():
    assert sorted(OBJECTIVES) == sorted(NAMES)
    assert get_objective("masked").name == "masked"
    with pytest.raises(ConfigError, match="unknown objective 'diffusion'.*flow"):
        get_objective("diffusion")
    with pytest.raises(ConfigError, match="needs continuous latents"):
        get_objective("flow").build_model(MODEL, DISC, TEXT)
    with pytest.raises(ConfigError, match="needs discrete latents"):
        get_objective("autoregressive").build_model(MODEL, CONT, TEXT)
    with pytest.raises(ConfigError, match="patch_size 3 must"):
        get_objective("flow").build_model(ModelConfig(size="2x64", patch_size=3), CONT, TEXT)
    with pytest.raises(ConfigError, match="cfg_dropout"):
        get_objective(ObjectiveConfig.of("flow", cfg_dropout=1.5))


@pytest.mark.parametrize("name,opts", VARIANTS)
def test_same_seed_same_loss(name, opts):
    obj, model = build(name, cfg_dropout=0.5, **opts)  # autoregressive draws nothing but the caption dropout
    x, text = batch(obj, B=8)
    a = obj.loss(model, x, text, gen(3))
    b = obj.loss(model, x, text, gen(3))
    c = obj.loss(model, x, text, gen(4))
    assert a.ndim == 0 and torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name,opts", VARIANTS)
def test_caption_dropout_uses_null_only_when_enabled(name, opts):
    obj, model = build(name, cfg_dropout=0.5, **opts)
    x, text = batch(obj, B=8)
    ref = {d: obj.loss(model, x, text, gen(1), drop_captions=d) for d in (True, False)}
    with torch.no_grad():
        model.null.weight.normal_()  # (adding a constant would vanish in the LayerNorm)
    assert torch.equal(obj.loss(model, x, text, gen(1), drop_captions=False), ref[False])
    assert not torch.equal(obj.loss(model, x, text, gen(1), drop_captions=True), ref[True])


@pytest.mark.parametrize("name,opts", VARIANTS)
def test_sample_shapes_and_determinism(name, opts):
    obj, model = build(name, **opts)
    _, text = batch(obj, B=3)
    steps = obj.steps_grid(spec(obj))[0]
    a = obj.sample(model, text, steps, 2.0, gen(5))
    b = obj.sample(model, text, steps, 2.0, gen(5))
    assert torch.equal(a, b)
    if obj.latent == "continuous":
        assert a.shape == (3, 4, 4, 4) and a.dtype == torch.float32
    else:
        assert a.shape == (3, 4, 4) and a.dtype == torch.int64
        assert 0 <= int(a.min()) and int(a.max()) < DISC.vocab_size  # no [MASK]/[BOS] left


def _spy_null(model):
    calls = []
    orig = model.null_text
    model.null_text = lambda b: calls.append(b) or orig(b)
    return calls


@pytest.mark.parametrize("name,opts", VARIANTS)
def test_cfg_scale_one_is_exactly_conditional(name, opts):
    obj, model = build(name, **opts)
    _, text = batch(obj, B=3)
    steps = obj.default_steps(spec(obj))
    calls = _spy_null(model)
    s1 = obj.sample(model, text, steps, 1.0, gen(2))
    assert calls == []  # no unconditional pass at all
    s3 = obj.sample(model, text, steps, 3.0, gen(2))
    assert calls and not torch.equal(s1, s3)  # guidance does change the output


def test_flow_cfg_one_equals_conditional_euler():
    obj, model = build("flow")
    _, text = batch(obj, B=2)
    out = obj.sample(model, text, 4, 1.0, gen(9))
    with torch.no_grad():  # the conditional ODE written out
        prefix, valid = model.encode_text(text)
        x = torch.randn(2, 4, 4, 4, generator=gen(9))
        ts = torch.linspace(1, 0, 5).tolist()
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = x + (t_next - t) * model(x, torch.full((2,), t), prefix, valid)
    assert torch.equal(out, x)


def test_flow_guidance_is_uncond_plus_scaled_difference():
    obj, model = build("flow")
    _, text = batch(obj, B=2)
    out = obj.sample(model, text, 1, 4.0, gen(9))
    with torch.no_grad():
        x = torch.randn(2, 4, 4, 4, generator=gen(9))
        t = torch.ones(2)
        vc = model(x, t, *model.encode_text(text))
        vu = model(x, t, *model.null_text(2))
    torch.testing.assert_close(out, x - (vu + 4.0 * (vc - vu)), rtol=1e-5, atol=1e-5)


def test_heun_uses_two_evaluations_per_step_but_the_last():
    obj, model = build("flow", sampler="heun")
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    _, text = batch(obj, B=2)
    obj.sample(model, text, 5, 1.0, gen(0))
    assert len(calls) == obj.model_evals(5) == 9


@pytest.mark.parametrize("factorised", [False, True])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_kv_cache_sampling_equals_recomputation(cfg_scale, factorised):
    obj, model = build("autoregressive", temperature=1.0, factorised=factorised)
    _, text = batch(obj, B=4)
    cached = obj.sample(model, text, 16, cfg_scale, gen(11))
    recomputed = obj.sample(model, text, 16, cfg_scale, gen(11), kv_cache=False)
    assert torch.equal(cached, recomputed)
    assert cached.unique().numel() > 4  # really sampled, not a constant


@pytest.mark.parametrize("factorised", [False, True])
def test_next_token_guidance_before_the_linear_head_is_logit_guidance(factorised):
    """The head is linear, so guiding the final hidden states and applying it once is guiding the logits."""
    from synthscale.objectives.autoregressive import next_logits

    obj, model = build("autoregressive", factorised=factorised)
    with torch.no_grad():
        model.head.bias.normal_()
        hidden = torch.randn(6, 64, generator=gen(0))  # [cond 3; uncond 3]
        for s in (1.0, 2.0, 4.0):
            reference = model.head(hidden) if s == 1 else base.guide(model.head(hidden), s)
            torch.testing.assert_close(next_logits(model, hidden, s), reference, rtol=1e-5, atol=1e-5)
        model.head = torch.nn.Sequential(model.head, torch.nn.Tanh())  # not linear: guides the logits
        torch.testing.assert_close(next_logits(model, hidden, 2.0), base.guide(model.head(hidden), 2.0))


@pytest.mark.parametrize("temperature, top_k", [(0.0, 0), (1.0, 0), (0.7, 5)])
def test_next_token_sampling_agrees_with_logits_guided_and_drawn_apart(temperature, top_k, monkeypatch):
    """Guidance before the head and the head run into the Gumbel noise change tokens only where rounding flips a
    choice: measured, every one of 4 × 16 tokens × 3 scales agrees with logits guided, then drawn."""
    from synthscale.objectives import autoregressive

    obj, model = build("autoregressive", temperature=temperature, top_k=top_k)
    _, text = batch(obj, B=4)
    ours = [obj.sample(model, text, 16, s, gen(3)) for s in (2.0, 3.0, 5.0)]

    def reference(model, hidden, s, generator, temperature, top_k):
        logits = model.head(hidden).float()
        return model.codes.draw(base.guide(logits, s) if s != 1 else logits, generator, temperature, top_k)

    monkeypatch.setattr(autoregressive, "next_token", reference)
    apart = [obj.sample(model, text, 16, s, gen(3)) for s in (2.0, 3.0, 5.0)]
    agree = torch.stack([a == b for a, b in zip(ours, apart)]).float().mean()
    assert agree >= 0.99
    assert torch.cat(ours).unique().numel() > 4  # a real draw, not a constant


def test_caption_columns_and_shorter_captions_encode_alike():
    """Columns that are padding in every caption are no keys anywhere: the encoder without them gives the same
    features at the real positions (up to rounding), and the sampler drops them."""
    from synthscale.objectives.autoregressive import caption_columns

    valid = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0]], dtype=torch.bool)
    assert caption_columns(valid) == 3
    assert caption_columns(torch.zeros(2, 4, dtype=torch.bool)) == 1
    obj, model = build("autoregressive")
    _, text = batch(obj, B=3)  # 4 real tokens of 6
    with torch.no_grad():
        full, full_valid = model.encode_text(text)
        short, short_valid = model.encode_text(text[:, :4])
    assert torch.equal(short_valid, full_valid[:, :4]) and not full_valid[:, 4:].any()
    torch.testing.assert_close(short, full[:, :4], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="text encoder was built for 6"):
        model.encode_text(torch.ones(1, 7, dtype=torch.long))


def test_decoding_attention_equals_sdpa():
    from synthscale.model.transformer import _one_query_attention

    g = gen(0)
    q, k, v = torch.randn(3, 2, 1, 32, generator=g), torch.randn(3, 2, 9, 32, generator=g), torch.randn(3, 2, 9, 32)
    bias = torch.zeros(3, 1, 1, 9).masked_fill_(torch.rand(3, 1, 1, 9, generator=g) < 0.3, float("-inf"))
    bias[..., 0] = 0
    for b in (bias, None):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=b)
        torch.testing.assert_close(_one_query_attention(q, k, v, b), expected, rtol=1e-5, atol=1e-6)


def test_next_token_sampling_hands_back_an_ordinary_tensor():
    """It runs under inference mode for speed; what it returns is still a tensor a caller may change in place."""
    obj, model = build("autoregressive")
    _, text = batch(obj, B=2)
    out = obj.sample(model, text, 16, 2.0, gen(0))
    assert not out.is_inference() and not torch.is_inference_mode_enabled()
    out += 1  # an inference tensor would refuse this outside inference mode


def test_autoregressive_prediction_is_causal():
    obj, model = build("autoregressive")
    x, text = batch(obj, B=1)
    prefix, valid = model.encode_text(text)
    ids = torch.cat([torch.full((1, 1), model.bos_id), x.reshape(1, -1)[:, :-1]], 1)
    h = model(ids, valid, prefix)
    ids2 = ids.clone()
    ids2[:, 8:] = (ids2[:, 8:] + 1) % 16  # change inputs from image position 8 on
    h2 = model(ids2, valid, prefix)
    torch.testing.assert_close(h2[:, :8], h[:, :8])
    assert not torch.allclose(h2[:, 8:], h[:, 8:])


def test_masked_sampling_reveals_everything_and_keeps_revealed_tokens():
    obj, model = build("masked")
    _, text = batch(obj, B=2)
    seen = []
    orig = model.forward
    model.forward = lambda ids, *a: seen.append(ids.clone()) or orig(ids, *a)
    out = obj.sample(model, text, 4, 1.0, gen(0))
    hidden = [int((ids == model.mask_id).sum(1)[0]) for ids in seen]
    assert hidden[0] == 16 and hidden == sorted(hidden, reverse=True) and len(set(hidden)) == 4
    for before, after in zip(seen, seen[1:] + [out.reshape(2, -1)]):
        shown = before != model.mask_id
        assert torch.equal(after[shown], before[shown])
    with pytest.raises(ValueError, match="steps must be an integer in 1..16"):
        obj.sample(model, text, 17, 1.0, gen(0))


def test_masked_confidence_ignores_the_sampling_temperature():
    """MaskGIT ranks by the unscaled log-prob: temperature changes the draw, never which tokens are kept. The stub
    model's top token at every position is the number of tokens revealed so far, so the output records the order
    of reveal; positions 0-7 are the more confident ones at temperature 1 but would rank last at 0.1."""
    obj, model = build("masked", top_k=1, mask_temperature=0.0)  # top-1: the draw is the argmax at any temperature
    _, text = batch(obj, B=2)
    V, N = 16, model.image_tokens
    sure_pair = torch.full((V,), -20.0)  # p(top) = 0.52 at T=1: one close rival, the rest impossible
    sure_pair[:2] = torch.tensor([0.0, -0.1])
    spread = torch.full((V,), -1.5)  # p(top) = 0.23 at T=1 but ≈ 1 at T=0.1: many distant rivals
    spread[0] = 0.0
    profile = torch.stack([sure_pair] * (N // 2) + [spread] * (N - N // 2))  # [N, V], top at index 0

    def forward(ids, prefix, valid):
        revealed = (ids != model.mask_id).sum(1)  # [B]
        return torch.stack([profile.roll(int(r), dims=-1) for r in revealed])  # top token = revealed count

    model.forward = forward
    outs = {}
    for t in (0.1, 1.0):
        obj.cfg.temperature = t
        outs[t] = obj.sample(model, text, 4, 1.0, gen(0)).reshape(2, -1)
    assert torch.equal(outs[0.1], outs[1.0])
    assert outs[1.0][:, : N // 2].max() <= outs[1.0][:, N // 2 :].min()  # the confident half went first


def test_sample_logits_matches_softmax_and_top_k():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0]).expand(20000, 4)
    draws = sample_logits(logits, gen(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    torch.testing.assert_close(freq, logits[0].softmax(0), atol=0.015, rtol=0)
    top2 = sample_logits(logits, gen(0), top_k=2)
    assert set(top2.unique().tolist()) == {1, 2}
    assert sample_logits(logits[:3], gen(0), temperature=0).tolist() == [2, 2, 2]


def _textbook_inverse_cdf(logits, generator, temperature):
    """The first id whose cumulative softmax probability (float64) exceeds one uniform a row from torch.rand on the
    generator: inverse-CDF sampling written out. A CPU run must keep drawing these tokens for a given seed."""
    u = torch.rand(logits.shape[:-1] + (1,), generator=generator).double()
    cdf = (logits.double() / temperature).softmax(-1).cumsum(-1)
    return (cdf <= u).sum(-1).clamp(max=logits.shape[-1] - 1)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (1.3, 5)])
def test_sample_logits_draws_the_textbook_inverse_cdf_tokens_on_cpu(temperature, top_k):
    logits = torch.randn(64, 3, 257, generator=gen(3)) * 3
    logits[:, 0, :100] = 0.0  # exact ties
    ref_logits = logits
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        ref_logits = logits.masked_fill(logits < kth, float("-inf"))
    for seed in range(3):
        g, ref_g = gen(seed), gen(seed)
        drawn = sample_logits(logits, g, temperature, top_k)
        assert torch.equal(drawn, _textbook_inverse_cdf(ref_logits, ref_g, temperature))
        assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref_g))  # one draw a row taken


@pytest.mark.parametrize("u", [0.0, 1.0 - 2**-24, 1.0])
def test_sample_logits_never_draws_a_token_of_zero_mass_at_the_uniforms_ends(monkeypatch, u):
    """u = 0 lands on the CDF's flat start, u = 1 (a generator on (0, 1]) on its total: neither may pick an id that
    top-k or a −inf logit removed, or one past the last."""
    inf = float("-inf")
    logits = torch.tensor([[inf, 0.0, inf, 3.0, inf, inf], [inf, inf, 1e-3, 0.0, 50.0, inf]])
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, u))
    drawn = sample_logits(logits, gen(0))
    assert drawn.tolist() == ([1, 2] if u == 0 else [3, 4])


def test_gumbel_is_the_textbook_draw_on_cpu():
    u = torch.rand(5, 300, generator=gen(8))
    assert torch.equal(base.gumbel((5, 300), gen(8), "cpu"), -torch.log(-torch.log(u.clamp_min(1e-20))))


def test_sampling_noise_uses_the_callers_generator_on_its_device_and_a_derived_one_elsewhere(monkeypatch):
    g = gen(0)
    assert base.sampling_generator(g, "cpu") is g  # a CPU run: today's stream, no extra draw
    assert base.sampling_generator(g, torch.device("cpu")) is g
    # derived: one int64 from the parent seeds it, so the same seed gives the same stream
    a, b = gen(4), gen(4)
    da, db = base.derived_generator(a, "cpu"), base.derived_generator(b, "cpu")
    assert torch.equal(torch.rand(1000, generator=da), torch.rand(1000, generator=db))
    twin = gen(4)
    torch.randint(2**63 - 1, (), generator=twin)  # the parent moved on by exactly that one draw
    assert torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=twin))
    d2 = base.derived_generator(a, "cpu")  # the next call, the next seed: fresh noise every step
    assert not torch.equal(torch.rand(1000, generator=d2), torch.rand(1000, generator=gen(4)))
    # another device than the generator's: the derived generator, made for that device
    made = []
    monkeypatch.setattr(base, "derived_generator", lambda parent, device: made.append((parent, device)) or parent)
    base.sampling_generator(g, "cuda:0")
    assert made == [(g, torch.device("cuda:0"))]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_generator_drives_gpu_sampling_noise_drawn_on_the_gpu():
    logits = torch.randn(64, 1024, generator=gen(0)).cuda()
    a, b = sample_logits(logits, gen(1)), sample_logits(logits, gen(1))
    assert a.is_cuda and torch.equal(a, b)
    assert not torch.equal(a, sample_logits(logits, gen(2)))
    assert base.gumbel((4, 8), gen(1), logits.device).is_cuda


@pytest.mark.parametrize(
    "name,steps,lr,opts",
    [
        ("flow", 300, 3e-3, {}),
        ("masked", 150, 3e-3, {}),
        ("autoregressive", 150, 3e-3, {}),
        ("masked", 300, 3e-3, {"factorised": True}),
        ("autoregressive", 150, 3e-3, {"factorised": True}),
    ],
)
def test_overfits_a_fixed_small_batch(name, steps, lr, opts):
    """Fresh t / noise / masks every step, but one fixed batch of four captioned examples: the loss must fall
    at least 10× (a network that memorises the batch can drive every objective's loss towards zero)."""
    obj, model = build(name, fresh=True, **opts)
    x, text = batch(obj, B=4)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def held_out_loss():
        with torch.no_grad():
            return sum(obj.loss(model, x, text, gen(10_000 + i), drop_captions=False).item() for i in range(4)) / 4

    before = held_out_loss()
    for i in range(steps):
        loss = obj.loss(model, x, text, gen(i), drop_captions=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert math.isfinite(after) and before / after >= 10, (before, after)
