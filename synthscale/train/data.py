"""What the trainer reads: a latent source, the order it reads it in, and the seeds of every random draw.

A *source* is anything with `.spec: LatentSpec`, `.text_spec: TextSpec`, `__len__` and
`.get_batch(indices: LongTensor, generator) -> {"latents", "text"}` — the latent cache, or `RandomLatents`.

Nothing here keeps hidden state: the examples of step s, and the generators that draw its noise, are pure
functions of (seed, step, piece), so a resumed run reads exactly what an uninterrupted one would have read.
"""

from __future__ import annotations

import hashlib
import re

import torch

from synthscale.compute.device import pick_device
from synthscale.config import ConfigError, RunConfig
from synthscale.data.latents import LatentSpec, TextSpec


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed for one purpose ('init', 'perm', 'data', 'loss') and position; independent streams."""
    text = "/".join([str(seed), purpose, *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


class DataOrder:
    """Epoch e reads a seeded permutation of the source's indices; the epochs lie end to end, and step s takes
    the global batch at positions [s·B, (s+1)·B) of that stream (a batch may straddle two epochs)."""

    def __init__(self, size: int, batch_size: int, seed: int):
        if size < 1:
            raise ConfigError("the latent source is empty; check data.size and the cache")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.size, generator=generator(derive_seed(self.seed, "perm", epoch))))
        return self._perm[1]

    def batch(self, step: int) -> torch.Tensor:
        """Global source indices of step `step`: int64 [batch_size]."""
        start = step * self.batch_size
        parts, pos = [], start
        while pos < start + self.batch_size:
            epoch, offset = divmod(pos, self.size)
            take = min(self.size - offset, start + self.batch_size - pos)
            parts.append(self.permutation(epoch)[offset : offset + take])
            pos += take
        return torch.cat(parts)

    def position(self, step: int) -> dict[str, int]:
        """Where the stream stands before step `step` (stored in checkpoints)."""
        samples = step * self.batch_size
        return {"samples_seen": samples, "epoch": samples // self.size, "offset_in_epoch": samples % self.size}


# ---------------------------------------------------------------------------------------------- sources


class RandomLatents:
    """Random latents with random captions, for trainer tests and benchmarks. Item i is the same on every call
    for continuous latents' mean and for tokens; continuous latents add posterior-like noise from `generator`,
    like a KL cache does."""

    def __init__(self, spec: LatentSpec, text_spec: TextSpec, size: int, seed: int = 0):
        self.spec, self.text_spec, self.size = spec, text_spec, size
        g = generator(derive_seed(seed, "random-latents"))
        shape = (
            (size, spec.height, spec.width)
            if spec.kind == "discrete"
            else (size, spec.channels, spec.height, spec.width)
        )
        if spec.kind == "discrete":
            self.latents = torch.randint(0, spec.vocab_size, shape, generator=g)
        else:
            self.latents = torch.randn(shape, generator=g)
        L = text_spec.max_length
        lengths = torch.randint(1, L + 1, (size,), generator=g)
        words = torch.randint(3, text_spec.vocab_size, (size, L), generator=g)  # 0-2: pad, unk, null
        self.text = torch.where(torch.arange(L) < lengths[:, None], words, torch.full_like(words, text_spec.pad_id))

    def __len__(self) -> int:
        return self.size

    def get_batch(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        latents = self.latents[indices]
        if self.spec.kind == "continuous":
            latents = latents + 0.1 * torch.randn(latents.shape, generator=generator)
        return {"latents": latents, "text": self.text[indices]}


_RANDOM = re.compile(r"continuous:(\d+)x(\d+)x(\d+)|discrete:(\d+)x(\d+):(\d+)")


def random_latent_spec(text: str) -> LatentSpec:
    """'continuous:4x8x8' → LatentSpec('continuous', 4, 8, 8); 'discrete:8x8:512' → 8×8 tokens of 512 codes."""
    m = _RANDOM.fullmatch(text.strip())
    if not m:
        raise ConfigError(
            f"random_latents={text!r}: expected 'continuous:CxHxW' (e.g. continuous:4x8x8) "
            "or 'discrete:HxW:VOCAB' (e.g. discrete:8x8:512)"
        )
    if m.group(1):
        c, h, w = map(int, m.group(1, 2, 3))
        return LatentSpec("continuous", c, h, w)
    h, w, v = map(int, m.group(4, 5, 6))
    return discrete_spec(h, w, v)


def discrete_spec(height: int, width: int, vocab: int) -> LatentSpec:
    """Random tokens of `vocab` codes; a power of two splits into bits (as LFQ's), so factorised heads apply."""
    bits = max(1, (vocab - 1).bit_length())
    levels = (2,) * bits if vocab == 2**bits else None
    return LatentSpec("discrete", bits, height, width, vocab_size=vocab, levels=levels)


def open_source(run_cfg: RunConfig, split: str = "train", is_main: bool = True, barrier=lambda: None, device=None):
    """The latent source a run config names. With an autoencoder, its cache is built once (by the main
    process, on `device`: default CUDA when present, else the CPU; the others wait at `barrier`) under
    `cache_root`, then opened."""
    from synthscale.data.text import tokenizer_for

    if run_cfg.random_latents is not None:
        tok = tokenizer_for(run_cfg.data)
        text_spec = TextSpec(tok.vocab_size, tok.max_length, tok.pad_id)
        return RandomLatents(
            random_latent_spec(run_cfg.random_latents), text_spec, run_cfg.data.size, run_cfg.data.seed
        )
    if run_cfg.autoencoder is None:
        raise ConfigError(
            "the run names no latents: set autoencoder=<dir of a trained autoencoder> "
            "(or random_latents=continuous:4x8x8 for a trainer smoke test)"
        )
    return _autoencoder_cache(run_cfg, split, is_main, barrier, device)


def _autoencoder_cache(run_cfg: RunConfig, split: str, is_main: bool, barrier, device):
    """The run's dataset split encoded by its autoencoder on `device`: built (or resumed) once, then opened
    everywhere."""
    from synthscale.autoencoders import load_autoencoder
    from synthscale.data import get_dataset
    from synthscale.data.latents import build_cache, open_cache
    from synthscale.data.text import tokenizer_for

    autoencoder = load_autoencoder(run_cfg.autoencoder)
    dataset, tokenizer = get_dataset(run_cfg.data, split), tokenizer_for(run_cfg.data)
    if is_main:
        with torch.random.fork_rng(devices=[]):  # encoding must not move the run's RNG
            build_cache(autoencoder.to(pick_device(device)), dataset, tokenizer, run_cfg.cache_root, progress=False)
    barrier()
    return open_cache(run_cfg.cache_root, autoencoder, dataset, tokenizer)
