"""The objective interface: what differs between paradigms — its config, input embedding, attention pattern,
output head, loss, sampler and FLOP count. The trainer, evaluator and study only ever call these methods (see
docs/architecture.md for how to add an objective)."""

from __future__ import annotations

import abc
import functools
from typing import ClassVar, Literal

import torch
from torch import nn

from synthscale.compute import flops as C
from synthscale.config import ConfigError, ModelConfig, ObjectiveConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.model.sizes import get_size


class Objective(abc.ABC):
    """One paradigm on the shared backbone. A subclass declares its `name` (the registry key, the config's
    `objective.name`), the `latent` kind it reads, the `paradigm` the study's findings name it by, its `config`
    dataclass (an `ObjectiveConfig` subclass holding only the fields it uses) and its `network`, and implements the
    abstract methods below."""

    name: ClassVar[str]
    latent: ClassVar[Literal["continuous", "discrete"]]
    # the family the study's findings (the paper's claims) speak of: "diffusion", "masked-token" or "next-token"
    paradigm: ClassVar[Literal["diffusion", "masked-token", "next-token"]]
    config: ClassVar[type[ObjectiveConfig]]
    network: ClassVar[type[nn.Module]]  # backbone + caption encoder + this objective's embedding and head

    def __init__(self, cfg: ObjectiveConfig | None = None):
        self.cfg = cfg if cfg is not None else self.config()
        if self.cfg.name != self.name or not isinstance(self.cfg, self.config):
            raise ConfigError(
                f"a {type(self.cfg).__name__} named {self.cfg.name!r} cannot configure the {self.name!r} objective; "
                f"use ObjectiveConfig.of({self.name!r}, ...)"
            )
        if not 0.0 <= self.cfg.cfg_dropout < 1.0:
            raise ConfigError(f"objective.cfg_dropout must be in [0, 1), got {self.cfg.cfg_dropout}")

    # --------------------------------------------------------------------------------------- each objective

    def build_model(
        self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec, text_encoder: nn.Module | None = None
    ) -> nn.Module:
        """Backbone + caption encoder + this objective's embedding, head and null caption. `text_encoder`
        replaces the learned caption encoder (same call: tokens [B, L] → (features [B, L, D], key_valid [B, L]));
        the FLOP counts here assume the learned one."""
        self.check_latent(latent)
        return self.network(model_cfg, latent, text, text_encoder, **self.network_options())

    def network_options(self) -> dict:
        """Keyword arguments of `network` from this objective's config (e.g. a token head's factorisation)."""
        return {}

    @abc.abstractmethod
    def loss(
        self, model, latents: torch.Tensor, text: torch.Tensor, generator: torch.Generator, drop_captions: bool = True
    ) -> torch.Tensor:
        """Mean loss over the batch; every random draw comes from `generator`."""

    @abc.abstractmethod
    def sample(
        self, model, text: torch.Tensor, steps: int, cfg_scale: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Latents for captions `text` [B, L]: continuous float [B, C, H, W] or discrete int64 [B, H, W]."""

    @abc.abstractmethod
    def default_steps(self, latent: LatentSpec) -> int:
        """Sampling steps of the primary setting."""

    @abc.abstractmethod
    def steps_grid(self, latent: LatentSpec) -> list[int]:
        """The step counts a study sweeps."""

    def steps_range(self, tokens: int) -> tuple[int, int | None]:
        """The sampling steps accepted for `tokens` image tokens: (lowest, highest or None when unbounded)."""
        return 1, None

    def check_steps(self, steps: int, tokens: int) -> None:
        low, high = self.steps_range(tokens)
        if not isinstance(steps, int) or steps < low or (high is not None and steps > high):
            allowed = f"{low}..{high}" if high is not None else f"≥ {low}"
            raise ValueError(
                f"{self.name}: steps must be an integer in {allowed} for {tokens} image tokens, got {steps!r}"
            )

    @abc.abstractmethod
    def forward_flops(self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec) -> C.Flops:
        """One training forward pass for one example."""

    @abc.abstractmethod
    def sample_flops_split(
        self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec, steps: int, cfg_scale: float
    ) -> C.Flops:
        """Sampling one image, split into generator and caption-encoder columns."""

    # --------------------------------------------------------------------------------------- shared

    def train_flops(self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec, batch: int) -> int:
        """FLOPs of one optimizer step on `batch` examples: forward + backward = 3 × forward (a frozen caption
        encoder runs forward only)."""
        return batch * self.train_example_flops(model_cfg, latent, text).total

    def train_example_flops(self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec) -> C.Flops:
        """One training example, split into generator and caption-encoder columns."""
        fwd = self.forward_flops(model_cfg, latent, text)
        return C.Flops(C.TRAIN_MULTIPLIER * fwd.generator, text_encoder_train_flops(model_cfg, text))

    def sample_flops(
        self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec, steps: int, cfg_scale: float
    ) -> int:
        """FLOPs to sample one image (CFG with cfg_scale != 1 doubles the generator's share)."""
        return self.sample_flops_split(model_cfg, latent, text, steps, cfg_scale).total

    def param_counts(self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec) -> dict[str, int]:
        """{"total", "non_embedding"} of the model this objective builds (built on the meta device: no memory)."""
        with torch.device("meta"):  # a frozen caption encoder's own weights are not the network's: its projection is
            model = self.build_model(model_cfg, latent, text, text_encoder=frozen_stand_in(model_cfg, text))
        return C.param_counts(model)

    def flops_report(self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec, cfg_scale: float = 4.0) -> dict:
        """Parameters and FLOPs per forward, per training example and per sampled image at every step count of
        `steps_grid`, without CFG (s = 1) and with it (any s != 1 costs the same). The `synthscale flops` table."""
        fwd = self.forward_flops(model_cfg, latent, text)
        size = get_size(model_cfg.size)
        return {
            "objective": self.name,
            "size": size.name,
            "depth": size.depth,
            "width": size.width,
            "heads": size.heads,
            "image_tokens": self.image_tokens(model_cfg, latent),
            "text_tokens": text.max_length,
            "text_layers": model_cfg.text_layers,
            "params": self.param_counts(model_cfg, latent, text),
            "forward": fwd.as_dict(),
            "train_example": self.train_example_flops(model_cfg, latent, text).as_dict(),
            "sample": [
                {
                    "steps": steps,
                    "cfg": cfg,
                    **self.sample_flops_split(model_cfg, latent, text, steps, cfg_scale if cfg else 1.0).as_dict(),
                }
                for steps in self.steps_grid(latent)
                for cfg in (False, True)
            ],
        }

    def image_tokens(self, model_cfg: ModelConfig, latent: LatentSpec) -> int:
        """Image positions in the backbone's sequence."""
        return latent.tokens

    def check_latent(self, latent: LatentSpec) -> None:
        if latent.kind != self.latent:
            raise ConfigError(
                f"objective {self.name!r} needs {self.latent} latents but the latent cache holds {latent.kind} ones; "
                f"use a {'KL (continuous)' if self.latent == 'continuous' else 'LFQ/FSQ/VQ (discrete)'} autoencoder"
            )
        if self.latent == "discrete" and not latent.vocab_size:
            raise ConfigError(f"objective {self.name!r}: discrete LatentSpec needs vocab_size")

    def caption_drop(self, batch: int, generator: torch.Generator, enabled: bool, device) -> torch.Tensor | None:
        """bool [B]: rows whose caption becomes the learned null (classifier-free guidance training)."""
        u = rand(batch, generator, device)  # drawn even when disabled, so the other draws do not shift
        return (u < self.cfg.cfg_dropout) if enabled and self.cfg.cfg_dropout > 0 else None


def text_encoder_flops(model_cfg: ModelConfig, text: TextSpec) -> int:
    """One caption through the text encoder (its token and position embeddings are lookups); a frozen pretrained
    encoder counts its measured forward plus the projection to the backbone width."""
    size = get_size(model_cfg.size)
    if text.frozen_flops:
        return text.frozen_flops + _projection_flops(size.width, text)
    return C.transformer(text.max_length, text.max_length, size.width, model_cfg.text_layers)


def text_encoder_train_flops(model_cfg: ModelConfig, text: TextSpec) -> int:
    """The caption encoder's share of one training example: 3 × forward when it learns; a frozen encoder runs
    forward only (no gradient flows into it) and its trained projection counts 3 × forward."""
    if text.frozen_flops:
        return text.frozen_flops + C.TRAIN_MULTIPLIER * _projection_flops(get_size(model_cfg.size).width, text)
    return C.TRAIN_MULTIPLIER * text_encoder_flops(model_cfg, text)


def _projection_flops(width: int, text: TextSpec) -> int:
    return 0 if text.frozen_width == width else C.linear(text.max_length, text.frozen_width, width)


def frozen_stand_in(model_cfg: ModelConfig, text: TextSpec) -> nn.Module | None:
    """For parameter counts: what a frozen encoder adds to the network's parameters (its projection only)."""
    if not text.frozen_flops:
        return None
    width = get_size(model_cfg.size).width
    return nn.Identity() if text.frozen_width == width else nn.Linear(text.frozen_width, width)


def inference(sample):
    """Run a sampler under torch.inference_mode (no autograd bookkeeping on any tensor: next-token sampling at 2x64
    ran 5–10 % faster on CPU than under no_grad, the same tokens) and hand back an ordinary tensor, so a caller may
    still change it in place."""

    @functools.wraps(sample)
    def run(*args, **kwargs):
        with torch.inference_mode():
            out = sample(*args, **kwargs)
        return out.clone()

    return run


def cfg_copies(cfg_scale: float) -> int:
    """Batched classifier-free guidance runs every caption twice (with and without it) unless s == 1."""
    return 1 if cfg_scale == 1 else 2


def guide(out: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """uncond + s·(cond − uncond) on a batch [cond; uncond]; s == 1 never reaches here (no uncond pass)."""
    cond, uncond = out.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


# Random draws come from the caller's generator on its own device, then move to the model's device, so a CPU
# generator drives a GPU model and the same seed gives the same draws everywhere. The noise of sampling (token
# draws, MaskGIT's confidence noise) instead comes from `sampling_generator`: on a CPU run that is the caller's
# generator itself (the same stream as these draws), on a GPU run a generator on the GPU (no CPU draw + host→device
# copy).
def rand(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def sampling_generator(generator: torch.Generator, device) -> torch.Generator:
    """The generator sampling noise for tensors on `device` is drawn from: `generator` itself when it lives there,
    else `derived_generator` on `device`. When token draws were Gumbel-max, masked sampling at 256 tokens × 8192
    codes drew 0.5 GB of uniforms a step: on one CPU thread plus a host→device copy that ran at a tenth of the GPU's
    speed."""
    device = torch.device(device)
    return generator if generator.device == device else derived_generator(generator, device)


def derived_generator(generator: torch.Generator, device) -> torch.Generator:
    """A fresh generator on `device` seeded by one int64 drawn from `generator`: the same seed gives the same
    stream, and each call moves `generator` on by exactly that one draw."""
    seed = int(torch.randint(2**63 - 1, (), generator=generator, device=generator.device))
    return torch.Generator(device).manual_seed(seed)


def gumbel(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Gumbel(0, 1) draws −log(−log u) on `device` (u uniform on [0, 1), clamped off 0; −log u ≥ −log(1 − 2⁻²⁴)
    ≈ 6e-8 > 0 needs no clamp of its own)."""
    u = torch.rand(shape, generator=sampling_generator(generator, device), device=device)
    return u.clamp_min_(1e-20).log_().neg_().log_().neg_()


def sample_logits(
    logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0, top_k: int = 0
) -> torch.Tensor:
    """Draw ids [...] from softmax(logits / temperature) [..., V] by the inverse CDF: one uniform a row, placed in
    the running sum of exp(logits − max) (an unnormalised CDF; the division is skipped by scaling the uniform). The
    same distribution as Gumbel-max with one uniform a row instead of V (drawing those by mt19937 on one CPU thread
    took a tenth of next-token decoding at the study's sizes). Drawn on the generator's device when it is the
    logits' (CPU), else on a generator derived for theirs. temperature 0 is greedy."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature == 0:
        return logits.argmax(-1)
    scaled = logits.float() if temperature == 1 else logits.float() / temperature
    cdf = (scaled - scaled.amax(-1, keepdim=True)).exp_().cumsum_(-1)  # [..., V], nondecreasing, last = total
    total = cdf[..., -1:]
    u = torch.rand(total.shape, generator=sampling_generator(generator, logits.device), device=logits.device)
    # right=True skips tokens of zero mass (flat steps); the point stays below the total even for a uniform of 1
    # (a generator on (0, 1]; torch's is [0, 1), whose u·total rounds below the total)
    point = torch.minimum(u.mul_(total), torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True)[..., 0]
