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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_pipe):
    """`tiny_pipe` saved as a model folder, for the command line (read only: tests write elsewhere)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_pipe.save_pretrained(path)
    return str(path)


@pytest.fixture()
def one_thread():
    """One torch thread for the test: on a shared, busy CPU two threads make tiny calls 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def gen():
    return lambda seed=0: torch.Generator().manual_seed(seed)
