"""Webdataset-style tar shards: `data.dataset: shards`, `data.path: DIR` (or one .tar), and their writer.

A shard is an uncompressed tar whose members are grouped by key: `{key}.png` or `{key}.jpg` (any image Pillow
reads), `{key}.txt` (the caption, UTF-8) and optionally `{key}.json` (metadata → attributes). The key is the
member path up to the first dot of its basename, as webdataset defines it. `write_shards` (the command
`synthscale data shard SRC --out DIR`) writes such shards from an image folder plus a `manifest.json`; the
reader reads the shards that manifest lists, or every `*.tar` in DIR when there is none (shards made elsewhere).

Why the standard library and not `webdataset`: webdataset streams (an IterableDataset without length or random
access), while every synthscale stage indexes items (`ds[i]`, `len(ds)`, hash splits, nested size caps), and
the core install must read shards without the `scale` extra. `tarfile` gives each member's byte offset, so the
reader indexes headers and captions once and then reads an image with one seek. The shards stay ordinary
webdataset shards: webdataset, tar and other tools read them.

Robustness: a truncated or damaged shard keeps the members before the damage (the rest are listed as
skipped); an image member that fails to decode is skipped in `ds[i]` (see `userdata`); an item without a
caption follows `data.missing_caption`; a `.json` that does not parse skips the item (listed).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image

from synthscale import atomic
from synthscale.config import ConfigError, DataConfig
from synthscale.data.imagefit import IMAGE_SUFFIXES, UnreadableImage, decode
from synthscale.data.userdata import CaptionedDataset, Record, validate_user_config
from synthscale.progress import progress_bar

MANIFEST = "manifest.json"
FORMAT = "synthscale-shards"
IMAGE_EXTS = {s.lstrip(".") for s in IMAGE_SUFFIXES}
KEEP_BYTES = {"PNG": "png", "JPEG": "jpg"}  # formats copied into shards as-is; others are re-encoded as PNG


def split_member(name: str) -> tuple[str, str]:
    """'a/b/img_01.seg.png' → ('a/b/img_01', 'seg.png'): webdataset's key/extension rule."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def shard_files(path: Path) -> list[Path]:
    """The shards to read: one .tar, the manifest's list, or every *.tar in the folder (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"data.path {str(path)!r} does not exist; point it at a folder of .tar shards (or one .tar)")
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            listed = [path / s["name"] for s in data["shards"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{manifest} is damaged ({e}); delete it to read every *.tar in {path}") from e
        if not data.get("complete", True):
            raise ConfigError(
                f"{path}: the shard writer did not finish (manifest.json says incomplete); "
                f"run `synthscale data shard SRC --out {path} --overwrite` again"
            )
        missing = [p.name for p in listed if not p.is_file()]
        if missing:
            raise ConfigError(
                f"{manifest} lists shards that are missing: {', '.join(missing[:5])}; "
                "copy them back or rewrite the shards"
            )
        return listed
    found = sorted(path.glob("*.tar"))
    if not found:
        hint = " (compressed tars are not read: random access needs plain .tar)" if any(path.glob("*.tar.*")) else ""
        raise ConfigError(
            f"{path} holds no .tar shards{hint}; write some with `synthscale data shard SRC --out {path}`"
        )
    return found


def _has_end_marker(file: Path, last: tarfile.TarInfo) -> bool:
    """A complete tar ends with two zero blocks after its last member; a truncated one does not."""
    end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    with open(file, "rb") as f:
        f.seek(end)
        tail = f.read(2 * tarfile.BLOCKSIZE)
    return len(tail) == 2 * tarfile.BLOCKSIZE and not tail.strip(b"\0")


def index_shards(files: list[Path]) -> tuple[list[Record], list[dict[str, str]]]:
    """Read every shard's headers, captions and metadata (images stay on disk) into Records."""
    records: list[Record] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for shard_id, file in enumerate(files):
        groups: dict[str, dict[str, Any]] = {}
        damage = None
        try:
            with tarfile.open(file, "r:") as tar:  # "r:" = uncompressed only: members must be seekable
                last = None
                try:
                    for member in tar:
                        last = member
                        if not member.isfile():
                            continue
                        key, ext = split_member(member.name)
                        g = groups.setdefault(key, {})
                        if ext in IMAGE_EXTS and "image" not in g:
                            g["image"] = (shard_id, member.offset_data, member.size, member.name)
                        elif ext in ("txt", "json"):
                            data = tar.extractfile(member).read()
                            if len(data) != member.size:
                                raise EOFError(f"{member.name} is cut short")
                            g[ext] = data
                    damage = None if last is None or _has_end_marker(file, last) else "no end-of-archive marker"
                except (tarfile.TarError, OSError, EOFError) as e:  # damaged mid-way: keep what came before
                    damage = str(e)
        except tarfile.ReadError as e:
            raise ConfigError(f"{file} is not a readable uncompressed tar ({e}); shards must be plain .tar") from e
        if damage:  # a shard-wide problem: listed in every split (key None)
            skipped.append(
                {
                    "key": None,
                    "where": file.name,
                    "reason": f"shard truncated or damaged ({damage}); "
                    f"{len(groups)} keys read before it, any after it are lost",
                }
            )
        for key, g in groups.items():
            where = f"{file.name}:{key}"
            if "image" not in g:
                skipped.append({"key": key, "where": where, "reason": "no image member"})
                continue
            caption, attributes = None, {}
            try:
                if "txt" in g:
                    caption = g["txt"].decode("utf-8")
                if "json" in g:
                    attributes = json.loads(g["json"])
                    if not isinstance(attributes, dict):
                        raise ValueError("the .json member is not an object")
            except (UnicodeDecodeError, ValueError) as e:
                skipped.append({"key": key, "where": where, "reason": f"unreadable caption/metadata: {e}"})
                continue
            if key in seen:
                skipped.append({"key": key, "where": where, "reason": f"same key as {seen[key]}"})
                continue
            seen[key] = where
            records.append(Record(key, caption, g["image"][:3], f"{file.name}:{g['image'][3]}", attributes))
    return records, skipped


