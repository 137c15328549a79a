"""Beside a latent cache of user data: the split's skip list (kept across an interrupted build) and the word
vocabulary the captions were encoded with."""

import json

import torch

from synthscale.config import DataConfig
from synthscale.data import get_dataset
from synthscale.data.latents import LatentSpec, build_cache
from synthscale.data.text import WordTokenizer, tokenizer_for
from tests.userdata_helpers import make_folder, truncated_jpeg


class PoolEncoder:
    """A stand-in continuous encoder: 4×4 average pooling (the cache only needs the interface)."""

    name, weights_hash, shift, scale = "pool4", "pool4-v1", 0.0, 1.0

    def latent_spec(self, resolution):
        return LatentSpec("continuous", 3, resolution // 4, resolution // 4)

    def encode_for_cache(self, images):
        mean = torch.nn.functional.avg_pool2d(images, 4)
        return {"mean": mean, "logvar": torch.zeros_like(mean)}


def test_cache_keeps_the_skip_list_and_the_vocabulary(tmp_path):
    make_folder(tmp_path / "data", n=24)  # plus bad.png and trunc.png, caught when the folder is indexed
    cfg = DataConfig(dataset="folder", path=str(tmp_path / "data"), resolution=16, val_fraction=0.0, test_fraction=0.0)
    ds = get_dataset(cfg, "train")
    victim = ds.items[5].key  # an image that fails only when decoded, during the build
    (tmp_path / "data" / f"{victim}.{'png' if int(victim[3:]) % 2 else 'jpg'}").write_bytes(truncated_jpeg(3))
    assert victim not in {s["key"] for s in get_dataset(cfg, "train").skipped}  # indexing does not catch it
    tok = tokenizer_for(cfg)
    cache = build_cache(PoolEncoder(), get_dataset(cfg, "train"), tok, tmp_path / "cache", shard_size=4, progress=False)
    report_path = cache.path / "data_report_train.json"
    report = json.loads(report_path.read_text())
    reasons = {s["key"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"bad", "trunc", victim} and report["skipped_count"] == 3
    assert all("unreadable image" in r for r in reasons.values())

    saved = WordTokenizer.load(cache.path / "tokenizer.json")
    captions = [cache.captions(i) for i in range(len(cache))]
    assert torch.equal(saved.encode(captions), cache.text) and saved.itos == tok.itos

    # an interrupted build: shard 0 (items 0-3) lost, resumed by a fresh process that never decodes item 5
    (cache.path / "cache.json").unlink()
    (cache.path / "shard-00000.safetensors").unlink()
    build_cache(PoolEncoder(), get_dataset(cfg, "train"), tok, tmp_path / "cache", shard_size=4, progress=False)
    again = json.loads(report_path.read_text())
    assert {s["key"] for s in again["skipped"]} == {"bad", "trunc", victim} and again["skipped_count"] == 3
