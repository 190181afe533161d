import copy
import logging
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(min(2, torch.get_num_threads()))


class _DeprecatedCacheNameLog(logging.Handler):
    """Collects transformers' log lines about the old cache name (5.24 logs, not warns, when an output's
    ``past_key_values`` is read or a forward is handed both names)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "past_key_values" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_deprecated_cache_name():
    """Fails a test whose code made transformers log the deprecated cache keyword (see transformers_compat)."""
    handler = _DeprecatedCacheNameLog()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    assert not handler.messages, f"transformers logged the deprecated cache keyword: {handler.messages}"


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


def pytest_terminal_summary(terminalreporter):
    """Say which stack the suite ran on (CI runs it on the locked and on the newest versions)."""
    from vlaccel.versions import versions

    terminalreporter.write_line("stack: " + ", ".join(f"{k} {v or '-'}" for k, v in versions().items()))
