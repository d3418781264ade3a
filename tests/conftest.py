import os

import pytest
import torch

# tests share 2 cores with each other's processes; keep torch from oversubscribing
torch.set_num_threads(int(os.environ.get("GALSPEC_TEST_THREADS", "2")))


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a test module (unless GALSPEC_TEST_THREADS says otherwise): its networks are
    small, and on 2 shared cores OpenMP spin-waiting made 2 threads ~5x slower than 1. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("GALSPEC_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_survey(tmp_path_factory):
    """Path of a 64-galaxy synthetic survey file (split 48 train / 8 val / 8 test)."""
    from tests.synthetic import write_synthetic_survey
    path = tmp_path_factory.mktemp("survey") / "synthetic.h5"
    return write_synthetic_survey(path, n=64, seed=0)
