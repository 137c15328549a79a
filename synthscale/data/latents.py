"""The latent cache: a dataset split encoded once by an autoencoder, read fast by generator training.

`LatentSpec` and `TextSpec` describe what a generator consumes; objectives build their input embedding and
output head from them, so nothing above the cache needs to know which autoencoder made it.

Layout of root/<key>/ (key = hash of dataset config + split, autoencoder weights, tokenizer):
  build.json                 what is being built, written first;
  shard-00000.safetensors …  one atomic file each: the encoder's tensors (continuous: mean, logvar;
                             discrete: tokens), caption token ids, and captions/attributes as JSON metadata;
  cache.json                 written last: the build is complete;
  tokenizer.json             the word vocabulary the captions were encoded with (WordTokenizer.save);
  data_report_<split>.json   user data: the items the split skipped and why, the captions it truncated.
An interrupted build keeps its finished shards and resumes. This module takes any encoder with the
`CacheEncoder` methods; it does not import `synthscale.autoencoders` (data sits below it: docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from synthscale import atomic
from synthscale.config import ConfigError, canonical, config_hash
from synthscale.progress import progress_bar


@dataclass(frozen=True)
class LatentSpec:
    """The shape of one cached example. Continuous: float latents [channels, height, width] (already
    shifted/scaled to unit variance). Discrete: int64 token grid [height, width] with `vocab_size` codes; `levels`,
    where known, splits a code id into per-channel digits (id = Σ digit_i · Π_{j<i} levels_j: FSQ's levels, LFQ's
    [2] * bits), which factorised token heads use. Caches and checkpoints written before `levels` existed load
    with None (the cache fills it in from its autoencoder when opened)."""

    kind: Literal["continuous", "discrete"]
    channels: int  # continuous: latent channels; discrete: bits/levels per code (informational)
    height: int
    width: int
    vocab_size: int | None = None  # discrete only
    levels: tuple[int, ...] | None = None  # discrete only: levels per channel, Π levels = vocab_size

    def __post_init__(self):
        if self.levels is None:
            return
        levels = tuple(int(n) for n in self.levels)  # a JSON list reads back as a tuple
        object.__setattr__(self, "levels", levels)
        if self.kind != "discrete" or math.prod(levels) != self.vocab_size or min(levels) < 2:
            raise ValueError(
                f"LatentSpec levels {list(levels)} must be ≥ 2 each and multiply to the discrete vocab_size "
                f"({self.vocab_size}); leave levels out if the codes have no per-channel structure"
            )

    @property
    def tokens(self) -> int:
        """Image positions (before any patchify)."""
        return self.height * self.width


@dataclass(frozen=True)
class TextSpec:
    """Caption token ids as the tokenizer writes them: int64 [B, max_length], right-padded with pad_id."""

    vocab_size: int
    max_length: int
    pad_id: int = 0
    # a frozen pretrained caption encoder (data.text_encoder) instead of the learned one: its forward FLOPs per
    # caption and its output width (a trained linear layer projects it to the backbone width); 0 = learned
    frozen_flops: int = 0
    frozen_width: int = 0


# ---------------------------------------------------------------------------------------------- the cache

FORMAT = 1
BUILD, COMPLETE = "build.json", "cache.json"
TOKENIZER = "tokenizer.json"  # beside a cache whose captions a word vocabulary encoded (WordTokenizer.load)


class CacheError(ConfigError):
    """A latent cache that cannot be used as asked (another autoencoder or dataset, incomplete, corrupt)."""


class CacheEncoder(Protocol):
    """What the cache needs from an autoencoder (`synthscale.autoencoders.Autoencoder` is one)."""

    name: str
    weights_hash: str

    def latent_spec(self, resolution: int) -> LatentSpec: ...

    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """float [B, 3, H, W] in [-1, 1] → continuous {"mean", "logvar"} or discrete {"tokens": int64 [B, h, w]}."""
        ...


def tokenizer_identity(tokenizer) -> dict[str, Any]:
    """What fixes a tokenizer's output: its class, length, padding and (when it has one) its vocabulary."""
    ident = {
        "class": type(tokenizer).__name__,
        "vocab_size": tokenizer.vocab_size,
        "max_length": tokenizer.max_length,
        "pad_id": tokenizer.pad_id,
        "truncate": getattr(tokenizer, "truncate", False),
    }
    itos = getattr(tokenizer, "itos", None)
    if itos is not None:
        ident["vocab"] = hashlib.sha256("\n".join(itos).encode()).hexdigest()[:16]
    return ident


