"""Frozen pretrained parts from local folders: tiny random models are made in the test (nothing downloads;
sockets are blocked)."""

import json
import shutil
import sys

import pytest
import torch

from synthscale.config import ConfigError, DataConfig
from synthscale.data.text import CaptionTooLong, PretrainedTokenizer, tokenizer_for
from synthscale.pretrained import MissingExtra

transformers = pytest.importorskip("transformers")  # the `test` extra installs it; core installs need not

WORDS = "a red blue green circle square triangle the of left right above below small large".split()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 2-layer, width-16 BertModel with its tokenizer, saved as a transformers folder."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    transformers.BertModel(cfg).save_pretrained(folder)
    return folder


def test_pretrained_tokenizer_pads_truncates_and_counts(bert_dir):
    tok = PretrainedTokenizer(bert_dir, max_length=6)
    ids = tok.encode(["a red circle", "a small red circle left of the large blue square"])
    assert ids.dtype == torch.long and ids.shape == (2, 6) and tok.pad_id == 0
    assert ids[0].tolist()[:5] == [2, 5, 6, 9, 3] and ids[0, 5] == tok.pad_id  # [CLS] a red circle [SEP] [PAD]
    assert ids[1, -1] == 3 and tok.truncations == 1  # cut to max_length, [SEP] kept, counted
    assert tok.length("a small red circle left of the large blue square") == 12
    with pytest.raises(CaptionTooLong, match="max_caption_tokens"):
        PretrainedTokenizer(bert_dir, 6, truncate=False).encode(["a small red circle left of the large blue square"])
    assert isinstance(tokenizer_for(DataConfig(text_encoder=str(bert_dir), max_caption_tokens=8)), PretrainedTokenizer)


def test_frozen_text_encoder_is_deterministic_masks_padding_and_stays_frozen(bert_dir):
    from synthscale.model.pretrained_text import FrozenTextEncoder

    enc = FrozenTextEncoder(bert_dir, max_length=8, width=24)
    captions = ["a red circle", "a blue square above the green triangle"]
    ids = enc.tokenizer.encode(captions)
    pad = ids == enc.pad_id
    enc.train()  # the generator's .train() must not turn dropout on in the frozen encoder
    h1, h2 = enc(ids, pad), enc(ids, pad)
    assert h1.shape == (2, 8, 24) and torch.equal(h1, h2)
    raw = FrozenTextEncoder(bert_dir, max_length=8)  # no projection: the model's own features
    feats = raw(ids, pad)
    assert feats.shape == (2, 8, 16) and feats[pad].abs().max() == 0 and feats[~pad].abs().min() > 0
    # a caption's features do not depend on how much padding follows it
    longer = FrozenTextEncoder(bert_dir, max_length=14)
    ids14 = longer.tokenizer.encode(captions)
    n = int((~pad[0]).sum())
    assert torch.allclose(longer(ids14)[0, :n], feats[0, :n], atol=1e-5)
    # the pretrained weights are frozen and outside parameters()/state_dict(); only the projection trains
    names = [k for k, _ in enc.named_parameters()]
    assert names == ["proj.weight", "proj.bias"] and set(enc.state_dict()) == {"proj.weight", "proj.bias"}
    h1.sum().backward()
    assert enc.proj.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in enc.frozen.parameters())
    enc.to(torch.float64)
    assert next(enc.frozen.parameters()).dtype == torch.float64  # .to() reaches the unregistered model


def test_prefix_adapter_matches_the_learned_text_encoder_interface(bert_dir):
    from synthscale.model.pretrained_text import FrozenTextEncoder

    enc = FrozenTextEncoder(bert_dir, max_length=8, width=32)
    prefix = enc.prefix_encoder()
    tokens = enc.tokenizer.encode(["a red circle"])
    h, valid = prefix(tokens)
    assert h.shape == (1, 8, 32) and valid.dtype == torch.bool
    assert valid[0].tolist() == [True] * 5 + [False] * 3
    assert enc.forward_flops(2) == 2 * enc.forward_flops(1) > 0
    # every Linear of the 2 BERT layers and the pooler, plus attention (MATH backend), per full-length caption
    L, D, F = 8, 16, 32
    linear = 2 * (L * (4 * D * D + 2 * D * F)) + D * D  # MACs per layer × layers, + pooler on [CLS]
    attention = 2 * (2 * L * L * D)  # QKᵀ and AV
    proj = L * 16 * 32
    assert enc.forward_flops(1) == 2 * (linear + attention + proj)


def test_sentence_transformers_layout_is_found(bert_dir, tmp_path):
    from synthscale.model.pretrained_text import FrozenTextEncoder

    st = tmp_path / "st-model"
    shutil.copytree(bert_dir, st / "0_Transformer")
    (st / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    enc = FrozenTextEncoder(st, max_length=8)
    assert enc.path == st / "0_Transformer" and enc.weights_hash == FrozenTextEncoder(bert_dir, 8).weights_hash


def test_missing_path_weights_or_extra_fail_clearly(bert_dir, tmp_path, monkeypatch):
    from synthscale.model.pretrained_text import FrozenTextEncoder

    with pytest.raises(ConfigError, match="not a local folder.*never downloaded"):
        FrozenTextEncoder("sentence-transformers/all-MiniLM-L6-v2", max_length=8)
    pickled = tmp_path / "pickled"
    shutil.copytree(bert_dir, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ConfigError, match="no \\*.safetensors weights"):
        FrozenTextEncoder(pickled, max_length=8)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    with pytest.raises(MissingExtra, match=r"pip install 'synthscale\[pretrained\]'"):
        FrozenTextEncoder(bert_dir, max_length=8)


def test_diffusers_autoencoder_kl_from_a_local_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from synthscale.autoencoders.diffusers_kl import load_diffusers_kl

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
        scaling_factor=0.5,
        shift_factor=0.1,
    )
    vae.save_pretrained(tmp_path / "vae")
    ae = load_diffusers_kl(tmp_path / "vae")
    spec = ae.latent_spec(16)
    assert (ae.kind, spec.kind, spec.channels, spec.height, spec.width) == ("continuous", "continuous", 4, 8, 8)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    moments = ae.encode_for_cache(images)
    assert moments["mean"].shape == moments["logvar"].shape == (2, 4, 8, 8)
    scaled = (moments["mean"] - 0.1) * 0.5  # the cache's convention: (z - shift) · scale
    with torch.no_grad():
        direct = vae.decode(moments["mean"]).sample.clamp(-1, 1)
    assert torch.allclose(ae.decode(scaled), direct, atol=1e-5)
    assert ae.weights_hash == load_diffusers_kl(tmp_path / "vae").weights_hash
    before = ae.weights_hash
    ae.measure_scale([images])
    assert ae.weights_hash != before and ae.scale > 0
    with pytest.raises(ConfigError, match="not a multiple"):
        ae.latent_spec(15)
    with pytest.raises(ConfigError, match="not a local folder"):
        load_diffusers_kl(tmp_path / "missing")
