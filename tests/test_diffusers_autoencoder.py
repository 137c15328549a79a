"""A pretrained diffusers AutoencoderKL as the continuous autoencoder of a run and a study: kind `diffusers`
(a tiny random one made in the test), its latent scale measured, its weights left in their folder."""

import json
import shutil

import pytest
import torch
import yaml

from synthscale.autoencoders import CheckpointError, latent_spec_of, load_autoencoder, validate
from synthscale.config import AutoencoderConfig, ConfigError, DataConfig, RunConfig, StudyConfig, load

diffusers = pytest.importorskip("diffusers")  # the `test` extra installs it
DATA = dict(resolution=16, size=64, val_size=16, test_size=16, holdout_size=16)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
    )
    vae.save_pretrained(folder)
    return folder


def ae_config(path, **train) -> AutoencoderConfig:
    return AutoencoderConfig(
        name="sd-vae-tiny",
        kind="diffusers",
        path=str(path),
        data=DataConfig(**DATA),
        train=load(AutoencoderConfig, None, [f"train.{k}={v}" for k, v in train.items()]).train,
    )


def test_prepared_folder_loads_evaluates_and_refuses_a_changed_model(vae_dir, tmp_path):
    from safetensors.torch import load_file

    from synthscale.autoencoders.train import evaluate_autoencoder, train_autoencoder

    vae = shutil.copytree(vae_dir, tmp_path / "vae")  # rewritten at the end of this test
    summary = train_autoencoder(ae_config(vae, scale_items=32), tmp_path / "ae", progress=False)
    assert summary["steps"] == 0 and summary["scale_items"] == 32 and summary["latent_scale"] > 0
    assert set(load_file(str(tmp_path / "ae" / "model.safetensors"))) == {"latent_shift", "latent_scale"}
    ae = load_autoencoder(tmp_path / "ae")
    assert ae.kind == "continuous" and ae.scale == pytest.approx(summary["latent_scale"])
    assert ae.shift == pytest.approx(summary["latent_shift"])
    result = evaluate_autoencoder(tmp_path / "ae", split="test", grid=0, progress=False)
    assert result["latent"] == {
        "kind": "continuous",
        "channels": 4,
        "height": 8,
        "width": 8,
        "vocab_size": None,
        "levels": None,  # per-channel code levels: discrete latents only
    }
    assert 0 < result["metrics"]["psnr"] < 100
    assert latent_spec_of(ae_config(vae)) == ae.latent_spec(16)

    model = diffusers.AutoencoderKL.from_pretrained(str(vae))
    with torch.no_grad():
        model.decoder.conv_out.weight.add_(0.01)
    model.save_pretrained(vae)
    with pytest.raises(CheckpointError, match="weights hash"):
        load_autoencoder(tmp_path / "ae")
    with pytest.raises(ConfigError, match="needs path"):
        validate(AutoencoderConfig(kind="diffusers"))


def test_a_flow_run_trains_on_its_latents_and_a_study_plans_with_it(vae_dir, tmp_path):
    from synthscale.autoencoders.train import train_autoencoder
    from synthscale.study.plan import estimate_flops, plan_study
    from synthscale.train import train

    train_autoencoder(ae_config(vae_dir, scale_items=32), tmp_path / "ae", progress=False)
    run = load(
        RunConfig,
        None,
        [
            f"autoencoder={tmp_path / 'ae'}",
            f"cache_root={tmp_path / 'cache'}",
            *[f"data.{k}={v}" for k, v in DATA.items()],
            "model.size=2x64",
            "model.patch_size=2",
            "train.batch_size=8",
            "train.budget_flops=2e8",
            "train.warmup_steps=1",
        ],
    )
    summary = train(run, tmp_path / "run", progress=False)
    assert summary["steps"] >= 1 and summary["final_loss"] == summary["final_loss"]
    cache = json.loads(next((tmp_path / "cache").glob("*/cache.json")).read_text())
    assert cache["spec"]["channels"] == 4 and cache["scale"] == pytest.approx(load_autoencoder(tmp_path / "ae").scale)

    spec = tmp_path / "vae.yaml"
    spec.write_text(yaml.safe_dump({"name": "sd-vae-tiny", "kind": "diffusers", "path": str(vae_dir)}))
    study = load(
        StudyConfig,
        None,
        [
            f"continuous_autoencoder={spec}",
            "objectives=[flow]",
            "sizes=[2x64]",
            "ablation_autoencoders=[]",
            "data.resolution=16",
            "run_overrides=[model.patch_size=2]",
        ],
    )
    plan = plan_study(study, tmp_path / "study")
    assert plan.autoencoders["sd-vae-tiny"][0].kind == "diffusers"
    assert estimate_flops(plan)["train_flops"] > 0