def dataset_identity(dataset) -> dict[str, Any]:
    """A dataset split's identity: its config, split and length (datasets from `synthscale.data` have both)."""
    cfg, split = getattr(dataset, "cfg", None), getattr(dataset, "split", None)
    if cfg is None or split is None:
        raise CacheError(
            f"build_cache needs a dataset with .cfg (DataConfig) and .split, as synthscale.data.get_dataset returns; "
            f"got {type(dataset).__name__}"
        )
    return {"config": canonical(cfg), "split": split, "length": len(dataset)}


def _encode_shard(encoder, dataset, tokenizer, items: range, batch_size: int, device, bar):
    """One shard's tensors (the encoder's outputs on the CPU, caption tokens) and its captions and attributes."""
    from synthscale.data.pixels import to_tensor

    parts: dict[str, list[torch.Tensor]] = {}
    captions, attributes = [], []
    for b in range(items.start, items.stop, batch_size):
        batch = [dataset[i] for i in range(b, min(b + batch_size, items.stop))]
        images = to_tensor(np.stack([it["image"] for it in batch])).to(device)
        with torch.no_grad():
            encoded = encoder.encode_for_cache(images)
        for name, t in encoded.items():
            parts.setdefault(name, []).append(t.detach().cpu())
        captions += [it["caption"] for it in batch]
        attributes += [it.get("attributes") for it in batch]
        bar.update(len(batch))
    tensors = {name: torch.cat(ts) for name, ts in parts.items()}
    tensors["text"] = tokenizer.encode(captions).to(torch.int32)
    return tensors, {"captions": json.dumps(captions), "attributes": json.dumps(attributes, default=str)}


def _device_of(encoder) -> torch.device:
    """Where the encoder's weights are (an encoder that is not a torch module: the CPU)."""
    params = encoder.parameters() if isinstance(encoder, torch.nn.Module) else iter(())
    first = next(params, None)
    return first.device if first is not None else torch.device("cpu")


def cache_identity(encoder: CacheEncoder, dataset, tokenizer) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "dataset": dataset_identity(dataset),
        "autoencoder": {"name": encoder.name, "weights_hash": encoder.weights_hash},
        "tokenizer": tokenizer_identity(tokenizer),
    }


def cache_key(identity: dict[str, Any]) -> str:
    """The folder name: a hash of (dataset config + split, autoencoder weights, tokenizer)."""
    return config_hash(identity)


def cache_path(root: str | Path, encoder: CacheEncoder, dataset, tokenizer) -> Path:
    return Path(root) / cache_key(cache_identity(encoder, dataset, tokenizer))


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"{path} is unreadable ({e}); delete {path.parent} and rebuild the cache") from e


