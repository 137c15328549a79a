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
