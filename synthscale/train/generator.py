"""A trained run as a text-to-image generator: `load_generator(run_dir, ...)` rebuilds the network of one
checkpoint (EMA or raw weights), and its `generate(prompts, steps=, cfg=, seed=)` returns uint8 images decoded by
the run's autoencoder. The evaluator samples through the same `load_generator`; `synthscale sample` and
`synthscale serve` go through `generate`.

    from synthscale.train import load_generator
    g = load_generator("runs/default/train/flow-…", milestone="last")
    images = g.generate(["a small red circle above a large blue square"], n=4, steps=20, cfg=3, seed=0)

The same arguments give the same pixels on the same device (one `torch.Generator` seeded with `seed` draws
every random number of the call, prompt-major). Prompts are checked before sampling: an empty one is refused,
one longer than the tokenizer holds is cut to its first `max_caption_tokens` tokens, and unknown words (which the
network only ever saw as `<unk>`) are named by `check_prompt`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from synthscale.config import RunConfig, from_stored
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.data.pixels import to_uint8
from synthscale.train import checkpoint as ckpt
from synthscale.train.network import build_network, check_recorded

# Guidance scales accepted: 0 is the unconditional model, 1 the conditional one; past ~20 every paradigm here
# saturates (flow's velocity overshoots, token logits become one-hot), so larger values are refused as typos.
CFG_RANGE = (0.0, 20.0)
# `--milestone` values from this on are training FLOPs, below it indices (no run has a thousand milestones)
FLOPS_THRESHOLD = 1000


def list_checkpoints(run_dir: str | Path) -> list[ckpt.CheckpointInfo]:
    """The run's intact checkpoints, oldest first: `.milestone` (0, 1, 2, … along the run's milestones; None for
    resume-only ones), `.milestone_flops`, `.step`, `.train_flops`, `.path`, `.is_final`."""
    return ckpt.list_checkpoints(run_dir)


def milestone_checkpoints(run_dir: str | Path) -> list[ckpt.CheckpointInfo]:
    """The run's milestone checkpoints (and the final one), in order of training FLOPs: what evaluation scores
    and what `milestone=INDEX` counts."""
    infos = [i for i in list_checkpoints(run_dir) if i.milestone is not None or i.is_final]
    if not infos:
        raise FileNotFoundError(f"{run_dir} has no milestone checkpoints; train the run first")
    return sorted(infos, key=lambda i: i.train_flops)


def pick_milestone(run_dir: str | Path, milestone: str | int | float = "last") -> ckpt.CheckpointInfo:
    """A milestone checkpoint: "last", an index along the milestones (negative counts from the end), or training
    FLOPs (a number ≥ 1000, e.g. 3e12: the milestone nearest to it on a log scale). Strings are parsed likewise."""
    infos = milestone_checkpoints(run_dir)
    where = ", ".join(f"{k}: {i.train_flops:.3g}" for k, i in enumerate(infos))
    value: Any = milestone
    if isinstance(value, str) and value != "last":
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise ValueError(
                    f"milestone must be 'last', an index or training FLOPs (e.g. 3e12), got {milestone!r}"
                ) from None
    if value == "last":
        return infos[-1]
    if isinstance(value, int) and abs(value) < FLOPS_THRESHOLD:
        if not -len(infos) <= value < len(infos):
            raise ValueError(f"{run_dir} has {len(infos)} milestones (index: training FLOPs — {where}), not {value}")
        return infos[value]
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"milestone training FLOPs must be a positive number, got {milestone!r}")
    return min(infos, key=lambda i: abs(math.log10(max(i.train_flops, 1)) - math.log10(value)))


@dataclass
class PromptCheck:
    """What the tokenizer makes of one prompt: the text it will encode and what the user should know."""

    prompt: str
    used: str  # the prompt as encoded (cut when too long)
    tokens: int  # tokens of the original prompt
    max_tokens: int
    unknown: list[str]  # words outside the vocabulary (encoded as <unk>)

    @property
    def empty(self) -> bool:
        return self.tokens == 0

    @property
    def truncated(self) -> bool:
        return self.tokens > self.max_tokens

    def notes(self) -> list[str]:
        """One plain sentence per problem (empty list: nothing to say)."""
        out = []
        if self.empty:
            out.append("the prompt is empty: type a caption, e.g. 'a small red circle above a large blue square'")
        if self.truncated:
            out.append(
                f"the prompt has {self.tokens} tokens but the model reads {self.max_tokens}; "
                f"it was cut to {self.used!r}"
            )
        if self.unknown:
            out.append(
                f"unknown word{'s' if len(self.unknown) > 1 else ''} {', '.join(map(repr, self.unknown))}: "
                "not in the training captions' vocabulary, the model reads each as <unk>"
            )
        return out


@dataclass
class TrainedGenerator:
    """A trained run at one checkpoint, ready to sample (`load_generator`; not a torch.Generator)."""

    model: nn.Module  # in eval mode, on `device`
    objective: Any
    run_cfg: RunConfig
    latent_spec: LatentSpec
    text_spec: TextSpec
    checkpoint: ckpt.CheckpointInfo
    weights: str  # "ema" | "raw"
    run_dir: Path | None = None
    _autoencoder: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------------------------------ settings

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_tokens(self) -> int:
        return self.objective.image_tokens(self.run_cfg.model, self.latent_spec)

    def steps_range(self) -> tuple[int, int | None]:
        """Sampling steps this model accepts: (lowest, highest or None when unbounded)."""
        return self.objective.steps_range(self.image_tokens)

    def default_steps(self) -> int:
        return self.objective.default_steps(self.latent_spec)

    def check_settings(self, steps: int, cfg: float) -> None:
        """ValueError naming the allowed range when `steps` or `cfg` is outside what this model samples."""
        self.objective.check_steps(steps, self.image_tokens)
        low, high = CFG_RANGE
        if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not low <= cfg <= high:
            raise ValueError(f"{self.objective.name}: CFG scale must be a number in {low:g}..{high:g}, got {cfg!r}")

    def sample_flops(self, steps: int, cfg: float) -> dict[str, int]:
        """Analytic FLOPs to sample one image (2 per multiply-add, CFG included, decoder excluded):
        {"generator", "text_encoder"} — the generator's share is what the study's records call sample FLOPs."""
        f = self.objective.sample_flops_split(self.run_cfg.model, self.latent_spec, self.text_spec, steps, cfg)
        return {"generator": int(f.generator), "text_encoder": int(f.text_encoder)}

    # ------------------------------------------------------------------------------------------ prompts

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from synthscale.data.text import tokenizer_for

            self._tokenizer = tokenizer_for(self.run_cfg.data)
            self._tokenizer.truncate = True  # this copy cuts long prompts; check_prompt says so
        return self._tokenizer

    def check_prompt(self, prompt: str) -> PromptCheck:
        tok = self.tokenizer
        if hasattr(tok, "words"):  # the word vocabulary: unknown words can be named
            words = tok.words(prompt)
            unknown = sorted({w for w in words if w not in tok.stoi}, key=words.index)
            used = " ".join(words[: tok.max_length])
            return PromptCheck(prompt, used, len(words), tok.max_length, unknown)
        n = tok.length(prompt) if prompt.strip() else 0  # a pretrained tokenizer knows every word (subwords)
        used = prompt if n <= tok.max_length else tok.hf.decode(tok.encode([prompt])[0], skip_special_tokens=True)
        return PromptCheck(prompt, used, n, tok.max_length, [])

    # ------------------------------------------------------------------------------------------ sampling

    @property
    def autoencoder(self):
        if self._autoencoder is None:
            from synthscale.autoencoders import load_autoencoder

            if self.run_cfg.autoencoder is None:
                raise ValueError("this run was trained on random latents; there is nothing to decode into images")
            self._autoencoder = load_autoencoder(self.run_cfg.autoencoder).to(self.device).eval()
        return self._autoencoder

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        steps: int | None = None,
        cfg: float = 3.0,
        seed: int = 0,
        batch_size: int = 16,
        pil: bool = False,
    ) -> np.ndarray | list:
        """`n` images per prompt, prompt-major: uint8 [len(prompts)·n, H, W, 3] (or PIL images with pil=True).
        `steps` defaults to the objective's; the same arguments give the same pixels."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts; wrap a single prompt in a list")
        if not prompts or n < 1 or batch_size < 1:
            raise ValueError(
                f"need at least one prompt, n ≥ 1 and batch_size ≥ 1 (got {len(prompts)}, {n}, {batch_size})"
            )
        steps = self.default_steps() if steps is None else steps
        self.check_settings(steps, cfg)
        checks = [self.check_prompt(p) for p in prompts]
        empty = [i for i, c in enumerate(checks) if c.empty]
        if empty:
            raise ValueError(f"prompt {empty[0]} is empty: {checks[empty[0]].notes()[0]}")
        text = self.tokenizer.encode([c.used for c in checks for _ in range(n)]).to(self.device)
        rng = torch.Generator(self.device).manual_seed(seed)
        out = []
        for i in range(0, len(text), batch_size):
            latents = self.objective.sample(self.model, text[i : i + batch_size], steps, float(cfg), rng)
            out.append(to_uint8(self.autoencoder.decode(latents)))
        images = np.concatenate(out)
        if pil:
            from PIL import Image

            return [Image.fromarray(im) for im in images]
        return images


