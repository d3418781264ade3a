import os

import pytest
import torch

# tests share 2 cores with each other's processes; keep torch from oversubscribing
torch.set_num_threads(int(os.environ.get("GALSPEC_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def synthetic_survey(tmp_path_factory):
    """Path of a 64-galaxy synthetic survey file (split 48 train / 8 val / 8 test)."""
    from tests.synthetic import write_synthetic_survey
    path = tmp_path_factory.mktemp("survey") / "synthetic.h5"
    return write_synthetic_survey(path, n=64, seed=0)
