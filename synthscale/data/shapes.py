"""The embedded default dataset: procedural captioned scenes of simple shapes with exact ground truth.

A scene holds one object placed in a 3×3 grid cell, two objects in a stated relation ("to the left of", "above",
…) or, for the optional counting task, 0–3 identical objects. Objects sit wholly inside their own cell, so they
never overlap and never leave the frame. Scenes are drawn at 4× and box-downsampled (Pillow draws aliased
edges), which makes them anti-aliased.

Determinism and splits. Item i of split s is drawn from a stream seeded by (seed, s, i, attempt), hashed with
BLAKE2 so that it is the same on every machine and Python version (only `random.random()` is used, whose stream
Python guarantees). A rendered image's bytes are hashed into [0, 1); the image belongs to train if that value is
< 0.8, validation if < 0.9, else test. A draw whose hash falls in another split is rejected and redrawn, so the
splits can never share an image, by construction. Scenes with a withheld
colour×shape pair never enter train/val/test; they form the `holdout` split (compositional generalisation).
"""

from __future__ import annotations

import hashlib
import random
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from synthscale.config import ConfigError, DataConfig
from synthscale.data import SPLITS

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 95, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 205),
    "orange": (245, 140, 25),
}
SIZES = ("small", "large")
# Fraction of a grid cell spanned by an object's bounding box, by size class: (min, max).
SIZE_RANGE = {"small": (0.36, 0.46), "large": (0.68, 0.82)}
ROW_NAMES = ("top", "middle", "bottom")
COL_NAMES = ("left", "center", "right")
POSITION_PHRASES = {
    (0, 0): "in the top left",
    (0, 1): "at the top",
    (0, 2): "in the top right",
    (1, 0): "on the left",
    (1, 1): "in the center",
    (1, 2): "on the right",
    (2, 0): "in the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "in the bottom right",
}
RELATIONS = ("to the left of", "to the right of", "above", "below")
NUMBERS = ("no", "one", "two", "three")
PLURALS = {s: s + "s" for s in SHAPES}

SINGLE_TEMPLATES = (
    "a {obj} {pos}",
    "there is a {obj} {pos}",
    "{pos} there is a {obj}",
    "a picture of a {obj} {pos}",
)
TWO_TEMPLATES = (
    "a {a} {rel} a {b}",
    "there is a {a} {rel} a {b}",
    "a picture of a {a} {rel} a {b}",
)
COUNT_TEMPLATES = ("{num} {size} {colour} {shapes}", "there are {num} {size} {colour} {shapes}")
EMPTY_CAPTIONS = ("an empty scene", "no shapes")

_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
_SPLIT_BOUNDS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
SUPERSAMPLE = 4
RESOLUTIONS = (16, 32, 64)
BACKGROUNDS = {"black": (0, 0, 0), "gray": (128, 128, 128), "white": (255, 255, 255)}


@dataclass(frozen=True)
class _Object:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    extent: int  # bounding-box side on the 4× canvas, pixels
    x0: int  # top-left corner on the 4× canvas
    y0: int

    def attributes(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "row": self.row, "col": self.col}


class _Stream:
    """Uniform draws from a BLAKE2 hash of the item's identity; identical on every platform."""

    def __init__(self, *key: int):
        digest = hashlib.blake2b(struct.pack(f"<{len(key)}q", *key), digest_size=16).digest()
        self._rng = random.Random(int.from_bytes(digest, "little"))

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * self._rng.random()

    def index(self, n: int) -> int:
        return min(int(self._rng.random() * n), n - 1)

    def choice(self, seq):
        return seq[self.index(len(seq))]


def vocabulary() -> list[str]:
    """Every word a shapes caption can contain, independent of config (so token ids are stable)."""
    texts = [
        *SINGLE_TEMPLATES,
        *TWO_TEMPLATES,
        *COUNT_TEMPLATES,
        *EMPTY_CAPTIONS,
        *POSITION_PHRASES.values(),
        *RELATIONS,
        *NUMBERS,
        *SHAPES,
        *PLURALS.values(),
        *COLOURS,
        *SIZES,
    ]
    words = set()
    for text in texts:
        words.update(w for w in re.findall(r"[a-z]+", re.sub(r"\{[a-z]+\}", " ", text)))
    return sorted(words)


def parse_background(spec: str) -> tuple[int, int, int]:
    if spec in BACKGROUNDS:
        return BACKGROUNDS[spec]
    try:
        return ImageColor.getrgb(spec)[:3]
    except ValueError:
        raise ConfigError(
            f"data.background {spec!r} is not a colour; use one of {', '.join(BACKGROUNDS)} or '#rrggbb'"
        ) from None