def sampling_limits(run_dir: str | Path, checkpoint: ckpt.CheckpointInfo | None = None) -> dict[str, Any]:
    """What a run accepts for sampling, read from its files without building the network: {"objective",
    "steps_range": [lowest, highest or None], "default_steps", "cfg_range", "image_tokens", "max_caption_tokens"}."""
    from synthscale.objectives import get_objective

    run_dir = Path(run_dir)
    cfg_data = _read_json(run_dir / "config.json")
    if cfg_data is None:
        raise FileNotFoundError(f"{run_dir}/config.json is missing or unreadable: is it a run folder?")
    run_cfg = from_stored(RunConfig, cfg_data, source=str(run_dir / "config.json"))
    info = checkpoint or milestone_checkpoints(run_dir)[-1]
    latent = LatentSpec(**ckpt.read_meta(info.path, verify=False)["latent_spec"])
    objective = get_objective(run_cfg.objective)
    tokens = objective.image_tokens(run_cfg.model, latent)
    return {
        "objective": objective.name,
        "steps_range": list(objective.steps_range(tokens)),
        "default_steps": objective.default_steps(latent),
        "cfg_range": list(CFG_RANGE),
        "image_tokens": tokens,
        "max_caption_tokens": run_cfg.data.max_caption_tokens,
    }


