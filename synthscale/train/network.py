"""The generator network a run config describes: the objective's model with the learned caption encoder, or
with the frozen pretrained one that `data.text_encoder` names (projected to the backbone width).

The trainer and `load_generator` both build through here, so a checkpoint always meets the network it was
trained as. The frozen encoder's weights stay out of the network's parameters and checkpoints; its content hash
is recorded with every checkpoint and checked when the run is loaded again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from synthscale.compute import flops as C
from synthscale.config import ConfigError, RunConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.model.sizes import get_size


def build_network(
    objective, run_cfg: RunConfig, latent: LatentSpec, text: TextSpec
) -> tuple[nn.Module, TextSpec, dict[str, Any]]:
    """→ (model, the TextSpec its FLOPs are counted with, facts to record with checkpoints).

    With a frozen encoder the TextSpec carries its measured forward FLOPs per caption and its width, so the
    objective's FLOP counts fill the caption-encoder column with them."""
    path = run_cfg.data.text_encoder
    if not path:
        return objective.build_model(run_cfg.model, latent, text), text, {}
    from synthscale.model.pretrained_text import FrozenTextEncoder

    width = get_size(run_cfg.model.size).width
    encoder = FrozenTextEncoder(path, run_cfg.data.max_caption_tokens, width=width)
    mine = (encoder.vocab_size, encoder.max_length, encoder.pad_id)
    if mine != (text.vocab_size, text.max_length, text.pad_id):
        held = (text.vocab_size, text.max_length, text.pad_id)
        raise ConfigError(
            f"data.text_encoder={path!r} tokenizes to (vocab, length, pad) {mine}, but the latent "
            f"source holds captions as {held}; rebuild the cache with this encoder's tokenizer "
            "(same data.text_encoder and max_caption_tokens)"
        )
    projection = 0 if encoder.hidden == width else C.linear(encoder.max_length, encoder.hidden, width)
    frozen = dataclasses.replace(text, frozen_flops=encoder.forward_flops() - projection, frozen_width=encoder.hidden)
    model = objective.build_model(run_cfg.model, latent, frozen, text_encoder=encoder.prefix_encoder())
    return model, frozen, {"text_encoder": encoder.name, "text_encoder_hash": encoder.weights_hash}


def check_recorded(facts: dict[str, Any], meta: dict[str, Any], where: str) -> None:
    """Refuse to load a checkpoint whose frozen caption encoder is not the one found now."""
    before, now = meta.get("text_encoder_hash"), facts.get("text_encoder_hash")
    if before != now:
        raise ConfigError(
            f"{where} was trained with caption encoder {meta.get('text_encoder', 'learned')!r} "
            f"({before}), but the run config now gives {facts.get('text_encoder', 'learned')!r} ({now}); "
            "point data.text_encoder at the folder it was trained with"
        )
