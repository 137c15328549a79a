import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest

from synthscale.config import ConfigError, DataConfig
from synthscale.data.shapes import (
    COUNT_TEMPLATES,
    SINGLE_TEMPLATES,
    TWO_TEMPLATES,
    ShapesDataset,
    _Stream,
    parse_caption,
)


def digest(cfg: DataConfig, split: str, n: int) -> str:
    ds = ShapesDataset(cfg, split)
    h = hashlib.sha256()
    for i in range(n):
        item = ds[i]
        h.update(item["image"].tobytes())
        h.update(item["caption"].encode())
    return h.hexdigest()


def test_same_bytes_across_processes():
    code = (
        "from synthscale.config import DataConfig\n"
        "from tests.test_shapes import digest\n"
        "print(digest(DataConfig(counting=True), 'train', 100))\n"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(outs) == 1
    assert outs.pop().strip() == digest(DataConfig(counting=True), "train", 100)


def test_item_shape_dtype_and_repeatability(tiny_data_cfg):
    ds = ShapesDataset(tiny_data_cfg, "train")
    a, b = ds[3], ds[3]
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
    assert np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    for res in (16, 64):
        assert ShapesDataset(DataConfig(resolution=res), "val")[0]["image"].shape == (res, res, 3)


def test_seed_changes_data():
    assert digest(DataConfig(seed=0), "train", 20) != digest(DataConfig(seed=1), "train", 20)


def test_splits_never_share_an_image():
    cfg = DataConfig(size=3000, val_size=500, test_size=500, holdout_size=500, objects=[1])
    seen = {}
    for split in ("train", "val", "test", "holdout"):
        ds = ShapesDataset(cfg, split)
        for i in range(len(ds)):
            key = hashlib.sha1(ds[i]["image"].tobytes()).hexdigest()
            assert seen.setdefault(key, split) == split, f"an image of {split} is also in {seen[key]}"


def test_heldout_pairs_only_in_holdout_split(tiny_data_cfg):
    held = {tuple(p) for p in tiny_data_cfg.holdout}
    for split in ("train", "val", "test"):
        ds = ShapesDataset(tiny_data_cfg, split)
        for i in range(len(ds)):
            pairs = {(o["colour"], o["shape"]) for o in ds[i]["attributes"]["objects"]}
            assert not pairs & held
    ds = ShapesDataset(tiny_data_cfg, "holdout")
    for i in range(len(ds)):
        pairs = {(o["colour"], o["shape"]) for o in ds[i]["attributes"]["objects"]}
        assert pairs & held


def test_captions_agree_with_attributes_for_every_template():
    cfg = DataConfig(counting=True, size=1500)
    ds = ShapesDataset(cfg, "train")
    used = set()
    for i in range(len(ds)):
        item = ds[i]
        a, facts = item["attributes"], parse_caption(item["caption"])
        assert facts["task"] == a["task"]
        assert len(facts["objects"]) == a["count"] == len(a["objects"])
        for said, true in zip(facts["objects"], a["objects"]):
            assert all(said[k] == true[k] for k in said), (item["caption"], a)
        if a["task"] == "two":
            assert facts["relation"] == a["relation"]
            (r1, c1), (r2, c2) = [(o["row"], o["col"]) for o in a["objects"]]
            expected = {
                "to the left of": c1 < c2 and r1 == r2,
                "to the right of": c1 > c2 and r1 == r2,
                "above": r1 < r2 and c1 == c2,
                "below": r1 > r2 and c1 == c2,
            }
            assert expected[a["relation"]]
        used.add(_template_of(item["caption"]))
    assert used >= {*range(len(SINGLE_TEMPLATES) + len(TWO_TEMPLATES) + len(COUNT_TEMPLATES))} - {None}


def _template_of(caption: str):
    """Index of the template that wrote `caption` (most specific template first)."""
    templates = [*SINGLE_TEMPLATES, *TWO_TEMPLATES, *COUNT_TEMPLATES]
    order = sorted(range(len(templates)), key=lambda k: -len(re.sub(r"\{\w+\}", "", templates[k])))
    for k in order:
        pattern = re.escape(templates[k]).replace(r"\{", "{").replace(r"\}", "}")
        if re.fullmatch(re.sub(r"\{\w+\}", "[a-z ]+", pattern), caption):
            return k
    return None


def test_objects_inside_frame_and_apart():
    ds = ShapesDataset(DataConfig(resolution=32), "train")
    for i in range(300):
        rng = _Stream(0, 0, i, 0)
        objects, _ = ds._single(rng) if i % 2 else ds._two(rng)
        boxes = [(o.x0, o.y0, o.x0 + o.extent, o.y0 + o.extent) for o in objects]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 and 0 <= y0 and x1 <= ds.canvas and y1 <= ds.canvas
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                A, B = boxes[a], boxes[b]
                assert A[2] <= B[0] or B[2] <= A[0] or A[3] <= B[1] or B[3] <= A[1]


def test_antialiased_edges():
    img = ShapesDataset(DataConfig(objects=[1]), "train")[0]["image"]
    levels = np.unique(img.reshape(-1, 3), axis=0)
    assert len(levels) > 3  # box-downsampled edges give intermediate colours


@pytest.mark.parametrize(
    "change, match",
    [
        ({"resolution": 48}, "resolution"),
        ({"objects": [3]}, "counting"),
        ({"holdout": [["pink", "circle"]]}, "colour"),
        ({"background": "not-a-colour"}, "background"),
    ],
)
def test_bad_configs_are_explained(change, match):
    with pytest.raises(ConfigError, match=match):
        ShapesDataset(DataConfig(**change), "train")


def test_background_is_configurable():
    img = ShapesDataset(DataConfig(background="white"), "train")[0]["image"]
    assert tuple(img[0, 0]) == (255, 255, 255)