def validate(cfg: DataConfig) -> None:
    if cfg.resolution not in RESOLUTIONS:
        raise ConfigError(f"data.resolution is {cfg.resolution}; the shapes dataset renders {RESOLUTIONS}")
    if not cfg.objects or any(n not in (1, 2) for n in cfg.objects):
        raise ConfigError(f"data.objects is {cfg.objects}; allowed counts are 1 and 2 (use data.counting for 0..3)")
    for name in ("size", "val_size", "test_size", "holdout_size"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"data.{name} must be ≥ 0, got {getattr(cfg, name)}")
    for pair in cfg.holdout:
        if len(pair) != 2 or pair[0] not in COLOURS or pair[1] not in SHAPES:
            raise ConfigError(
                f"data.holdout entry {pair} must be [colour, shape] with colour in {list(COLOURS)} "
                f"and shape in {list(SHAPES)}"
            )
    if len(cfg.holdout) >= len(COLOURS) * len(SHAPES):
        raise ConfigError("data.holdout withholds every colour×shape pair; leave some for training")
    parse_background(cfg.background)


class ShapesDataset:
    """Random-access captioned shapes. `ds[i]` → {"image": uint8 H×W×3, "caption": str, "attributes": dict}."""

    def __init__(self, cfg: DataConfig, split: str = "train"):
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        validate(cfg)
        self.cfg, self.split = cfg, split
        self.resolution = cfg.resolution
        self.canvas = cfg.resolution * SUPERSAMPLE
        self.background = parse_background(cfg.background)
        self.holdout_pairs = {tuple(p) for p in cfg.holdout}
        sizes = {"train": cfg.size, "val": cfg.val_size, "test": cfg.test_size, "holdout": cfg.holdout_size}
        self._length = sizes[split] if (split != "holdout" or cfg.holdout) else 0
        self._kinds = [("single" if n == 1 else "two") for n in sorted(set(cfg.objects))]
        if cfg.counting:
            self._kinds.append("count")

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self._length:
            raise IndexError(f"item {i} out of range for the {self.split} split of {self._length} items")
        image, caption, attributes = self._scene(i)
        return {"image": image, "caption": caption, "attributes": attributes}

    def images(self, indices) -> np.ndarray:
        """A batch of images, uint8 [N, H, W, 3]."""
        return np.stack([self[int(i)]["image"] for i in indices])

    # ------------------------------------------------------------------------------------------ drawing scenes

    def _scene(self, i: int) -> tuple[np.ndarray, str, dict[str, Any]]:
        for attempt in range(10_000):
            rng = _Stream(self.cfg.seed, _SPLIT_IDS[self.split], i, attempt)
            kind = rng.choice(self._kinds)
            objects, text = {"single": self._single, "two": self._two, "count": self._count}[kind](rng)
            image = self._render(objects)
            if self._split_of(objects, image) == self.split:
                caption = text(rng)
                relation = None
                if kind == "two":
                    relation = next(r for r in RELATIONS if f" {r} " in caption)
                attributes = {
                    "task": kind,
                    "count": len(objects),
                    "relation": relation,
                    "objects": [o.attributes() for o in objects],
                }
                return image, caption, attributes
        raise RuntimeError(f"could not draw a {self.split} scene for item {i}; is data.holdout too broad?")

    def _split_of(self, objects: list[_Object], image: np.ndarray) -> str:
        if any((o.colour, o.shape) in self.holdout_pairs for o in objects):
            return "holdout"
        u = int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little") / 2**64
        return next(s for s, (lo, hi) in _SPLIT_BOUNDS.items() if lo <= u < hi)

    def _colour_shape(self, rng: _Stream) -> tuple[str, str]:
        """A colour and shape; in the holdout split, every draw is a withheld pair (at least one object must be)."""
        if self.split == "holdout":
            return rng.choice(sorted(self.holdout_pairs))
        return rng.choice(tuple(COLOURS)), rng.choice(SHAPES)

    def _place(self, rng: _Stream, shape: str, colour: str, size: str, row: int, col: int) -> _Object:
        cell = self.canvas / 3
        lo, hi = SIZE_RANGE[size]
        extent = int(round(rng.uniform(lo, hi) * cell))
        margin = SUPERSAMPLE  # one output pixel of empty border inside the cell, so neighbours never touch
        slack = max(0.0, cell - extent - 2 * margin)
        x0 = int(round(col * cell + margin + rng.uniform(0, slack)))
        y0 = int(round(row * cell + margin + rng.uniform(0, slack)))
        return _Object(shape, colour, size, row, col, extent, x0, y0)

    def _single(self, rng: _Stream):
        colour, shape = self._colour_shape(rng)
        size, row, col = rng.choice(SIZES), rng.index(3), rng.index(3)
        obj = self._place(rng, shape, colour, size, row, col)

        def text(r: _Stream) -> str:
            return r.choice(SINGLE_TEMPLATES).format(obj=f"{size} {colour} {shape}", pos=POSITION_PHRASES[(row, col)])

        return [obj], text

    def _two(self, rng: _Stream):
        relation = rng.choice(RELATIONS)
        if relation in ("to the left of", "to the right of"):
            row = rng.index(3)
            cols = sorted(rng_pair(rng))
            a_cell, b_cell = ((row, cols[0]), (row, cols[1]))
            if relation == "to the right of":
                a_cell, b_cell = b_cell, a_cell
        else:
            col = rng.index(3)
            rows = sorted(rng_pair(rng))
            a_cell, b_cell = ((rows[0], col), (rows[1], col))
            if relation == "below":
                a_cell, b_cell = b_cell, a_cell
        held = self.split == "holdout"
        which_held = rng.index(2)  # in the holdout split, this object carries the withheld pair
        objs = []
        for k, (row, col) in enumerate((a_cell, b_cell)):
            if held and k != which_held:
                colour, shape = rng.choice(tuple(COLOURS)), rng.choice(SHAPES)
            else:
                colour, shape = self._colour_shape(rng)
            objs.append(self._place(rng, shape, colour, rng.choice(SIZES), row, col))
        a, b = objs

        def text(r: _Stream) -> str:
            return r.choice(TWO_TEMPLATES).format(
                a=f"{a.size} {a.colour} {a.shape}", rel=relation, b=f"{b.size} {b.colour} {b.shape}"
            )

        return objs, text

    def _count(self, rng: _Stream):
        n = rng.index(4)
        colour, shape = self._colour_shape(rng)
        size = rng.choice(SIZES)
        cells = [(r, c) for r in range(3) for c in range(3)]
        chosen = []
        for _ in range(n):
            chosen.append(cells.pop(rng.index(len(cells))))
        objs = [self._place(rng, shape, colour, size, r, c) for r, c in sorted(chosen)]

        def text(r: _Stream) -> str:
            if n == 0:
                return r.choice(EMPTY_CAPTIONS)
            noun = shape if n == 1 else PLURALS[shape]
            caption = r.choice(COUNT_TEMPLATES).format(num=NUMBERS[n], size=size, colour=colour, shapes=noun)
            return caption.replace("there are one", "there is one")

        return objs, text

    def _render(self, objects: list[_Object]) -> np.ndarray:
        image = Image.new("RGB", (self.canvas, self.canvas), self.background)
        draw = ImageDraw.Draw(image)
        for o in objects:
            x0, y0, e = o.x0, o.y0, o.extent
            fill = COLOURS[o.colour]
            if o.shape == "circle":
                draw.ellipse((x0, y0, x0 + e - 1, y0 + e - 1), fill=fill)
            elif o.shape == "square":
                inset = round(e * 0.08)  # a square of equal extent looks larger than a circle; even them out
                draw.rectangle((x0 + inset, y0 + inset, x0 + e - 1 - inset, y0 + e - 1 - inset), fill=fill)
            elif o.shape == "triangle":
                draw.polygon([(x0 + e / 2, y0), (x0 + e - 1, y0 + e - 1), (x0, y0 + e - 1)], fill=fill)
            else:  # diamond
                m = (e - 1) / 2
                draw.polygon([(x0 + m, y0), (x0 + e - 1, y0 + m), (x0 + m, y0 + e - 1), (x0, y0 + m)], fill=fill)
        return np.asarray(image.reduce(SUPERSAMPLE))