def load_generator(
    run_dir: str | Path,
    checkpoint: ckpt.CheckpointInfo | int | str | None = None,
    weights: str = "ema",
    device: str | torch.device = "cpu",
    milestone: str | int | float | None = None,
) -> TrainedGenerator:
    """A trained generator ready to sample: `checkpoint` is a CheckpointInfo, a step, "final"/None (the
    newest) or a checkpoint folder; or `milestone` picks one the way `pick_milestone` does ("last", an index,
    training FLOPs). `weights` picks the EMA or the raw weights. The files are verified first."""
    from synthscale.objectives import get_objective

    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    run_dir = Path(run_dir)
    infos = ckpt.list_checkpoints(run_dir)
    if not infos:
        raise FileNotFoundError(
            f"{run_dir} has no intact checkpoints; train it first (synthscale train --out {run_dir})"
        )
    if milestone is not None:
        if checkpoint is not None:
            raise ValueError("pass checkpoint or milestone, not both")
        checkpoint = pick_milestone(run_dir, milestone)
    info = _find_checkpoint(run_dir, infos, checkpoint)
    meta = ckpt.read_meta(info.path, verify=True)
    cfg_data = _read_json(run_dir / "config.json")
    if cfg_data is None:
        raise FileNotFoundError(f"{run_dir}/config.json is missing or unreadable")
    run_cfg = from_stored(RunConfig, cfg_data, source=str(run_dir / "config.json"))
    latent_spec, text_spec = LatentSpec(**meta["latent_spec"]), TextSpec(**meta["text_spec"])
    objective = get_objective(run_cfg.objective)
    model, text_spec, encoder_facts = build_network(objective, run_cfg, latent_spec, text_spec)
    check_recorded(encoder_facts, meta, str(info.path))
    model.load_state_dict(ckpt.load_tensors(info.path, "ema" if weights == "ema" else "model"), strict=True)
    return TrainedGenerator(model.to(device).eval(), objective, run_cfg, latent_spec, text_spec, info, weights, run_dir)


def _find_checkpoint(run_dir: Path, infos: list[ckpt.CheckpointInfo], checkpoint) -> ckpt.CheckpointInfo:
    if checkpoint is None or checkpoint == "final":
        return infos[-1]
    if isinstance(checkpoint, ckpt.CheckpointInfo):
        return checkpoint
    if isinstance(checkpoint, int):
        info = next((i for i in infos if i.step == checkpoint), None)
        if info is None:
            raise FileNotFoundError(
                f"{run_dir} has no checkpoint at step {checkpoint}; steps: {', '.join(str(i.step) for i in infos)}"
            )
        return info
    info = next((i for i in infos if i.path == Path(checkpoint) or i.name == str(checkpoint)), None)
    if info is None:
        raise FileNotFoundError(f"no intact checkpoint {checkpoint!r} in {run_dir}")
    return info


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
