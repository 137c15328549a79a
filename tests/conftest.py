import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the CI machine has 2 cores, one of them sometimes busy (DESIGN.md, Threads).
torch.set_num_threads(1)


@pytest.fixture
def tiny_data_cfg():
    from synthscale.config import DataConfig

    return DataConfig(size=256, val_size=64, test_size=64, holdout_size=64)
