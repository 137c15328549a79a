"""An image folder with captions: `data.dataset: folder`, `data.path: DIR`.

Captions come from, in this order:
  - `DIR/captions.jsonl`: one JSON object a line, {"file": "relative/path.png", "caption": "…", …};
  - `DIR/captions.csv`: a header row with `file` and `caption` columns, then one row per image;
  - neither: a sidecar `name.txt` beside each `name.png` (the layout of many fine-tuning sets).
Extra JSONL fields / CSV columns become the item's attributes. Images are every file under DIR (hidden folders
excepted) with an image suffix; one without a caption follows `data.missing_caption`. A caption row whose file
is missing or outside DIR, and a second file with the same key (a.png beside a.jpg), are skipped and listed.
A malformed captions file is a `ConfigError` naming the line — that is fixed before a run, not skipped in it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from synthscale.config import ConfigError, DataConfig
from synthscale.data.imagefit import IMAGE_SUFFIXES, UnreadableImage, item_key
from synthscale.data.userdata import CaptionedDataset, Record, validate_user_config

CAPTION_FILES = ("captions.jsonl", "captions.csv")


def list_images(root: Path) -> list[str]:
    """Image files under root as sorted POSIX relative paths, skipping hidden files and folders."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


def _row(file: Any, caption: Any, extra: dict[str, Any], where: str) -> tuple[str, str | None, dict[str, Any]]:
    if not isinstance(file, str) or not file.strip():
        raise ConfigError(f"{where}: needs a 'file' (a path relative to the folder), got {file!r}")
    if caption is not None and not isinstance(caption, str):
        raise ConfigError(f"{where}: 'caption' must be a string, got {type(caption).__name__}")
    return file.strip(), caption, extra


def read_caption_rows(path: Path) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(file, caption or None, extra fields) for every row of a captions.jsonl / captions.csv."""
    rows = []
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(
                        f"{path}:{n}: not valid JSON ({e.msg}); each line is one object like "
                        '{"file": "img.png", "caption": "a red car"}'
                    ) from None
                if not isinstance(obj, dict):
                    raise ConfigError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
                extra = {k: v for k, v in obj.items() if k not in ("file", "caption")}
                rows.append(_row(obj.get("file"), obj.get("caption"), extra, f"{path}:{n}"))
        return rows
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: spreadsheets write a BOM
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
            raise ConfigError(
                f"{path}: the first row must be a header naming the columns 'file' and 'caption', "
                f"got {reader.fieldnames}"
            )
        for n, row in enumerate(reader, 2):
            if None in row:
                raise ConfigError(f"{path}:{n}: more fields than header columns; quote captions that hold commas")
            extra = {k: v for k, v in row.items() if k not in ("file", "caption")}
            rows.append(_row(row["file"], row["caption"], extra, f"{path}:{n}"))
    return rows


def index_folder(root: Path) -> tuple[list[Record], list[dict[str, str]]]:
    """Every captioned (or uncaptioned) image under root as a Record, plus what was skipped while indexing."""
    if not root.is_dir():
        raise ConfigError(f"data.path {str(root)!r} is not a folder; point it at a folder of images with captions")
    present = [root / name for name in CAPTION_FILES if (root / name).is_file()]
    if len(present) > 1:
        raise ConfigError(f"{root} has both {' and '.join(CAPTION_FILES)}; keep one so the captions are unambiguous")
    images = list_images(root)
    skipped: list[dict[str, str]] = []
    captions: dict[str, tuple[str | None, dict[str, Any]]] = {}
    if present:
        real_root = root.resolve()
        for file, caption, extra in read_caption_rows(present[0]):
            rel = Path(file)
            full = (root / rel).resolve()
            if rel.is_absolute() or not full.is_relative_to(real_root):
                skipped.append({"key": item_key(file), "where": file, "reason": f"outside {root}"})
                continue
            rel_posix = full.relative_to(real_root).as_posix()
            if rel_posix in captions:
                skipped.append({"key": item_key(file), "where": file, "reason": f"second caption row for {file}"})
                continue
            captions[rel_posix] = (caption, extra)
        listed = set(images)
        for rel_posix in captions:
            if rel_posix not in listed:
                reason = "file not found" if not (root / rel_posix).exists() else "not an image suffix"
                skipped.append({"key": item_key(rel_posix), "where": rel_posix, "reason": reason})
    else:  # sidecar name.txt beside name.png
        for rel_posix in images:
            txt = (root / rel_posix).with_suffix(".txt")
            text = None
            if txt.is_file():
                try:
                    text = txt.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    skipped.append(
                        {
                            "key": item_key(rel_posix),
                            "where": str(txt.relative_to(root)),
                            "reason": "caption file is not UTF-8",
                        }
                    )
                    continue
            captions[rel_posix] = (text, {})
    records, seen = [], {}
    for rel_posix in images:
        if rel_posix not in captions and present:
            caption, extra = None, {}
        elif rel_posix not in captions:
            continue  # its sidecar was unreadable (already listed)
        else:
            caption, extra = captions[rel_posix]
        key = item_key(rel_posix)
        if key in seen:
            skipped.append({"key": key, "where": rel_posix, "reason": f"same key as {seen[key]}"})
            continue
        seen[key] = rel_posix
        records.append(Record(key, caption, root / rel_posix, rel_posix, extra))
    return records, skipped


class FolderDataset(CaptionedDataset):
    """Random-access captioned images from a folder; see the module doc for the layout and `userdata` for rules."""

    kind = "folder"

    def __init__(self, cfg: DataConfig, split: str = "train"):
        validate_user_config(cfg)
        self.root = Path(cfg.path).expanduser()
        records, skipped = index_folder(self.root)
        super().__init__(cfg, split, records, skipped)

    def _check(self, record: Record) -> None:
        # Header parse (+ every chunk CRC for PNG) without decoding pixels: catches garbage, empty and most
        # truncated files for the price of one read.
        try:
            with Image.open(record.source) as image:
                image.verify()
        except Exception as e:  # Pillow raises many types here; all mean "do not use this file"
            raise UnreadableImage(f"{type(e).__name__}: {e}") from e

    def _read(self, record: Record) -> Path:
        return record.source
