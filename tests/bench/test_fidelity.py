"""Fidelity metrics against hand-computed values, and the labelled fallback to synthetic frames."""

import math

import numpy as np
import pytest

from vlaccel.bench.fidelity import FidelityAccumulator, cosine, load_observations, mse, sqnr_db


def test_sqnr_of_identical_outputs_is_inf():
    x = np.random.default_rng(0).normal(size=(16, 4))
    assert sqnr_db(x, x.copy()) == math.inf


def test_sqnr_of_known_noise():
    ref = np.array([3.0, 4.0])  # signal energy 25
    noisy = ref + np.array([0.5, 0.0])  # noise energy 0.25 -> 10 log10(100) = 20 dB
    assert sqnr_db(ref, noisy) == pytest.approx(20.0, abs=1e-12)
    ref = np.ones(1000)
    assert sqnr_db(ref, ref + 0.1) == pytest.approx(20.0, abs=1e-9)  # 1000 / (1000 * 0.01)


def test_mse_and_cosine_known_values():
    assert mse([1.0, 2.0], [2.0, 4.0]) == pytest.approx(2.5)
    assert cosine([1.0, 0.0], [0.0, 3.0]) == 0.0
    assert cosine([1.0, 1.0], [2.0, 2.0]) == pytest.approx(1.0)


def test_accumulator_pools_sqnr_and_averages_mse():
    acc = FidelityAccumulator()
    acc.add([3.0, 4.0], [3.5, 4.0])  # signal 25, noise 0.25, mse 0.125
    acc.add([0.0, 5.0], [0.0, 5.0])  # signal 25, noise 0, mse 0
    out = acc.result("action")
    assert out["action_mse"] == pytest.approx(0.0625)
    assert out["action_sqnr_db"] == pytest.approx(10 * math.log10(50 / 0.25))


def test_missing_demos_fall_back_to_labelled_synthetic_frames(tiny_policy, tmp_path):
    obs, label = load_observations(tiny_policy.config, 3, demos_dir=tmp_path / "nowhere")
    assert label.startswith("SYNTHETIC") and len(obs) == 3
    size = tiny_policy.config.image_size
    assert all(o.image.shape == (size, size, 3) and o.image.dtype == np.uint8 for o in obs)


def test_recorded_demos_are_used_when_they_fit(tiny_policy, tmp_path):
    from vlaccel import demo_files as data
    size = tiny_policy.config.image_size
    rng = np.random.default_rng(0)
    for seed in range(2):
        data.save_demo(data.demo_path(tmp_path, "reach", seed), images=rng.integers(0, 256, (5, size, size, 3)),
                       states=rng.normal(size=(5, 4)), actions=rng.normal(size=(20, 4)), task="reach",
                       instruction="reach the goal", seed=seed, success=True, frame_every=4, success_step=19)
    obs, label = load_observations(tiny_policy.config, 4, demos_dir=tmp_path)
    assert label.startswith("demos") and len(obs) == 4
    assert {o.instruction for o in obs} == {"reach the goal"} and obs[0].proprio.shape == (4,)


def test_calibration_and_evaluation_halves_are_disjoint(tiny_policy, tmp_path):
    from vlaccel import demo_files as data
    size = tiny_policy.config.image_size
    images = (np.arange(12 * size * size * 3).reshape(12, size, size, 3) % 251).astype(np.uint8)  # distinct frames
    data.save_demo(data.demo_path(tmp_path, "push", 0), images=images, states=np.zeros((12, 4)),
                   actions=np.zeros((48, 4)), task="push", instruction="push", seed=0, success=True,
                   frame_every=4, success_step=47)
    even, _ = load_observations(tiny_policy.config, 6, demos_dir=tmp_path, half=0)
    odd, _ = load_observations(tiny_policy.config, 6, demos_dir=tmp_path, half=1)
    frame_of = {images[f].tobytes(): f for f in range(12)}
    assert [frame_of[o.image.tobytes()] for o in even] == [0, 2, 4, 6, 8, 10]
    assert [frame_of[o.image.tobytes()] for o in odd] == [1, 3, 5, 7, 9, 11]


def test_history_episode_is_one_real_long_memory_episode_when_one_is_long_enough(tiny_policy, tmp_path):
    """bench --history plays a real long-horizon memory episode (its cue mid-episode), not stitched demos; it
    stitches only when no demo is long enough, and says so."""
    from vlaccel.bench.fidelity import episode_frames

    from vlaccel import demo_files as data
    size = tiny_policy.config.image_size
    rng = np.random.default_rng(0)
    for task, seed, frames in [("reach-memory", 0, 30), ("reach-memory-long", 4, 12), ("reach-memory-long", 7, 40)]:
        data.save_demo(data.demo_path(tmp_path, task, seed), images=rng.integers(0, 256, (frames, size, size, 3)),
                       states=rng.normal(size=(frames, 4)), actions=rng.normal(size=(4 * frames, 4)), task=task,
                       instruction=task, seed=seed, success=True, frame_every=4, success_step=4 * frames - 1)
    long_demo = data.load_demo(data.demo_path(tmp_path, "reach-memory-long", 7))
    instruction, frames, proprio, label = episode_frames(tiny_policy.config, 32, tmp_path)
    assert instruction == "reach-memory-long" and label.startswith("one episode of reach-memory-long (seed 7")
    assert len(frames) == 32 and all(np.array_equal(f, g) for f, g in zip(frames, long_demo.images[:32]))
    np.testing.assert_array_equal(np.stack(proprio), long_demo.states[:32])
    _, frames, _, label = episode_frames(tiny_policy.config, 60, tmp_path)
    assert len(frames) == 60 and "3 episodes concatenated: the longest has 40 frames, not 60" in label
