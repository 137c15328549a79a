"""Every computing stage runs on the device it is given; one helper decides the default (CUDA when present, else
the CPU). On a CPU machine the `meta` device stands in for a GPU: it shows where tensors were sent."""

import pytest
import torch

from synthscale.autoencoders import load_autoencoder
from synthscale.autoencoders.train import evaluate_autoencoder, train_autoencoder
from synthscale.compute.device import pick_device
from synthscale.config import ConfigError, DataConfig, EvalSettings, ProbeConfig
from synthscale.data import get_dataset
from synthscale.data.latents import build_cache
from synthscale.data.text import tokenizer_for
from synthscale.evaluate.probes import load_or_train_probe
from synthscale.evaluate.runner import RunEvaluator
from synthscale.train import load_generator
from tests.test_autoencoders import tiny_cfg


def test_one_helper_decides_the_default(monkeypatch):
    assert pick_device(None) == pick_device("auto") == torch.device("cpu")  # no CUDA here
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        pick_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto", local_rank=3) == torch.device("cuda:3")
    assert pick_device("cuda", local_rank=1) == torch.device("cuda:1")


def test_autoencoder_training_evaluation_and_caching_use_the_given_device(tmp_path, monkeypatch):
    summary = train_autoencoder(tiny_cfg("fsq", 4), tmp_path / "ae", progress=False, device="cpu")
    assert summary["device"] == "cpu"
    result = evaluate_autoencoder(tmp_path / "ae", limit=8, grid=0, progress=False, device="cpu")
    assert result["instruments"]["device"] == "cpu"

    ae = load_autoencoder(tmp_path / "ae").to("meta")  # the cache encodes where the autoencoder is
    monkeypatch.setattr(type(ae), "weights_hash", property(lambda self: "meta-weights"))  # no data to hash
    seen = []

    def spy(images):
        seen.append(images.device)
        raise StopIteration  # far enough: the images reached the encoder

    monkeypatch.setattr(ae, "encode_for_cache", spy)
    data = ae.cfg.data
    with pytest.raises(StopIteration):
        build_cache(ae, get_dataset(data, "test"), tokenizer_for(data), tmp_path / "cache", progress=False)
    assert seen == [torch.device("meta")]


def test_probe_and_evaluation_reach_the_device(tiny_study, tmp_path):
    """The probe trains where asked; the evaluator's autoencoder, captions and generator (whose device every
    sampler draws on) go where asked."""
    probe_cfg = ProbeConfig(steps=2, width=4, hidden=8, eval_items=8)
    probe = load_or_train_probe(DataConfig(resolution=16), tmp_path, probe_cfg, progress=False, device="cpu")
    assert probe.meta["train"]["device"] == "cpu"
    run = tiny_study / "train" / "masked"
    ev = RunEvaluator(run, probe, EvalSettings(n=4, holdout_n=0), device="meta", progress=False)
    assert ev.device == torch.device("meta") and ev.text.device == torch.device("meta")
    assert {p.device for p in ev.autoencoder.parameters()} == {torch.device("meta")}
    g = load_generator(run, device="meta")
    assert g.model.device == torch.device("meta")
