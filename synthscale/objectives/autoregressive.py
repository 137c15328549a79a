"""Next-token prediction on discrete latents: raster order, prefix-LM attention (caption bidirectional, image
causal), teacher forcing; sampling with temperature / top-k and a KV cache.

The image input sequence is [BOS, x_0, …, x_{N-2}] (BOS is the extra id `vocab_size`); the output at image
position j predicts x_j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from synthscale.compute import flops as C
from synthscale.config import ObjectiveConfig
from synthscale.model.network import Network, attention_mask
from synthscale.model.sizes import get_size
from synthscale.objectives.base import Objective, cfg_copies, guide, inference, text_encoder_flops
from synthscale.objectives.codes import TokenCodes, logits_width


@dataclass
class AutoregressiveConfig(ObjectiveConfig):
    name: str = "autoregressive"
    temperature: float = 1.0  # softmax temperature; 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    factorised: bool = False  # per-channel level embedding and softmax heads (objectives/codes.py)

    added_fields: ClassVar[dict[str, Any]] = {"factorised": False}  # off: the full softmax, as before


class AutoregressiveNet(Network):
    def __init__(self, model_cfg, latent, text, text_encoder=None, factorised: bool = False):
        super().__init__(model_cfg, text, latent.tokens, text_encoder=text_encoder)
        self.vocab_size, self.grid = latent.vocab_size, (latent.height, latent.width)
        self.bos_id = latent.vocab_size
        self.codes = TokenCodes(latent, factorised)
        self.embed = self.codes.embedding(self.size.width)
        self.head = nn.Linear(self.size.width, self.codes.width)
        self.codes.init_embedding(self.embed)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids, text_valid, prefix=None, cache=None, start: int = 0, key_bias=None):
        """Hidden states [B, n, D] of image inputs ids [B, n] at image positions start … start + n − 1.

        With `prefix` [B, L, D] the caption is run too (training, the first decoding step, recomputation);
        without it the keys of earlier positions come from `cache`. `key_bias` (decoding one position:
        `decode_key_bias`) replaces the mask built here every step."""
        L = text_valid.shape[1]
        n = ids.shape[1]
        h = self.embed(ids) + self.pos.weight[start : start + n]  # [B, n, D]
        if prefix is not None:
            if start:
                raise ValueError("a caption prefix can only come with image position 0")
            seq = torch.cat([prefix.to(h.dtype), h], dim=1)  # [B, L + n, D]
            mask = attention_mask(text_valid, L + n, causal=True)
            if cache is not None and cache.static:  # attention reads every cache position: later ones are future
                mask = attention_mask(text_valid, cache.max_len, causal=True)[:, :, : L + n]
        else:
            if cache is None or cache.length != L + start:
                raise ValueError(f"decoding image position {start} needs a KV cache holding {L + start} positions")
            seq = h
            if key_bias is not None and n == 1:  # one query: its mask row is the key validity up to itself
                mask = key_bias[..., : L + start + 1]
            else:
                mask = attention_mask(text_valid, L + start + n, causal=True, q_start=L + start)
        return self.backbone(seq, mask, cache=cache)[:, -n:]


def decode_key_bias(text_valid: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """float [B, 1, 1, L + N]: 0 for the keys a decoding query may see, −inf for pad caption keys — the additive form
    SDPA turns a bool mask into, built once per image instead of twice per layer and step (same attention bit for
    bit). Decoding position j slices its first L + j + 1 keys: every earlier image key is real."""
    keys = torch.cat([text_valid, text_valid.new_ones(text_valid.shape[0], image_tokens)], dim=1)  # [B, L + N]
    bias = torch.zeros(keys.shape, device=keys.device).masked_fill_(~keys, float("-inf"))
    return bias[:, None, None, :]


def next_logits(model: AutoregressiveNet, hidden: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Float logits [B, K] of the next token from the newest position's final hidden states [R, D] (R = 2B with
    CFG: cond rows, then uncond). The head is one Linear after the final norm, so guiding the hidden states and
    applying the head once is guiding the logits, uncond + s·(cond − uncond), up to rounding — at half the head's
    rows (at 1x64 the head [D → V = 1024] costs more than a block). Any other head guides its logits."""
    if cfg_scale == 1:
        return model.head(hidden).float()
    if isinstance(model.head, nn.Linear):
        return model.head(guide(hidden.float(), cfg_scale)).float()
    return guide(model.head(hidden).float(), cfg_scale)


def next_token(model: AutoregressiveNet, hidden, cfg_scale: float, generator, temperature: float, top_k: int):
    """ids [B] of the next token drawn from the newest position's final hidden states [R, D]."""
    return model.codes.draw(next_logits(model, hidden, cfg_scale), generator, temperature, top_k)