@functools.lru_cache(maxsize=4)
def _index_once(signature: tuple[tuple[str, int, int], ...]) -> tuple[list[Record], list[dict[str, str]]]:
    """index_shards, once per process for unchanged shards (train, val and test each open the same shards)."""
    return index_shards([Path(name) for name, _, _ in signature])


class ShardDataset(CaptionedDataset):
    """Random-access captioned images from tar shards; see the module doc for the format, `userdata` for rules."""

    kind = "shards"

    def __init__(self, cfg: DataConfig, split: str = "train"):
        validate_user_config(cfg)
        self.files = shard_files(Path(cfg.path).expanduser())
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        records, skipped = _index_once(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in self.files))
        super().__init__(cfg, split, records, skipped)

    def _read(self, record: Record) -> bytes:
        shard_id, offset, size = record.source
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own descriptors
            self._handles, self._pid = {}, os.getpid()
        fd = self._handles.get(shard_id)
        if fd is None:
            fd = self._handles[shard_id] = os.open(self.files[shard_id], os.O_RDONLY)
        data = os.pread(fd, size, offset)  # positional read: no shared file offset, safe across threads
        if len(data) != size:
            raise UnreadableImage(f"shard ends {size - len(data)} bytes into the image (truncated shard)")
        return data

    def __getstate__(self) -> dict[str, Any]:  # picklable for spawned workers: handles reopen lazily
        return {**self.__dict__, "_handles": {}}

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._handles.values():
                os.close(fd)


# ---------------------------------------------------------------------------------------------- writer


def _encoded(path: Path) -> tuple[bytes, str]:
    """The bytes to store and their extension. PNG and JPEG are copied unchanged after a full decode check;
    other formats are decoded and stored as lossless PNG. Raises UnreadableImage."""
    data = path.read_bytes()
    image = decode(data)
    fmt = Image.open(io.BytesIO(data)).format
    if fmt in KEEP_BYTES:
        return data, KEEP_BYTES[fmt]
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), "png"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same input, same shard bytes
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    src: str | Path, out: str | Path, shard_size: int = 1000, overwrite: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Write an image folder (see `data/folder.py`) as tar shards of `shard_size` items plus `manifest.json`.

    Every image is fully decoded first; unreadable ones (and keys a folder cannot hold twice) are skipped and
    listed in the manifest. Captions are written as they are — the caption rules apply when the shards are
    read, so one set of shards serves any rule. Items go in key order; shards are written atomically, the
    manifest last, so an interrupted run never leaves a manifest that lists a half-written shard.
    """
    from synthscale.data.folder import index_folder

    src, out = Path(src).expanduser(), Path(out).expanduser()
    if shard_size < 1:
        raise ConfigError(f"--shard-size must be ≥ 1 item, got {shard_size}")
    if out.resolve() == src.resolve() or out.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"--out {out} lies inside the source folder {src}; choose a folder outside it")
    existing = sorted(out.glob("*.tar")) + ([out / MANIFEST] if (out / MANIFEST).exists() else [])
    if existing and not overwrite:
        raise ConfigError(f"{out} already holds shards ({existing[0].name}, …); pass --overwrite to replace them")
    records, skipped = index_folder(src)
    records.sort(key=lambda r: r.key)
    # Until the final manifest replaces this one, readers refuse the folder: a stopped run is never read as data.
    atomic.write_json(out / MANIFEST, {"format": FORMAT, "version": 1, "complete": False, "shards": []})

    def readable():  # (record, bytes, ext) for every image that decodes; the rest are listed
        for r in progress_bar(records, desc="shard", unit="img", enabled=progress):
            try:
                yield (r, *_encoded(r.source))
            except (UnreadableImage, OSError) as e:
                skipped.append({"key": r.key, "where": r.where, "reason": f"unreadable image: {e}"})

    shards: list[dict[str, Any]] = []
    items = readable()
    for first in items:  # each pass writes one shard: `first` and up to shard_size - 1 more from the same stream
        name = f"shard-{len(shards):06d}.tar"
        count = 0
        with atomic.atomic_path(out / name) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for r, data, ext in itertools.chain([first], itertools.islice(items, shard_size - 1)):
                _add(tar, f"{r.key}.{ext}", data)
                if r.caption is not None:
                    _add(tar, f"{r.key}.txt", r.caption.encode("utf-8"))
                if r.attributes:
                    _add(tar, f"{r.key}.json", json.dumps(r.attributes, sort_keys=True).encode("utf-8"))
                count += 1
        shards.append({"name": name, "items": count, "bytes": (out / name).stat().st_size})
    written = sum(s["items"] for s in shards)
    keep = {s["name"] for s in shards}
    for stale in out.glob("shard-*.tar"):  # --overwrite of a larger earlier set
        if stale.name not in keep:
            stale.unlink()
    manifest = {
        "format": FORMAT,
        "version": 1,
        "complete": True,
        "source": str(src),
        "items": written,
        "shard_size": shard_size,
        "shards": shards,
        "skipped_count": len(skipped),
        "skipped": skipped,
    }
    atomic.write_json(out / MANIFEST, manifest)
    return manifest
