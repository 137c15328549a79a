import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the CI machine has 2 cores, one of them sometimes busy (OpenMP spin-waits stall the other).
torch.set_num_threads(1)


@pytest.fixture
def tiny_data_cfg():
    from synthscale.config import DataConfig

    return DataConfig(size=256, val_size=64, test_size=64, holdout_size=64)


# A small attribute probe, trained once per test session (~30 s on one thread) and shared by test_probes,
# test_fid and test_alignment: width 12 and 400 steps already read the default 32 px scenes ≥ 99 % right.
TEST_PROBE = dict(steps=400, width=12, eval_items=500)


@pytest.fixture(scope="session")
def probe_data_cfg():
    from synthscale.config import DataConfig

    return DataConfig()


@pytest.fixture(scope="session")
def trained_probe(probe_data_cfg, tmp_path_factory):
    from synthscale.config import ProbeConfig
    from synthscale.evaluate.probes import load_or_train_probe

    return load_or_train_probe(
        probe_data_cfg, tmp_path_factory.getbasetemp() / "probes", ProbeConfig(**TEST_PROBE), progress=False
    )


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A study folder with four real tiny runs (two flow, masked, next-token) and a results store whose quality
    numbers are made up (tests/fixtures/tiny_study.py); ~10 s, built once per session."""
    from tests.fixtures.tiny_study import make_tiny_study

    return make_tiny_study(tmp_path_factory.mktemp("tiny_study"))


# A random CLIP saved like a downloaded one (test_alignment, test_instruments); skips where transformers is absent.
@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random CLIP a few kilobytes big, saved like a downloaded one: for the mechanics only, never a score."""
    transformers = pytest.importorskip("transformers")
    import json

    import torch

    folder = tmp_path_factory.mktemp("tiny-clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt")
    )
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=1, **small
        ),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=8,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder
