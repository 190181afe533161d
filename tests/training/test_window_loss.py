"""Cheaper training for long memory tasks: history-only frames in windows, a frozen vision encoder."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.test_train_reference import make_demos
from vlaccel.errors import UsageError
from vlaccel.training.train_config import TrainConfig


def test_history_only_windows_train_only_the_window_frames(tmp_path):
    from vlaccel.demo_files import load_demos
    from vlaccel.training.batches import sample_windows

    make_demos(tmp_path, n=3, frames=60, size=8, task="reach-choice-long")
    demos = load_demos(tmp_path)
    full = sample_windows(demos, 32, 16, np.random.default_rng(1), frames=3, anchor=2, context=2, go_prob=0.8)
    short = sample_windows(demos, 32, 16, np.random.default_rng(1), frames=3, anchor=2, context=2, go_prob=0.8,
                           history_only=True)
    # the same frames, at the same positions; only the loss mask differs
    assert np.array_equal(full.frame_index, short.frame_index) and np.array_equal(full.images, short.images)
    for b in range(32):
        trained = (full.action_mask[b].sum(-1) > 0).nonzero().flatten().tolist()  # the sample's real frames
        kept = len(trained) - 3 if len(trained) >= 3 else 0
        window = trained[kept:]
        assert (short.action_mask[b].sum(-1) > 0).nonzero().flatten().tolist() == window
        idx = full.frame_index[b, window].tolist()
        assert idx == list(range(idx[0], idx[0] + len(idx)))  # consecutive: the window itself
    assert kept > 0


def test_freeze_vision_needs_a_policy_to_start_from():
    with pytest.raises(UsageError, match="freeze_vision keeps the vision encoder"):
        TrainConfig(freeze_vision=True)
    with pytest.raises(UsageError, match="window_loss must be 'all' or 'window'"):
        TrainConfig(window_loss="cue")
