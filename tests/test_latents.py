import json

import numpy as np
import pytest
import torch

from synthscale.autoencoders import build_autoencoder, load_autoencoder, save_autoencoder, to_tensor
from synthscale.autoencoders.train import train_autoencoder
from synthscale.config import AutoencoderConfig, DataConfig
from synthscale.data import get_dataset
from synthscale.data.latents import CacheError, LatentCache, build_cache, cache_path, open_cache
from synthscale.data.text import tokenizer_for

DATA = DataConfig(size=48, val_size=8, test_size=8, holdout_size=8)


def tiny(kind: str) -> AutoencoderConfig:
    cfg = AutoencoderConfig(
        name=f"tiny-{kind}",
        kind=kind,
        downsample=4,
        widths=[4, 8, 8],
        latent_channels={"kl": 4, "lfq": 6, "fsq": 3}[kind],
        fsq_levels=[5, 4, 3],
        data=DATA,
    )
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup, cfg.train.scale_items = 4, 8, 1, 0
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained tiny KL and LFQ autoencoder (module-wide: training is the slow part)."""
    root = tmp_path_factory.mktemp("ae")
    out = {}
    for kind in ("kl", "lfq"):
        train_autoencoder(tiny(kind), root / kind, progress=False)
        out[kind] = load_autoencoder(root / kind)
    return out


@pytest.fixture
def train_split():
    return get_dataset(DATA, "train")


def test_discrete_cache_holds_tokens_captions_and_attributes(trained, train_split, tmp_path):
    ae, tok = trained["lfq"], tokenizer_for(DATA)
    cache = build_cache(ae, train_split, tok, tmp_path, shard_size=20, batch_size=8, progress=False)
    assert len(cache) == 48 and cache.spec == ae.latent_spec(32)
    assert cache.text_spec.max_length == tok.max_length and cache.text_spec.vocab_size == tok.vocab_size
    idx = torch.tensor([0, 47, 21, 21])
    batch = cache.get_batch(idx)
    items = [train_split[i] for i in idx.tolist()]
    expected = ae.encode_for_cache(to_tensor(np.stack([it["image"] for it in items])))
    assert batch["latents"].dtype == torch.int64 and torch.equal(batch["latents"], expected["tokens"])
    assert torch.equal(batch["text"], tok.encode([it["caption"] for it in items]))
    assert cache.captions(47) == items[1]["caption"] and cache.attributes(21) == items[2]["attributes"]
    assert cache[21]["attributes"] == items[2]["attributes"]
    # a second build finds it complete and encodes nothing
    again = build_cache(_Exploding(ae, after=0), train_split, tok, tmp_path, progress=False)
    assert again.path == cache.path


def test_kl_stored_scale_gives_unit_variance_on_the_cached_training_latents(trained, train_split, tmp_path):
    ae = trained["kl"]
    assert ae.scale != 1.0 or ae.shift != 0.0  # training measured them
    cache = build_cache(ae, train_split, tokenizer_for(DATA), tmp_path, progress=False)
    lat = cache.get_batch(torch.arange(len(cache)), torch.Generator().manual_seed(0))["latents"]
    assert lat.shape == (48, 4, 8, 8) and lat.dtype == torch.float32
    assert lat.mean().item() == pytest.approx(0.0, abs=0.02)
    assert lat.var().item() == pytest.approx(1.0, abs=0.03)
    # decode undoes the scaling: the cached posterior mean decodes to the autoencoder's own reconstruction
    x = to_tensor(train_split[3]["image"])
    mean = (ae.encode_for_cache(x)["mean"] - ae.shift) * ae.scale
    assert torch.allclose(ae.decode(mean), ae.reconstruct(x), atol=1e-5)


def test_continuous_batches_follow_the_generator(trained, train_split, tmp_path):
    cache = build_cache(trained["kl"], train_split, tokenizer_for(DATA), tmp_path, progress=False)
    idx = torch.tensor([1, 2, 3])
    a = cache.get_batch(idx, torch.Generator().manual_seed(7))["latents"]
    b = cache.get_batch(idx, torch.Generator().manual_seed(7))["latents"]
    c = cache.get_batch(idx, torch.Generator().manual_seed(8))["latents"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cache_key_changes_with_the_autoencoder_split_and_tokenizer(trained, train_split, tmp_path):
    ae, tok = trained["lfq"], tokenizer_for(DATA)
    key = cache_path(tmp_path, ae, train_split, tok)
    assert key == cache_path(tmp_path, load_autoencoder(_saved(ae, tmp_path / "copy")), train_split, tok)
    changed = load_autoencoder(_saved(ae, tmp_path / "copy2"))
    with torch.no_grad():
        changed.decoder.conv_out.bias[0] += 1e-3  # any weight, even the decoder's: another autoencoder
    assert cache_path(tmp_path, changed, train_split, tok) != key
    assert cache_path(tmp_path, ae, get_dataset(DATA, "val"), tok) != key
    assert (
        cache_path(tmp_path, ae, train_split, tokenizer_for(DataConfig(**{**vars(DATA), "max_caption_tokens": 30})))
        != key
    )


def test_a_cache_written_before_levels_existed_takes_them_from_its_autoencoder(trained, train_split, tmp_path):
    ae, tok = trained["lfq"], tokenizer_for(DATA)
    cache = build_cache(ae, train_split, tok, tmp_path, progress=False)
    assert cache.spec.levels == (2,) * 6  # written with the cache
    meta = json.loads((cache.path / "cache.json").read_text())
    del meta["spec"]["levels"]  # as an older version wrote it
    (cache.path / "cache.json").write_text(json.dumps(meta))
    assert LatentCache(cache.path).spec.levels is None  # still loads
    assert open_cache(tmp_path, ae, train_split, tok).spec == ae.latent_spec(32)
    assert build_cache(ae, train_split, tok, tmp_path, progress=False).spec.levels == (2,) * 6


def test_a_cache_is_refused_for_another_autoencoder(trained, train_split, tmp_path):
    tok = tokenizer_for(DATA)
    cache = build_cache(trained["lfq"], train_split, tok, tmp_path, progress=False)
    torch.manual_seed(3)
    other = build_autoencoder(tiny("lfq"))
    with pytest.raises(CacheError, match="built with autoencoder"):
        cache.check_autoencoder(other)
    with pytest.raises(CacheError, match="built with autoencoder"):
        LatentCache(cache.path, autoencoder=other)
    with pytest.raises(CacheError, match="no complete latent cache"):
        open_cache(tmp_path, other, train_split, tok)
    assert len(open_cache(tmp_path, trained["lfq"], train_split, tok)) == 48
    other_identity = {**cache.identity, "autoencoder": {"name": "x", "weights_hash": "0" * 16}}
    with pytest.raises(CacheError, match="was built from"):
        LatentCache(cache.path, expect=other_identity)


class _Exploding:
    """An encoder that encodes `after` batches, then fails as an interrupted process would."""

    def __init__(self, ae, after: int):
        self.ae, self.after, self.calls, self.items = ae, after, 0, 0
        self.name, self.weights_hash = ae.name, ae.weights_hash

    def latent_spec(self, resolution):
        return self.ae.latent_spec(resolution)

    def encode_for_cache(self, images):
        if self.calls >= self.after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.items += len(images)
        return self.ae.encode_for_cache(images)


def test_an_interrupted_build_resumes_and_matches_a_clean_one(trained, train_split, tmp_path):
    ae, tok = trained["lfq"], tokenizer_for(DATA)
    with pytest.raises(KeyboardInterrupt):  # 2 shards of 16 finished (2 batches of 8 each), third interrupted
        build_cache(
            _Exploding(ae, after=5), train_split, tok, tmp_path / "a", shard_size=16, batch_size=8, progress=False
        )
    path = cache_path(tmp_path / "a", ae, train_split, tok)
    assert sorted(p.name for p in path.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with pytest.raises(CacheError, match="interrupted build"):
        LatentCache(path)
    (path / "shard-00001.safetensors").write_bytes(b"torn")  # a shard damaged as well: encoded again
    resumed = _Exploding(ae, after=10**6)
    cache = build_cache(resumed, train_split, tok, tmp_path / "a", shard_size=16, batch_size=8, progress=False)
    assert resumed.items == 32  # shards 1 and 2 only
    clean = build_cache(ae, train_split, tok, tmp_path / "b", shard_size=16, batch_size=8, progress=False)
    everything = torch.arange(48)
    assert torch.equal(cache.get_batch(everything)["latents"], clean.get_batch(everything)["latents"])
    assert torch.equal(cache.get_batch(everything)["text"], clean.get_batch(everything)["text"])


def test_a_corrupt_shard_of_a_complete_cache_is_a_clear_error(trained, train_split, tmp_path):
    cache = build_cache(trained["lfq"], train_split, tokenizer_for(DATA), tmp_path, shard_size=32, progress=False)
    (cache.path / "shard-00001.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(CacheError, match="missing or corrupt"):
        LatentCache(cache.path)


def test_wrong_image_size_is_refused_before_encoding(trained, tmp_path):
    from synthscale.autoencoders import ImageSizeError

    data64 = DataConfig(**{**vars(DATA), "resolution": 64})
    with pytest.raises(ImageSizeError, match="32×32"):
        build_cache(trained["kl"], get_dataset(data64, "train"), tokenizer_for(data64), tmp_path, progress=False)


def _saved(ae, path):
    save_autoencoder(ae, path)
    return path
