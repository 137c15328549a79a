"""What folder and shard datasets share: caption rules, deterministic splits, size caps, skipping bad images.

An item looks exactly like a shapes item: {"image": uint8 [R, R, 3], "caption": str, "attributes": dict}, with
`attributes` = whatever metadata the source gives (extra JSONL/CSV columns, a shard's `{key}.json`) plus
"key": the item's key (which wins over a metadata field of that name).

Splits. Item key k goes to val if u(k) < val_fraction, to test if u(k) < val_fraction + test_fraction, else to
train, where u(k) ∈ [0, 1) is a BLAKE2 hash of (data.seed, k). Membership depends on the key alone, so the
splits are disjoint by construction, identical on every machine, identical for a folder and the shards written
from it, and adding files never moves an old item to another split. Within a split, items are ordered by u and
the first `size` / `val_size` / `test_size` usable ones are taken, so a smaller data size is a subset of a larger
one (the study's data-size axis nests). User data has no `holdout` split (it is empty).

Caption rules (documented in docs/data.md):
  - missing caption (no caption row, no `{key}.txt`, or only whitespace): `missing_caption: skip` (default)
    drops the item — skipped, counted, listed; `missing_caption: empty` keeps it with caption "" (an
    unconditional example);
  - too long (more tokens than `max_caption_tokens`, counted by the caption tokenizer in use — words for the
    word tokenizer, subword tokens with specials for a pretrained one): `long_caption: truncate` (default)
    keeps the item and the tokenizer cuts the caption at `max_caption_tokens`; the item's key is listed in
    `truncated`; `long_caption: skip` drops it (skipped, counted, listed).

Unreadable images never stop a run:
  - while the split is indexed, each candidate gets a cheap check (`_check`: the folder reads the image header
    and, for PNG, verifies every chunk's CRC); a failure skips the item and the next candidate takes its place;
  - an image that passes that check but fails to decode in `ds[i]` is skipped then: item i is served by the
    next readable item of the split (i+1, i+2, … wrapping), so indices stay valid and deterministic, at the
    cost of one duplicate per such image. Both kinds are listed in `ds.skipped` with the reason, and
    `ds.write_report(path)` writes them, with the truncation list, as JSON beside a cache or a run.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthscale import atomic
from synthscale.config import ConfigError, DataConfig
from synthscale.data import SPLITS
from synthscale.data.imagefit import UnreadableImage, check_resolution, fit_image


@dataclass
class Record:
    """One item of a user dataset, before any image is read."""

    key: str
    caption: str | None  # None: the source has no caption for it
    source: Any  # how the dataset reads the encoded image (a path, a shard location)
    where: str  # where a person finds it (relative path, shard:member), for skipped lists
    attributes: dict[str, Any] = field(default_factory=dict)


def split_hash(seed: int, key: str) -> float:
    """u ∈ [0, 1) from (seed, key), the same on every platform."""
    digest = hashlib.blake2b(struct.pack("<q", seed) + key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def split_of(cfg: DataConfig, key: str) -> str:
    u = split_hash(cfg.seed, key)
    if u < cfg.val_fraction:
        return "val"
    if u < cfg.val_fraction + cfg.test_fraction:
        return "test"
    return "train"


def validate_user_config(cfg: DataConfig) -> None:
    check_resolution(cfg)
    if not cfg.path:
        raise ConfigError(f"data.dataset is {cfg.dataset!r} but data.path is not set; --set path=/where/your/data/is")
    for name in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.val_fraction + cfg.test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction = {cfg.val_fraction + cfg.test_fraction} leaves nothing for "
            "train; keep their sum below 1"
        )
    for name in ("size", "val_size", "test_size"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"data.{name} must be ≥ 0, got {getattr(cfg, name)}")
    if cfg.max_caption_tokens < 1:
        raise ConfigError(f"data.max_caption_tokens must be ≥ 1, got {cfg.max_caption_tokens}")


class CaptionedDataset(abc.ABC):
    """Random access over one split of a user dataset. Subclasses index their source into `Record`s and read
    encoded bytes (`_read`); this class applies the rules above. `ds[i]` → {"image", "caption", "attributes"}."""

    kind = "user"

    def __init__(self, cfg: DataConfig, split: str, records: list[Record], index_skipped: list[dict[str, str]]):
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        from synthscale.data.shapes import parse_background
        from synthscale.data.text import caption_length_fn

        self.cfg, self.split = cfg, split
        self.background = parse_background(cfg.background)
        cap = {"train": cfg.size, "val": cfg.val_size, "test": cfg.test_size, "holdout": 0}[split]
        mine = sorted(
            ((split_hash(cfg.seed, r.key), r.key, r) for r in records if split_of(cfg, r.key) == split),
            key=lambda t: (t[0], t[1]),
        )
        self.pool = [r for _, _, r in mine]  # every record of this split, in take order (before rules and cap)
        # index problems of this split's keys, and those of no one key (a damaged shard) in every split
        self.skipped: list[dict[str, str]] = [
            s for s in index_skipped if s["key"] is None or split_of(cfg, s["key"]) == split
        ]
        self.truncated: list[str] = []
        self.items: list[Record] = []
        caption_length: Callable[[str], int] | None = None
        for r in self.pool:
            if len(self.items) >= cap:
                break
            caption, long = (r.caption or "").strip(), False
            if not caption:
                if cfg.missing_caption == "skip":
                    self._skip(r, "missing caption (data.missing_caption=skip)")
                    continue
            else:
                caption_length = caption_length or caption_length_fn(cfg)
                n = caption_length(caption)
                if n > cfg.max_caption_tokens:
                    if cfg.long_caption == "skip":
                        self._skip(r, f"caption has {n} tokens > data.max_caption_tokens={cfg.max_caption_tokens}")
                        continue
                    long = True
            try:
                self._check(r)
            except UnreadableImage as e:
                self._skip(r, f"unreadable image: {e}")
                continue
            if long:
                self.truncated.append(r.key)
            self.items.append(dataclasses.replace(r, caption=caption))  # records may be shared: copy, not edit
        self._bad: dict[int, str] = {}  # item index → why its image failed to decode in __getitem__

    # ------------------------------------------------------------------------------------------ subclass hooks

    @abc.abstractmethod
    def _read(self, record: Record) -> bytes | str | Path:
        """The encoded image (bytes or a path Pillow can open); raise UnreadableImage if it cannot be read."""

    def _check(self, record: Record) -> None:  # noqa: B027 (an optional hook: most datasets check nothing)
        """A cheap check at index time; raise UnreadableImage to skip the item."""

    # ------------------------------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.items)
        if not 0 <= i < n:
            raise IndexError(f"item {i} out of range for the {self.split} split of {n} items")
        for j in (k % n for k in range(i, i + n)):
            if j in self._bad:
                continue
            r = self.items[j]
            try:
                image = fit_image(self._read(r), self.cfg, self.background)
            except UnreadableImage as e:
                self._bad[j] = str(e)
                self._skip(r, f"unreadable image: {e}")
                continue
            return {"image": image, "caption": r.caption, "attributes": {**r.attributes, "key": r.key}}
        raise UnreadableImage(
            f"no image of the {self.split} split of {self.cfg.path} can be decoded ({n} tried); see ds.skipped"
        )

    def images(self, indices) -> np.ndarray:
        """A batch of images, uint8 [N, H, W, 3]."""
        return np.stack([self[int(i)]["image"] for i in indices])

    def pool_captions(self) -> list[str]:
        """Every non-empty caption whose key falls in this split, before rules and caps (a tokenizer's
        vocabulary is built from the train pool, so every data size of a study shares one tokenizer)."""
        return [r.caption.strip() for r in self.pool if r.caption and r.caption.strip()]

    # ------------------------------------------------------------------------------------------ reporting

    def _skip(self, r: Record, reason: str) -> None:
        self.skipped.append({"key": r.key, "where": r.where, "reason": reason})

    def report(self) -> dict[str, Any]:
        """Counts and lists for this split: what was skipped and why, which captions were truncated."""
        return {
            "dataset": self.cfg.dataset,
            "path": str(self.cfg.path),
            "split": self.split,
            "items": len(self),
            "pool": len(self.pool),
            "skipped_count": len(self.skipped),
            "skipped": list(self.skipped),
            "truncated_count": len(self.truncated),
            "truncated": list(self.truncated),
            "rules": {
                "missing_caption": self.cfg.missing_caption,
                "long_caption": self.cfg.long_caption,
                "max_caption_tokens": self.cfg.max_caption_tokens,
                "crop": self.cfg.crop,
                "resize_filter": self.cfg.resize_filter,
                "resolution": self.cfg.resolution,
            },
        }

    def write_report(self, path: str | Path) -> Path:
        """Write `report()` as JSON (atomically), e.g. `<cache>/data_report_train.json`."""
        atomic.write_json(path, self.report())
        return Path(path)


def split_summaries(cfg: DataConfig, splits: list[str]) -> dict[str, dict[str, Any]]:
    """`data stats` for user data: per split, the items kept and why others were left out (no image decoded)."""
    from synthscale.data import get_dataset

    out = {}
    for split in splits:
        r = get_dataset(cfg, split).report()
        reasons = Counter(s["reason"].split(":")[0].split(" (")[0] for s in r["skipped"])
        out[split] = {
            "items": r["items"],
            "pool": r["pool"],
            "skipped": dict(reasons.most_common()),
            "truncated": r["truncated_count"],
        }
    return out


def format_summaries(stats: dict[str, dict[str, Any]]) -> str:
    lines = []
    for split, s in stats.items():
        skipped = ", ".join(f"{n} {why}" for why, n in s["skipped"].items()) or "none"
        lines.append(
            f"== {split}: {s['items']} items (of {s['pool']} keys in the split); "
            f"truncated captions: {s['truncated']}; skipped: {skipped}"
        )
    return "\n".join(lines)
