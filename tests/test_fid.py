"""Fréchet distance and KID: the torchmetrics wiring equals the textbook formula, inputs are handled as uint8, the
numbers are seeded, and (with the trained probe) fd-probe separates real renders from a mismatched distribution."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from synthscale.evaluate.fid import FeatureDistance, ProbeQuality, fd_probe
from synthscale.evaluate.probes import real_renders


def coarse(x: torch.Tensor) -> torch.Tensor:
    """A tiny fixed extractor for the mechanics tests: a 4×4 grid of mean colours, 48 numbers per image."""
    x = x.permute(0, 3, 1, 2).float() / 255
    return F.adaptive_avg_pool2d(x, 4).flatten(1)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture(scope="module")
def renders(probe_data_cfg):
    real, _, _ = real_renders(probe_data_cfg, "test", 150)
    other, _, _ = real_renders(probe_data_cfg, "val", 150)
    return real, other


def test_frechet_distance_equals_the_formula(renders):
    real, other = renders
    fd = FeatureDistance(coarse, "coarse", real, kid_subsets=10)
    got = fd.score(other)["fd"]
    want = frechet(coarse(torch.from_numpy(real)).double().numpy(), coarse(torch.from_numpy(other)).double().numpy())
    assert got == pytest.approx(want, rel=1e-3)
    assert fd.score(real)["fd"] == pytest.approx(0.0, abs=1e-6)  # the reference against itself
    s = fd.score(other)  # KID subsets default to half the smaller set, so they differ and the std is informative
    assert fd.instruments()["kid_subset_size"] == 75 and s["kid_std"] > 0


def test_float_images_are_rounded_and_clamped_like_uint8(renders):
    real, other = renders
    fd = FeatureDistance(coarse, "coarse", real, kid_subsets=10)
    as_uint8 = fd.score(other)
    noisy = torch.from_numpy(other).float() / 255 + (torch.rand(other.shape) - 0.5) / 512  # < half a level
    noisy[0, 0, 0, 0] = 1.1  # an overshoot is clipped
    expected = other.copy()
    expected[0, 0, 0, 0] = 255
    assert fd.score(noisy) == fd.score(expected)
    assert fd.score(torch.from_numpy(other).permute(0, 3, 1, 2)) == as_uint8  # NCHW is read too
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fd.score(torch.from_numpy(other).float() / 127.5 - 1)


def test_kid_is_seeded_and_separates(renders):
    real, other = renders
    a = FeatureDistance(coarse, "coarse", real, kid_subsets=20, kid_subset_size=100, seed=1)
    b = FeatureDistance(coarse, "coarse", real, kid_subsets=20, kid_subset_size=100, seed=1)
    c = FeatureDistance(coarse, "coarse", real, kid_subsets=20, kid_subset_size=100, seed=2)
    torch.manual_seed(123)  # the global generator does not matter
    sa = a.score(other)
    torch.manual_seed(456)
    assert b.score(other) == sa
    assert c.score(other)["kid"] != sa["kid"]
    inverted = 255 - other
    assert a.score(inverted)["kid"] > 20 * abs(sa["kid"])
    inst = a.instruments()
    assert inst == {
        "extractor": "coarse",
        "n": 150,
        "n_real": 150,
        "resize": "none",
        "kid_subsets": 20,
        "kid_subset_size": 100,
        "kid_seed": 1,
        "interval": "95 % bootstrap over generated images (spread around the estimate), 200 resamples, seed 1",
    }
    # the intervals: around the estimates, seeded, and wide where the generated set is small
    assert sa["fd_lo"] < sa["fd"] < sa["fd_hi"] and sa["kid_lo"] < sa["kid"] < sa["kid_hi"]
    d = FeatureDistance(coarse, "coarse", real, seed=1)
    many, few = d.score(other), d.score(other[:40])
    assert few["fd_hi"] - few["fd_lo"] > many["fd_hi"] - many["fd_lo"]
    with pytest.raises(ValueError, match="kid_subset_size"):
        FeatureDistance(coarse, "coarse", real, kid_subset_size=500).score(other)
    with pytest.raises(ValueError, match="at least 2"):
        a.score(other[:1])


# ---------------------------------------------------------------------------------------------- with the trained probe


def blur(images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_fd_probe_separates_real_from_mismatched(trained_probe, probe_data_cfg):
    n = 500
    real, _, _ = real_renders(probe_data_cfg, "test", n)
    real2, _, _ = real_renders(probe_data_cfg, "val", n)
    quality = ProbeQuality(trained_probe, real, kid_subsets=50)
    same = quality.score(real2)
    swapped = quality.score(real2[..., [2, 0, 1]])  # shuffled colour channels: off-palette colours
    blurred = quality.score(blur(real2))
    print(
        f"fd-probe real/real' {same['fd_probe']:.4f}  channel-shuffled {swapped['fd_probe']:.3f}  "
        f"blurred {blurred['fd_probe']:.3f}"
    )
    assert swapped["fd_probe"] >= 20 * same["fd_probe"]
    assert blurred["fd_probe"] >= 20 * same["fd_probe"]
    assert swapped["kid"] > 20 * abs(same["kid"]) and blurred["kid"] > 20 * abs(same["kid"])
    assert quality.instruments()["extractor"] == f"probe:{trained_probe.key}"
    # same seed, same numbers; the one-off helper agrees with the reusable reference
    assert fd_probe(trained_probe, real, real2, kid_subsets=50) == same


# ---------------------------------------------------------------------------------------------- Inception (optional)


def test_inception_needs_local_weights(tmp_path, renders):
    from synthscale.evaluate.reference import inception_distance

    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        inception_distance(tmp_path / "missing.pth", renders[0])


def test_inception_without_the_extra_is_a_clear_error(tmp_path, renders):
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed")
    except ImportError:
        pass
    from synthscale.evaluate.reference import inception_distance

    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    with pytest.raises(ImportError, match="reference-metrics"):
        inception_distance(weights, renders[0])


def test_inception_mechanics_with_random_weights(tmp_path, renders, monkeypatch):
    """Random InceptionV3 weights made here (no download): the optional path runs end to end; not a real score."""
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from synthscale.evaluate.reference import inception_distance

    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as m:  # build the architecture with its random initialisation, skip loading
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    weights = tmp_path / "random-inception.pth"
    torch.save(net.state_dict(), weights)
    real, other = renders[0][:20], renders[1][:20]
    fd = inception_distance(weights, real, kid_subsets=5, kid_subset_size=10)
    assert fd.score(real)["fd"] == pytest.approx(0.0, abs=1e-2)
    assert fd.score(other)["fd"] > 0
    inst = fd.instruments()
    assert inst["extractor"].startswith("inception-v3-compat:") and "antialias=False" in inst["resize"]