def _shard_ok(path: Path, key: str, count: int) -> bool:
    """A finished shard of this cache: readable header, our key, the expected item count."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return meta.get("key") == key and int(meta.get("count", -1)) == count and "text" in f.keys()
    except Exception:  # a torn or foreign file: encode the shard again
        return False


def build_cache(
    encoder: CacheEncoder,
    dataset,
    tokenizer,
    root: str | Path,
    shard_size: int = 4096,
    batch_size: int = 256,
    progress: bool = True,
) -> LatentCache:
    """Encode every item of `dataset` once into shards under `root/<key>/` and open the result.

    Already complete: opened, nothing is encoded. Interrupted earlier: finished shards are kept, the rest encoded.
    The folder of a different build (same key, other identity — never expected) is refused, not overwritten.
    Images are encoded on the encoder's device (move the autoencoder there first)."""
    identity = cache_identity(encoder, dataset, tokenizer)
    key = cache_key(identity)
    path = Path(root) / key
    if (path / COMPLETE).is_file():
        return _with_levels(LatentCache(path, expect=identity), encoder, dataset)
    if (path / BUILD).is_file():
        previous = _read_json(path / BUILD)
        if previous.get("identity") != identity:
            raise CacheError(f"{path} holds a build of another dataset/autoencoder/tokenizer; delete it and rebuild")
    n = len(dataset)
    if n == 0:
        raise CacheError(f"the {dataset.split} split is empty; nothing to cache")
    resolution = dataset.cfg.resolution
    spec, device = encoder.latent_spec(resolution), _device_of(encoder)
    plan = {"identity": identity, "count": n, "shard_size": shard_size}
    atomic.write_json(path / BUILD, plan)
    shards = [(k, s, min(s + shard_size, n)) for k, s in enumerate(range(0, n, shard_size))]
    todo = [(k, s, e) for k, s, e in shards if not _shard_ok(path / _shard_name(k), key, e - s)]
    bar = progress_bar(
        total=sum(e - s for _, s, e in todo), desc=f"cache {encoder.name} {dataset.split}", unit="img", enabled=progress
    )
    for k, start, end in todo:
        tensors, meta = _encode_shard(encoder, dataset, tokenizer, range(start, end), batch_size, device, bar)
        if "tokens" in tensors:  # int64 in memory; the smallest integer type that holds the vocabulary on disk
            tensors["tokens"] = tensors["tokens"].to(torch.int16 if spec.vocab_size <= 2**15 else torch.int32)
        else:
            tensors = {k_: v if k_ == "text" else v.float() for k_, v in tensors.items()}
        meta = {"key": key, "start": str(start), "count": str(end - start), **meta}
        atomic.save_safetensors(path / _shard_name(k), tensors, metadata=meta)
        _write_data_report(dataset, path)  # after every shard: an interrupted build keeps what it saw
    bar.close()
    if hasattr(tokenizer, "save"):  # a word vocabulary built from the data: keep it with what it encoded
        tokenizer.save(path / TOKENIZER)
    extra: dict[str, Any] = {}
    if spec.kind == "continuous":
        extra = {"shift": float(encoder.shift), "scale": float(encoder.scale)}
    atomic.write_json(
        path / COMPLETE,
        {
            "identity": identity,
            "key": key,
            "count": n,
            "shards": [_shard_name(k) for k, _, _ in shards],
            "spec": {k: v for k, v in dataclasses.asdict(spec).items() if k != "levels" or v is not None},
            "text_spec": {
                "vocab_size": tokenizer.vocab_size,
                "max_length": tokenizer.max_length,
                "pad_id": tokenizer.pad_id,
            },
            **extra,
        },
    )
    return _with_levels(LatentCache(path, expect=identity), encoder, dataset)


def _with_levels(cache: LatentCache, encoder: CacheEncoder, dataset) -> LatentCache:
    """A cache written before LatentSpec had `levels`: take them from the autoencoder that built it."""
    if cache.spec.kind == "discrete" and cache.spec.levels is None:
        levels = encoder.latent_spec(dataset.cfg.resolution).levels
        if levels is not None and math.prod(levels) == cache.spec.vocab_size:
            cache.spec = dataclasses.replace(cache.spec, levels=levels)
    return cache


def _write_data_report(dataset, path: Path) -> None:
    """User data: what the split left out and why (`dataset.report()`), as data_report_<split>.json beside the
    cache, merged with the list an interrupted earlier build wrote (its shards are not decoded again)."""
    if not hasattr(dataset, "report"):
        return
    report, file = dataset.report(), path / f"data_report_{dataset.split}.json"
    if file.is_file():
        try:
            earlier = json.loads(file.read_text()).get("skipped", [])
        except (OSError, ValueError):  # a torn report: this build's list stands alone
            earlier = []
        seen = {(s.get("key"), s.get("reason")) for s in report["skipped"]}
        report["skipped"] += [s for s in earlier if (s.get("key"), s.get("reason")) not in seen]
        report["skipped_count"] = len(report["skipped"])
    atomic.write_json(file, report)


def open_cache(root: str | Path, encoder: CacheEncoder, dataset, tokenizer) -> LatentCache:
    """The complete cache of exactly this (dataset split, autoencoder, tokenizer), or a `CacheError`."""
    identity = cache_identity(encoder, dataset, tokenizer)
    path = Path(root) / cache_key(identity)
    if not (path / COMPLETE).is_file():
        raise CacheError(
            f"no complete latent cache for autoencoder {encoder.name!r} ({encoder.weights_hash}) on the "
            f"{dataset.split} split at {path}; build it with synthscale.data.latents.build_cache"
        )
    return _with_levels(LatentCache(path, expect=identity), encoder, dataset)