def decode_step(model: AutoregressiveNet, cache, ids: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """One decoding step on a static KV cache: the image input ids [R, 1] at the cache's position → final hidden
    states [R, D] of that position (`next_token` applies the head and draws). key_valid bool [R, K]
    (K = cache.max_len) marks real keys (pad caption keys False). Every shape is the same at every position, so
    one compilation serves the whole image."""
    K = key_valid.shape[1]
    L = K - model.image_tokens
    here = cache.pos  # int64 [1]: this input's place in the sequence
    h = model.embed(ids) + F.embedding(here - L, model.pos.weight)  # [R, 1, D]
    mask = key_valid & (torch.arange(K, device=ids.device) <= here)  # [R, K]: this position and before
    return model.backbone(h, mask[:, None, None, :], cache=cache)[:, -1]  # writes position `here`, advances


def caption_columns(valid: torch.Tensor) -> int:
    """The caption columns [0, n) up to the last real token of any row of valid bool [B, L] (at least one): past
    them every key is padding, which no query attends to (prefix-LM), so a sequence without them computes the same
    tokens up to rounding."""
    real = valid.any(0).nonzero()
    return int(real.max()) + 1 if len(real) else 1


def sampling_prefix(model: AutoregressiveNet, text: torch.Tensor, guided: bool):
    """(prefix [R, L, D], key_valid bool [R, L]) of `model.guided_prefix`, with the caption encoded without the
    columns that are padding in every caption (dynamic padding: an encoder with a `pad_id` only). Unguided, L is
    that shorter length; with CFG the null caption keeps its full length, the captions are padded to it with zero
    features (masked keys)."""
    pad_id = getattr(model.text_encoder, "pad_id", None)
    if pad_id is not None:
        text = text[:, : caption_columns(text != pad_id)]
    prefix, valid = model.encode_text(text)  # [B, n, D]
    if not guided:
        return prefix, valid
    B, n = valid.shape
    null_h, null_valid = model.null_text(B)  # [B, L, D]
    L = null_valid.shape[1]
    prefix = torch.cat([F.pad(prefix, (0, 0, 0, L - n)), null_h.to(prefix.dtype)])
    return prefix, torch.cat([F.pad(valid, (0, L - n), value=False), null_valid])


def guided_prefill(model: AutoregressiveNet, cache, prefix, valid, bos: torch.Tensor) -> torch.Tensor:
    """Caption + BOS of CFG's rows [cond B; null B] into `cache` (L + N positions, L = the caption length) →
    hidden states [2B, 1, D] of BOS. The B null rows are one row until their first token, so it runs once and is
    copied; the captions run without the columns that are padding in all of them (`caption_columns`), their BOS
    key placed at position L like the null rows', the columns between left zero (padding: masked)."""
    B, L = prefix.shape[0] // 2, prefix.shape[1]
    n = caption_columns(valid[:B])
    hidden = []
    for rows, m in ((slice(0, B), n), (slice(B, B + 1), L)):  # the captions, then one null caption
        part = model.backbone.new_cache(m + 1)
        hidden.append(model(bos[rows], valid[rows, :m], prefix[rows, :m], cache=part)[:, -1:])
        dest = slice(rows.start, rows.start + B)
        cache.place(dest, 0, part, 0, m, batch=2 * B)
        cache.place(dest, L, part, m, 1, batch=2 * B)
    cache.filled(L + 1)
    return torch.cat([hidden[0], hidden[1].expand(B, -1, -1)])  # [2B, 1, D]


_COMPILED: dict[str, object] = {}


def compiled_decode_step(device: torch.device):
    """`decode_step` compiled once per process and device type: CUDA graphs on GPUs (mode reduce-overhead),
    fused kernels on CPU. fullgraph: a graph break would silently undo the point."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED[mode]


class AutoregressiveObjective(Objective):
    name = "autoregressive"
    latent = "discrete"
    paradigm = "next-token"
    config = AutoregressiveConfig
    network = AutoregressiveNet

    def loss(self, model, latents, text, generator, drop_captions=True):
        B, dev = latents.shape[0], latents.device
        tokens = latents.reshape(B, -1)  # [B, N], raster order
        drop = self.caption_drop(B, generator, drop_captions, dev)
        prefix, valid = model.encode_text(text, drop)
        inputs = torch.cat([torch.full_like(tokens[:, :1], model.bos_id), tokens[:, :-1]], dim=1)  # teacher forcing
        logits = model.head(model(inputs, valid, prefix))  # [B, N, K]
        return model.codes.nll(logits.flatten(0, 1), tokens.flatten())

    @inference
    def sample(
        self,
        model,
        text,
        steps,
        cfg_scale,
        generator,
        kv_cache: bool = True,
        static_cache: bool = False,
        compiled: bool = False,
    ):
        """`steps` must be the number of image tokens (one per step). kv_cache=False recomputes the whole
        sequence every step (the reference the cache must match, and the baseline of the speed benchmark).
        static_cache: preallocated cache read at full length with a position tensor (same shapes every step);
        compiled: that step through torch.compile (CUDA graphs on GPUs), implies static_cache. All three give
        the same tokens."""
        N = model.image_tokens
        self.check_steps(steps, N)
        dev, B = model.device, text.shape[0]
        guided = cfg_scale != 1
        static = kv_cache and (static_cache or compiled)
        prefix, valid = sampling_prefix(model, text.to(dev), guided)
        rows, L = prefix.shape[0], prefix.shape[1]  # B, or 2B with CFG
        ids = torch.full((rows, N + 1), model.bos_id, dtype=torch.long, device=dev)  # [BOS, x_0, …, x_{N-1}]
        cache = model.backbone.new_cache(L + N, static=static) if kv_cache else None
        key_bias = decode_key_bias(valid, N) if kv_cache and not static else None
        if static:
            key_valid = torch.cat([valid, valid.new_ones(rows, N)], dim=1)  # [rows, L + N]
            step = compiled_decode_step(dev) if compiled else decode_step
        for j in range(N):
            if static and j > 0:
                hidden = step(model, cache, ids[:, j : j + 1].contiguous(), key_valid)
            elif not kv_cache:
                hidden = model(ids[:, : j + 1], valid, prefix)[:, -1]
            elif j == 0 and guided:
                hidden = guided_prefill(model, cache, prefix, valid, ids[:, :1])[:, -1]
            elif j == 0:  # caption + BOS fill the cache
                hidden = model(ids[:, :1], valid, prefix, cache=cache)[:, -1]
            else:
                hidden = model(ids[:, j : j + 1], valid, cache=cache, start=j, key_bias=key_bias)[:, -1]
            nxt = next_token(model, hidden, cfg_scale, generator, self.cfg.temperature, self.cfg.top_k)  # [B]
            ids[:, j + 1] = torch.cat([nxt, nxt]) if guided else nxt
        return ids[:B, 1:].reshape(B, *model.grid)

    def network_options(self):
        return {"factorised": self.cfg.factorised}

    def default_steps(self, latent):
        return latent.tokens

    def steps_grid(self, latent):
        return [latent.tokens]

    def steps_range(self, tokens):
        return tokens, tokens  # one token a step

    def forward_flops(self, model_cfg, latent, text):
        self.check_latent(latent)
        size = get_size(model_cfg.size)
        N, T = latent.tokens, text.max_length + latent.tokens
        head = logits_width(latent, self.cfg.factorised)
        generator = C.transformer(T, T, size.width, size.depth) + C.linear(N, size.width, head)
        return C.Flops(generator, text_encoder_flops(model_cfg, text))

    def sample_flops_split(self, model_cfg, latent, text, steps, cfg_scale, kv_cache: bool = True, batch: int = 1):
        """Per image of a batch of `batch` full-length captions: with the cache, caption + BOS once, then one
        position a step attending to all before it; without it, the whole sequence so far every step. CFG runs the
        backbone twice but the head once (guided before it, `next_logits`), and with the cache the null caption's
        prefill once for the whole batch (`guided_prefill`). Captions padded in every row cost less than counted
        here (`caption_columns`)."""
        N = latent.tokens
        self.check_steps(steps, N)
        size = get_size(model_cfg.size)
        D, depth, L = size.width, size.depth, text.max_length
        backbone, prefill = 0, 0
        for j in range(N):
            if kv_cache and j > 0:
                backbone += C.transformer(1, L + j + 1, D, depth)
            elif kv_cache:
                prefill = C.transformer(L + 1, L + 1, D, depth)
            else:
                backbone += C.transformer(L + j + 1, L + j + 1, D, depth)
        head = N * C.linear(1, D, logits_width(latent, self.cfg.factorised))
        copies = cfg_copies(cfg_scale)
        null_prefill = round((copies - 1) * prefill / batch)  # one null row's prefill serves the batch
        generator = copies * backbone + prefill + null_prefill + head
        return C.Flops(generator, text_encoder_flops(model_cfg, text))

    def sample_flops(self, model_cfg, latent, text, steps, cfg_scale, kv_cache: bool = True, batch: int = 1):
        return self.sample_flops_split(model_cfg, latent, text, steps, cfg_scale, kv_cache, batch).total