def rng_pair(rng: _Stream) -> tuple[int, int]:
    """Two distinct grid indices in 0..2."""
    first = rng.index(3)
    second = (first + 1 + rng.index(2)) % 3
    return first, second


# ---------------------------------------------------------------------------------------------- captions back to facts

_OBJ = r"(small|large) (\w+) (circle|square|triangle|diamond)"


def parse_caption(caption: str) -> dict[str, Any]:
    """Read the facts a caption states (used to check that captions agree with attributes)."""
    rel = "|".join(RELATIONS)
    m = re.fullmatch(rf"(?:a picture of |there is )?a {_OBJ} ({rel}) a {_OBJ}", caption)
    if m:
        s1, c1, sh1, r, s2, c2, sh2 = m.groups()
        return {
            "task": "two",
            "relation": r,
            "objects": [dict(size=s1, colour=c1, shape=sh1), dict(size=s2, colour=c2, shape=sh2)],
        }
    pos = "|".join(POSITION_PHRASES.values())
    cells = {v: k for k, v in POSITION_PHRASES.items()}
    m = re.fullmatch(rf"(?:a picture of |there is )?a {_OBJ} ({pos})", caption) or None
    if m:
        s, c, sh, p = m.groups()
    else:
        m = re.fullmatch(rf"({pos}) there is a {_OBJ}", caption)
        if m:
            p, s, c, sh = m.groups()
    if m:
        row, col = cells[p]
        return {"task": "single", "relation": None, "objects": [dict(size=s, colour=c, shape=sh, row=row, col=col)]}
    if caption in EMPTY_CAPTIONS:
        return {"task": "count", "count": 0, "objects": []}
    m = re.fullmatch(r"(?:there (?:is|are) )?(one|two|three) (small|large) (\w+) (\w+?)s?", caption)
    if m:
        num, s, c, sh = m.groups()
        n = NUMBERS.index(num)
        return {"task": "count", "count": n, "objects": [dict(size=s, colour=c, shape=sh)] * n}
    raise ValueError(f"not a shapes caption: {caption!r}")