class LatentCache:
    """A built cache, held in RAM as contiguous tensors so a batch is one vectorised gather.

    `get_batch(indices, generator)` → {"latents", "text"}: continuous latents are sampled from the stored
    posterior (mean + exp(logvar/2)·ε, ε from `generator`) then shifted/scaled to unit variance with the
    autoencoder's stored factors; discrete latents are the int64 token grids. `expect` (an identity) or
    `autoencoder` (anything with `weights_hash`) make opening refuse a cache built from something else."""

    def __init__(self, path: str | Path, expect: dict[str, Any] | None = None, autoencoder=None):
        from safetensors.torch import load_file

        self.path = Path(path)
        if not (self.path / COMPLETE).is_file():
            hint = (
                " (an interrupted build: run build_cache again to resume it)" if (self.path / BUILD).is_file() else ""
            )
            raise CacheError(f"{self.path} is not a complete latent cache{hint}")
        self.meta = _read_json(self.path / COMPLETE)
        self.identity = self.meta["identity"]
        if expect is not None and expect != self.identity:
            raise CacheError(
                f"{self.path} was built from {_describe(self.identity)}, not {_describe(expect)}; "
                "build a cache for this one with build_cache"
            )
        if autoencoder is not None:
            self.check_autoencoder(autoencoder)
        self.spec = LatentSpec(**self.meta["spec"])
        self.text_spec = TextSpec(**self.meta["text_spec"])
        shards = []
        for name in self.meta["shards"]:
            try:
                shards.append(load_file(str(self.path / name)))
            except Exception as e:
                raise CacheError(
                    f"{self.path / name} is missing or corrupt ({type(e).__name__}); delete "
                    f"{self.path} and rebuild the cache"
                ) from e
        cat = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        if len(cat["text"]) != self.meta["count"]:
            raise CacheError(f"{self.path}: shards hold {len(cat['text'])} items, cache.json says {self.meta['count']}")
        self.text = cat["text"].long()  # [N, L]
        if self.spec.kind == "continuous":
            shift, scale = self.meta["shift"], self.meta["scale"]
            # fold the shift/scale in once: latents = (mean − shift)·scale + exp(logvar/2)·scale·ε
            self.loc = ((cat["mean"] - shift) * scale).contiguous()  # [N, c, h, w]
            self.spread = (torch.exp(0.5 * cat["logvar"]) * scale).contiguous()
        else:
            self.tokens = cat["tokens"].long().contiguous()  # [N, h, w]
        self._facts: tuple[list[str], list[Any]] | None = None

    def __len__(self) -> int:
        return len(self.text)

    def check_autoencoder(self, autoencoder) -> None:
        """Refuse to pair this cache with an autoencoder other than the one that built it."""
        built = self.identity["autoencoder"]
        if autoencoder.weights_hash != built["weights_hash"]:
            raise CacheError(
                f"{self.path} was built with autoencoder {built['name']!r} (weights {built['weights_hash']}), not "
                f"{autoencoder.name!r} (weights {autoencoder.weights_hash}); decode it with that autoencoder or "
                "build a cache with this one"
            )

    def get_batch(self, indices: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """indices int64 [B] → {"latents": float [B, c, h, w] or int64 [B, h, w], "text": int64 [B, L]}."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if self.spec.kind == "continuous":
            loc = self.loc[indices]
            eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype)
            latents = torch.addcmul(loc, self.spread[indices], eps)
        else:
            latents = self.tokens[indices]
        return {"latents": latents, "text": self.text[indices]}

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One item: {"latents", "text", "attributes"} (continuous latents freshly sampled)."""
        batch = self.get_batch(torch.tensor([i]))
        return {"latents": batch["latents"][0], "text": batch["text"][0], "attributes": self.attributes(i)}

    def _load_facts(self) -> tuple[list[str], list[Any]]:
        if self._facts is None:
            from safetensors import safe_open

            captions, attributes = [], []
            for name in self.meta["shards"]:
                with safe_open(str(self.path / name), framework="pt") as f:
                    meta = f.metadata()
                captions += json.loads(meta["captions"])
                attributes += json.loads(meta["attributes"])
            self._facts = captions, attributes
        return self._facts

    def captions(self, i: int) -> str:
        return self._load_facts()[0][i]

    def attributes(self, i: int) -> Any:
        return self._load_facts()[1][i]


def _describe(identity: dict[str, Any]) -> str:
    ae, ds = identity.get("autoencoder", {}), identity.get("dataset", {})
    return (
        f"autoencoder {ae.get('name')!r} (weights {ae.get('weights_hash')}) on the {ds.get('split')} split "
        f"(data {config_hash(ds.get('config', {}), 8)})"
    )
