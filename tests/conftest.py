import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_pipe():
    from steer.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture()
def gen():
    return lambda seed=0: torch.Generator().manual_seed(seed)
