import copy
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def _tiny_policy_master():
    from vlaccel.models import ReferenceVLA, ReferenceVLAConfig

    return ReferenceVLA(ReferenceVLAConfig.tiny())


@pytest.fixture
def tiny_policy(_tiny_policy_master):
    """A fresh random tiny ReferenceVLA (deep copy of one built per session)."""
    return copy.deepcopy(_tiny_policy_master)


def random_frames(config, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (config.image_size, config.image_size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def frames(tiny_policy):
    return random_frames(tiny_policy.config, 6)
