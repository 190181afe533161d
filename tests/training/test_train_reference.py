"""train-reference on synthetic demos in the collect format: runs, learns, checkpoints, resumes, saves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vlaccel
from vlaccel.demo_files import demo_path, save_demo
from vlaccel.training.batches import action_chunk, demo_probabilities, random_shift, sample_batch, sample_windows
from vlaccel.training.reference import TrainConfig, TrainExperiment, train


INSTRUCTIONS = {"push-v3": "push the puck to the green ball", "reach-v3": "reach the red ball",
                "reach-memory-long": "reach where the ball was", "reach-choice-long": "reach the ball that was green"}


def make_demos(root, n=2, frames=5, size=32, seed=0, task="push-v3", positions=True):
    rng = np.random.default_rng(seed)
    for i in range(n):
        scene = {"objects": rng.normal(size=(frames, 3)), "goals": rng.normal(size=(frames, 3))} if positions else {}
        save_demo(
            demo_path(root, task, i),
            images=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8),
            states=rng.normal(size=(frames, 4)).astype(np.float32),
            actions=np.clip(rng.normal(size=(frames * 4, 4)), -1, 1).astype(np.float32),
            task=task, instruction=INSTRUCTIONS[task], seed=i, success=True, frame_every=4,
            success_step=frames * 4 - 1, **scene,
        )


def test_action_chunk_pads_past_episode_end():
    acts = np.arange(20, dtype=np.float32).reshape(10, 2)
    chunk, mask = action_chunk(acts, 8, 4)
    np.testing.assert_array_equal(chunk[:2], acts[8:10])
    np.testing.assert_array_equal(chunk[2:], 0)
    np.testing.assert_array_equal(mask, [1, 1, 0, 0])


def test_random_shift_keeps_shape_and_moves_content():
    imgs = torch.zeros(2, 3, 16, 16, 3, dtype=torch.uint8)
    imgs[..., 8, 8, :] = 255
    out = random_shift(imgs, 4, torch.Generator().manual_seed(1))
    assert out.shape == imgs.shape and out.dtype == torch.uint8
    for b in range(2):  # one shift per sequence: every frame identical
        assert torch.equal(out[b, 0], out[b, 2])
    assert random_shift(imgs, 0, torch.Generator()) is imgs


def test_batches_mask_padding_frames(tmp_path):
    from vlaccel.demo_files import load_demos

    make_demos(tmp_path, n=2, frames=5)
    demos = load_demos(tmp_path)
    batch = sample_batch(demos, 6, 16, np.random.default_rng(0))
    frames_valid = batch.action_mask.sum(-1) > 0  # [B, F]
    # every sample has a prefix of valid frames followed only by padding
    for row in frames_valid:
        n = int(row.sum())
        assert n >= 1 and row[:n].all() and not row[n:].any()


@pytest.mark.slow
def test_train_learns_checkpoints_resumes_and_saves(tmp_path):
    make_demos(tmp_path / "demos", n=1, frames=4)
    cfg = TrainConfig(data=str(tmp_path / "demos"), run_dir=str(tmp_path / "run"), out=str(tmp_path / "policy"),
                      preset="tiny", steps=60, batch_size=2, lr=3e-3, warmup=5, checkpoint_every=30, shift_pad=0,
                      bf16=False)
    card = train(cfg, log=lambda *_: None)
    curve = card["training"]["loss_curve"]
    assert curve[-1]["loss_ema"] < curve[0]["loss_ema"], curve  # it fits one demo
    policy = vlaccel.load_policy(tmp_path / "policy")
    assert json.loads((tmp_path / "policy" / "model_card.json").read_text())["tasks"] == ["push-v3"]
    actions = policy.predict_action(np.zeros((32, 32, 3), np.uint8), "push the puck to the green ball", [0, 0, 0, 0])
    assert actions.shape == (16, 4) and np.isfinite(actions).all()
    # resume: a longer run continues from the saved step instead of restarting
    logs = []
    card2 = train(TrainConfig(**{**_cfg_fields(cfg), "steps": 62}), log=logs.append)
    assert any("resumed" in m and "step 60" in m for m in logs)
    assert card2["training"]["steps_done"] == 62


def _cfg_fields(cfg):
    import dataclasses

    return dataclasses.asdict(cfg)


def test_missing_demos_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="vlaccel collect"):
        train(TrainConfig(data=str(tmp_path / "none"), preset="tiny"))


@pytest.mark.parametrize("anchor", [0, 2])
def test_windows_keep_true_frames_positions_and_anchors(tmp_path, anchor):
    from vlaccel.demo_files import load_demos
    from vlaccel.training.batches import sample_windows

    make_demos(tmp_path, n=2, frames=6)
    demos = load_demos(tmp_path)
    batch = sample_windows(demos, 16, 16, np.random.default_rng(0), frames=3, anchor=anchor)
    assert batch.images.shape[:2] == (16, 3 + anchor) and batch.frame_index.shape == (16, 3 + anchor)
    for b in range(16):
        idx = batch.frame_index[b].tolist()
        valid = int((batch.action_mask[b].sum(-1) > 0).sum())  # every real frame has actions left (chunk 16)
        real, start = idx[:valid], idx[valid - 3 if valid >= 3 else 0]
        # anchors: the episode's first frames before the window, then the window's consecutive frames
        assert real == list(range(min(anchor, start))) + list(range(start, start + 3)), idx
        assert idx == sorted(idx) and len(set(idx)) == len(idx)  # padding continues the positions
        d = next(d for d in demos if torch.equal(batch.images[b, valid - 1], torch.from_numpy(d.images[real[-1]])))
        for k, f in enumerate(real):  # each frame carries its own image and the action chunk that follows it
            assert torch.equal(batch.images[b, k], torch.from_numpy(d.images[f]))
            np.testing.assert_array_equal(batch.actions[b, k, :4].numpy(), d.actions[f * 4 : f * 4 + 4])


def test_windows_of_a_long_memory_task_always_keep_its_cue_frames(tmp_path):
    from vlaccel.demo_files import load_demos
    from vlaccel.sim.tasks import get_task
    from vlaccel.training.batches import cue_frames

    make_demos(tmp_path, n=3, frames=100, size=8, task="reach-memory-long")
    make_demos(tmp_path, n=2, frames=20, size=8, task="push-v3")
    demos = load_demos(tmp_path)
    cue = get_task("reach-memory-long").cue
    for d in demos:
        times = cue.draw(d.task, d.seed) if d.task == "reach-memory-long" else None
        expected = [] if times is None else list(range(times.cue_start // 4, times.cue_end // 4))
        assert cue_frames(d) == expected and (times is None or len(expected) == 3)
    batch = sample_windows(demos, 64, 16, np.random.default_rng(0), frames=3, anchor=2, context=4)
    saw_context = False
    for b, task in enumerate(batch.tasks):
        valid = int((batch.action_mask[b].sum(-1) > 0).sum())
        idx = batch.frame_index[b, :valid].tolist()
        start = idx[-3]
        assert idx[-3:] == [start, start + 1, start + 2] and idx == sorted(set(idx))
        if task != "reach-memory-long":
            assert idx[:-3] == list(range(min(2, start)))  # other tasks: anchors + window, as before
            continue
        d = next(d for d in demos if d.task == task and torch.equal(batch.images[b, 0], torch.from_numpy(d.images[idx[0]])))
        before = [f for f in cue_frames(d) if f < start]
        assert set(before) <= set(idx[:-3]) and set(range(min(2, start))) <= set(idx[:-3])
        extra = len(idx) - 3 - len(before) - min(2, start)
        assert 0 <= extra <= 4
        saw_context |= extra > 0
    assert saw_context and batch.images.shape[1] <= 2 + 3 + 4 + 3


def _long_task_and_push_demos(root) -> tuple[list, object]:
    """Three 100-frame reach-memory-long demos and one push-v3 demo (8 px frames)."""
    from vlaccel.demo_files import load_demos

    make_demos(root, n=3, frames=100, size=8, task="reach-memory-long")
    make_demos(root, n=1, frames=20, size=8, task="push-v3")
    demos = load_demos(root)
    return [d for d in demos if d.task == "reach-memory-long"], next(d for d in demos if d.task == "push-v3")


def test_window_go_prob_draws_windows_over_the_reach_after_go(tmp_path):
    from vlaccel.training.batches import go_frame, window_frames

    long, push = _long_task_and_push_demos(tmp_path)
    assert go_frame(push) is None and all(89 <= go_frame(d) <= 99 for d in long)  # go step in [356, 396]

    def windows(go_prob, seed=0):
        rng = np.random.default_rng(seed)
        return [window_frames(d, rng, 3, 2, 4, go_prob) for _ in range(40) for d in long]

    assert windows(0.0) == [window_frames(d, rng, 3, 2, 4) for rng in [np.random.default_rng(0)]
                            for _ in range(40) for d in long]  # 0 = the sampler as it was, draw for draw
    reach_share = {p: np.mean([w[-1] >= go_frame(d) for w, d in zip(windows(p), long * 40)]) for p in (0.0, 1.0)}
    assert reach_share[1.0] == 1.0 and reach_share[0.0] < 0.3, reach_share
    for w, d in zip(windows(1.0), long * 40):  # still anchors + cue + context before 3 consecutive frames
        assert w[-3:] == list(range(w[-3], w[-3] + 3)) and w[-1] < d.num_frames and w[:2] == [0, 1]
    rng = np.random.default_rng(0)
    assert window_frames(push, rng, 3, 2, 4, 1.0) == window_frames(push, np.random.default_rng(0), 3, 2, 4)
    with pytest.raises(ValueError, match="window_go_prob is a probability"):
        TrainConfig(window_go_prob=1.5)


def test_prefix_go_prob_draws_prefixes_that_end_in_the_reach_after_go(tmp_path):
    from vlaccel.training.batches import go_frame, prefix_length

    long, push = _long_task_and_push_demos(tmp_path)

    def lengths(go_prob, cap=None, seed=0):
        rng = np.random.default_rng(seed)
        return [prefix_length(d, rng, cap, go_prob) for _ in range(40) for d in long]

    rng = np.random.default_rng(0)
    assert lengths(0.0) == [int(rng.integers(1, d.num_frames + 1)) for _ in range(40) for d in long]  # as it was
    ends_in_reach = {p: np.mean([h > go_frame(d) for h, d in zip(lengths(p), long * 40)]) for p in (0.0, 1.0)}
    assert ends_in_reach[1.0] == 1.0 and ends_in_reach[0.0] < 0.3, ends_in_reach
    assert max(lengths(1.0)) <= 100 and max(lengths(1.0, cap=95)) <= 95
    assert all(h <= 50 for h in lengths(1.0, cap=50))  # go beyond the cap: uniform within the cap, as before
    rng = np.random.default_rng(0)
    assert prefix_length(push, rng, None, 1.0) == prefix_length(push, np.random.default_rng(0))
    with pytest.raises(ValueError, match="prefix_go_prob is a probability"):
        TrainConfig(prefix_go_prob=-0.1)


def test_init_starts_from_saved_policy(tmp_path):
    make_demos(tmp_path / "demos", n=1, frames=3)
    base = dict(data=str(tmp_path / "demos"), preset="tiny", batch_size=2, shift_pad=0, bf16=False, warmup=1)
    train(TrainConfig(**base, run_dir=str(tmp_path / "r1"), out=str(tmp_path / "p1"), steps=2), log=lambda *_: None)
    first = vlaccel.load_policy(tmp_path / "p1")
    # zero steps from --init: the saved weights come back unchanged (bf16 storage is exact on bf16 values)
    train(TrainConfig(**base, run_dir=str(tmp_path / "r2"), out=str(tmp_path / "p2"), steps=0, init=str(tmp_path / "p1")),
          log=lambda *_: None)
    second = vlaccel.load_policy(tmp_path / "p2")
    for (k, v), (_, v2) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(v, v2), k


def test_waypoint_targets_are_future_hand_displacements():
    from vlaccel.training.batches import WAYPOINT_FRAMES, waypoint_targets

    assert WAYPOINT_FRAMES == (8, None)
    states = np.zeros((12, 4), np.float32)
    states[:, 0] = np.arange(12)  # hand x = frame index
    np.testing.assert_array_equal(waypoint_targets(states, 2), [[8, 0, 0], [9, 0, 0]])  # frame 10, last frame 11
    np.testing.assert_array_equal(waypoint_targets(states, 6), [[5, 0, 0], [5, 0, 0]])  # 8 later clips to 11
    np.testing.assert_array_equal(waypoint_targets(states, 11), np.zeros((2, 3)))


def test_batches_carry_each_frames_waypoints(tmp_path):
    from vlaccel.demo_files import load_demos
    from vlaccel.training.batches import sample_windows, waypoint_targets

    make_demos(tmp_path, n=2, frames=6)
    demos = load_demos(tmp_path)
    batch = sample_windows(demos, 8, 16, np.random.default_rng(0), frames=3, anchor=2)
    assert batch.waypoints.shape == (8, 5, 2, 3)
    for b in range(8):
        f = int(batch.frame_index[b, 0])
        d = next(d for d in demos if torch.equal(batch.images[b, 0], torch.from_numpy(d.images[f])))
        np.testing.assert_array_equal(batch.waypoints[b, 0].numpy(), waypoint_targets(d.states, f))


@pytest.mark.slow
def test_waypoint_loss_is_logged_and_switchable(tmp_path):
    make_demos(tmp_path / "demos", n=1, frames=4)
    base = dict(data=str(tmp_path / "demos"), preset="tiny", batch_size=2, shift_pad=0, bf16=False, warmup=1,
                steps=20)
    on = train(TrainConfig(**base, run_dir=str(tmp_path / "r1"), out=str(tmp_path / "p1")), log=lambda *_: None)
    assert {"waypoint_ema", "waypoint_visual_ema"} <= set(on["training"]["loss_curve"][-1])
    off = train(TrainConfig(**base, run_dir=str(tmp_path / "r2"), out=str(tmp_path / "p2"), aux_weight=0,
                                aux_visual_weight=0, experiment=TrainExperiment(aux_object_weight=0)),
                log=lambda *_: None)
    assert "waypoint_ema" not in off["training"]["loss_curve"][-1]
    assert off["training"]["loss_curve"][-1]["loss_ema"] == off["training"]["loss_curve"][-1]["action_ema"]
    with pytest.raises(ValueError, match="aux_weight"):
        train(TrainConfig(**base, run_dir=str(tmp_path / "r3"), aux_weight=-1), log=lambda *_: None)


def test_batches_carry_object_and_goal_relative_to_the_hand(tmp_path):
    from vlaccel.demo_files import load_demos
    from vlaccel.training.batches import scene_targets

    make_demos(tmp_path, n=2, frames=6)
    demos = load_demos(tmp_path)
    d = demos[0]
    np.testing.assert_allclose(scene_targets(d)[4, 0], d.objects[4] - d.states[4, :3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(scene_targets(d)[4, 1], d.goals[4] - d.states[4, :3], rtol=0, atol=1e-6)
    batch = sample_windows(demos, 8, 16, np.random.default_rng(0), frames=3, anchor=2)
    assert batch.scene.shape == (8, 5, 2, 3)
    for b in range(8):
        n = int((batch.action_mask[b].sum(-1) > 0).sum())
        for k in range(n):  # every real frame carries its own frame's targets
            f = int(batch.frame_index[b, k])
            d = next(d for d in demos if torch.equal(batch.images[b, k], torch.from_numpy(d.images[f])))
            np.testing.assert_array_equal(batch.scene[b, k].numpy(), scene_targets(d)[f])


@pytest.mark.slow
def test_object_loss_is_logged_switchable_and_needs_recorded_positions(tmp_path):
    make_demos(tmp_path / "demos", n=1, frames=4)
    make_demos(tmp_path / "old", n=1, frames=4, positions=False)
    base = dict(preset="tiny", batch_size=2, shift_pad=0, bf16=False, warmup=1, steps=40, lr=1e-3,
                experiment=TrainExperiment(aux_object_weight=1.0))
    quiet = dict(log=lambda *_: None)
    on = train(TrainConfig(**base, data=str(tmp_path / "demos"), run_dir=str(tmp_path / "r1"),
                           out=str(tmp_path / "p1")), **quiet)
    curve = on["training"]["loss_curve"]
    assert "object_ema" in curve[-1] and curve[-1]["object_ema"] < curve[0]["object_ema"]
    with pytest.raises(ValueError, match="no object/goal positions.*collect --overwrite"):
        train(TrainConfig(**base, data=str(tmp_path / "old"), run_dir=str(tmp_path / "r2")), **quiet)
    assert not (tmp_path / "r2").exists()  # refused before anything was written
    off = train(TrainConfig(**{**base, "experiment": TrainExperiment(aux_object_weight=0)}, data=str(tmp_path / "old"),
                            run_dir=str(tmp_path / "r3"), out=str(tmp_path / "p3")), **quiet)
    assert "object_ema" not in off["training"]["loss_curve"][-1]
    with pytest.raises(ValueError, match="aux_object_weight"):
        train(TrainConfig(**{**base, "experiment": TrainExperiment(aux_object_weight=-1)}, data=str(tmp_path / "demos"),
                          run_dir=str(tmp_path / "r4")), **quiet)


def test_task_weights_set_how_often_each_tasks_demos_are_drawn(tmp_path):
    from vlaccel.demo_files import load_demos

    make_demos(tmp_path, n=2, task="push-v3")
    make_demos(tmp_path, n=2, task="reach-v3", seed=1)
    demos = load_demos(tmp_path)
    assert demo_probabilities(demos, None) is None
    probs = demo_probabilities(demos, {"push-v3": 3.0})
    by_task = {t: sum(p for p, d in zip(probs, demos) if d.task == t) for t in ("push-v3", "reach-v3")}
    assert by_task["push-v3"] == pytest.approx(0.75) and by_task["reach-v3"] == pytest.approx(0.25)
    only_reach = demo_probabilities(demos, {"push-v3": 0.0})
    rng = np.random.default_rng(0)
    batch = sample_windows(demos, 32, 16, rng, frames=2, probs=only_reach)
    assert set(batch.instructions) == {INSTRUCTIONS["reach-v3"]}
    drawn = [sample_windows(demos, 50, 16, rng, frames=2, probs=probs).instructions for _ in range(4)]
    share = sum(i == INSTRUCTIONS["push-v3"] for b in drawn for i in b) / 200
    assert 0.6 < share < 0.9  # expected 0.75; uniform sampling would give 0.5


@pytest.mark.parametrize("weights, message", [
    ({"pick-place-v3": 2.0}, "no demos"),
    ({"push-v3": -1.0}, ">= 0"),
    ({"push-v3": 0.0}, "nothing to sample"),
])
def test_bad_task_weights_are_refused_before_training(tmp_path, weights, message):
    make_demos(tmp_path / "demos", n=2)
    cfg = TrainConfig(data=str(tmp_path / "demos"), run_dir=str(tmp_path / "run"), out=str(tmp_path / "out"),
                      preset="tiny", steps=1, task_weights=weights)
    with pytest.raises(ValueError, match=message):
        train(cfg, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_task_weights_flag_parses_pairs_and_rejects_a_missing_weight(capsys):
    from vlaccel.training.flags import parse_args

    assert parse_args(["--task-weights", "push-v3", "2.5", "reach-v3", "1"]).task_weights == {"push-v3": 2.5,
                                                                                               "reach-v3": 1.0}
    for bad in (["push-v3"], ["push-v3", "x"]):
        with pytest.raises(SystemExit, match="^2$") as exit_info:
            parse_args(["--task-weights", *bad])
        assert exit_info.value.code == 2
    assert "--task-weights" in capsys.readouterr().err


def test_layout_targets_are_episode_starts_standardized_within_each_task(tmp_path):
    from vlaccel.demo_files import load_demos
    from vlaccel.training.batches import LAYOUT_MIN_STD, layout_stats, scene_targets

    make_demos(tmp_path, n=4, frames=5, task="push-v3")
    make_demos(tmp_path, n=3, frames=6, seed=1, task="reach-v3")
    demos = load_demos(tmp_path)
    fixed = demos[0]  # an axis that does not vary within push-v3 is not a target
    for d in demos:
        if d.task == "push-v3":
            d.objects[0, 2] = 0.02 + 1e-4 * d.seed
    stats = layout_stats(demos)
    assert sorted(stats) == ["push-v3", "reach-v3"]
    for task in stats:
        starts = np.stack([scene_targets(d, stats)[0] for d in demos if d.task == task])  # [N, 2, 3]
        varying = np.isfinite(stats[task][1])
        np.testing.assert_allclose(starts.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(starts.std(0)[varying], 1, atol=1e-5)
    assert stats["push-v3"][1][0, 2] == np.inf and LAYOUT_MIN_STD > 1e-4 * 3
    t = scene_targets(fixed, stats)
    assert t.shape == (5, 2, 3) and t[:, 0, 2].tolist() == [0.0] * 5
    np.testing.assert_array_equal(t, np.broadcast_to(t[0], t.shape))  # the same for every frame
    batch = sample_windows(demos, 6, 16, np.random.default_rng(0), frames=3, anchor=1, layout=stats)
    for b in range(6):
        d = next(d for d in demos if torch.equal(batch.images[b, 0], torch.from_numpy(d.images[0])))
        np.testing.assert_array_equal(batch.scene[b, 0].numpy(), scene_targets(d, stats)[0])


@pytest.mark.slow
def test_layout_scene_target_trains_and_bad_names_are_refused(tmp_path):
    make_demos(tmp_path / "demos", n=3, frames=4)
    base = {"preset": "tiny", "batch_size": 2, "shift_pad": 0, "bf16": False, "warmup": 1, "steps": 40, "lr": 1e-3,
            "data": str(tmp_path / "demos")}
    quiet = {"log": lambda *_: None}
    layout = TrainExperiment(aux_object_weight=1.0, scene_target="layout")
    card = train(TrainConfig(**base, run_dir=str(tmp_path / "r1"), out=str(tmp_path / "p1"), experiment=layout),
                 **quiet)
    curve = card["training"]["loss_curve"]
    assert curve[-1]["object_ema"] < curve[0]["object_ema"]
    assert "--experiment.scene-target layout" in card["command"]
    with pytest.raises(ValueError, match="scene_target must be one of"):
        train(TrainConfig(**base, run_dir=str(tmp_path / "r2"),
                          experiment=TrainExperiment(aux_object_weight=1.0, scene_target="absolute")), **quiet)
    assert not (tmp_path / "r2").exists()


def _replay(command):
    """The TrainConfig that ``vlaccel train-reference``'s parser makes of a recorded command line."""
    import shlex

    from vlaccel.training.flags import parse_args

    argv = shlex.split(command)
    assert argv[:2] == ["vlaccel", "train-reference"], command
    return parse_args(argv[2:])


def test_default_output_is_in_the_run_dir_not_the_bundled_assets(tmp_path):
    from pathlib import Path

    from vlaccel.models.io import bundled_dir

    make_demos(tmp_path / "demos", n=1, frames=3)
    cfg = TrainConfig(data=str(tmp_path / "demos"), run_dir=str(tmp_path / "run"), preset="tiny", steps=1,
                      batch_size=2, shift_pad=0, bf16=False, warmup=1)
    bundled = bundled_dir("reference").resolve()
    assert cfg.out is None or bundled not in [Path(cfg.out).resolve(), *Path(cfg.out).resolve().parents], cfg.out
    shipped = (bundled / "model.safetensors").stat().st_mtime_ns
    train(cfg, log=lambda *_: None)
    assert vlaccel.load_policy(tmp_path / "run" / "policy").config.image_size == 32
    assert (bundled / "model.safetensors").stat().st_mtime_ns == shipped
    assert _replay("vlaccel train-reference").out is None  # the CLI default is the same


def test_the_recorded_command_replays_to_the_same_config(tmp_path):
    """The card's command uses only real flags, in the form the parser takes (e.g. --no-bf16, not --bf16 False)."""
    make_demos(tmp_path / "demos", n=1, frames=3)
    make_demos(tmp_path / "demos", n=1, frames=3, task="reach-v3")
    cfg = TrainConfig(data=str(tmp_path / "demos"), run_dir=str(tmp_path / "my run"), out=str(tmp_path / "p 1"),
                      preset="tiny", steps=2, batch_size=2, shift_pad=0, bf16=False, warmup=1, weight_decay=0.0,
                      lr=1e-3, minutes=5.5, tasks=["push-v3", "reach-v3"], task_weights={"push-v3": 0.1 + 0.2},
                      seed=3, window_prob=0.5, experiment=TrainExperiment(aux_object_weight=0.5, scene_target="layout"))
    card = train(cfg, log=lambda *_: None)
    assert _replay(card["command"]) == cfg, card["command"]


def test_command_line_states_every_kind_of_field():
    from vlaccel.training.cli import command_line

    cfg = TrainConfig(init="runs/a b/policy", freeze_backbone=True,
                      tasks=[], max_frames=6, threads=1, bf16=False, warmup=0, weight_decay=1e-5,
                      experiment=TrainExperiment(freeze_head=True, visual_readout_heads=4,
                                                 visual_readout_source="lm_input", visual_readout_pool="flatten",
                                                 readout_norm_weight=0.25, distill_weight=2.0,
                                                 distill_tasks=["reach-v3"], distill_from="reference",
                                                 distill_frames=8))
    assert _replay(command_line(cfg)) == cfg
    assert _replay(command_line(TrainConfig())) == TrainConfig()
    assert command_line(TrainConfig()) == "vlaccel train-reference"


def test_the_empty_command_line_is_the_default_config():
    assert _replay("vlaccel train-reference") == TrainConfig()


@pytest.mark.parametrize("recipe", sorted(Path(__file__).parents[2].glob("recipes/*/*.toml")),
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_release_recipe_parses_and_replays_through_its_command_line(recipe):
    from vlaccel.training.flags import command_line, parse_args
    from vlaccel.training.train_config import load_recipe

    cfg = load_recipe(recipe)
    assert parse_args(["--config", str(recipe)]) == cfg
    assert _replay(command_line(cfg)) == cfg
    assert parse_args(["--config", str(recipe), "--steps", "7", "--no-freeze-backbone",
                       "--experiment.distill-weight", "0", "--experiment.distill-tasks", "None",
                       "--experiment.distill-from", "None"]).steps == 7


def test_the_v8_recipe_states_the_recorded_training_of_the_bundled_policy():
    """recipes/reference/v8.toml = the configuration the full reference-v8 model card records, up to the folder names
    (recipes name their own run folders) and the wall-time budget (a recipe runs its steps to the end)."""
    import dataclasses

    from vlaccel.training.train_config import load_recipe

    root = Path(__file__).parents[2]
    recorded = dict(json.loads((root / "docs/model_cards/reference-v8.json").read_text())["training"])
    experiment = {f.name for f in dataclasses.fields(TrainExperiment)}
    nested = {**{k: recorded.pop(k) for k in list(recorded) if k in experiment}, **recorded.pop("experiment", {})}
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    card = TrainConfig.from_dict({**{k: v for k, v in recorded.items() if k in top}, "experiment": nested})
    recipe = load_recipe(root / "recipes/reference/v8.toml")
    places = {"data", "run_dir", "out", "init", "minutes"}
    differ = {f.name for f in dataclasses.fields(TrainConfig) if getattr(card, f.name) != getattr(recipe, f.name)}
    assert differ - {"experiment"} <= places, differ
    assert dataclasses.replace(card.experiment, distill_from=None) == dataclasses.replace(recipe.experiment,
                                                                                         distill_from=None)


def test_a_recipe_with_an_unknown_field_or_bad_toml_is_refused_by_name(tmp_path):
    from vlaccel.errors import MissingInputError, UsageError
    from vlaccel.training.train_config import load_recipe

    (tmp_path / "typo.toml").write_text('steps = 5\nwindow_probability = 0.5\n[experiment]\nfreeze_heads = true\n')
    with pytest.raises(UsageError, match=r"unknown field\(s\) \['window_probability'\]"):
        load_recipe(tmp_path / "typo.toml")
    (tmp_path / "typo.toml").write_text('[experiment]\nfreeze_heads = true\n')
    with pytest.raises(UsageError, match=r"\['experiment.freeze_heads'\]"):
        load_recipe(tmp_path / "typo.toml")
    (tmp_path / "bad.toml").write_text("steps = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_recipe(tmp_path / "bad.toml")
    with pytest.raises(MissingInputError, match="no such file"):
        load_recipe(tmp_path / "none.toml")


def test_contradictory_flags_are_refused_when_the_config_is_built():
    from vlaccel.errors import UsageError

    with pytest.raises(UsageError, match="set freeze_backbone too"):
        TrainConfig(experiment=TrainExperiment(freeze_head=True))
    with pytest.raises(UsageError, match="scene_target must be one of"):
        TrainConfig(experiment=TrainExperiment(scene_target="absolute"))
    with pytest.raises(UsageError, match="auxiliary loss weights must be >= 0"):
        TrainConfig(aux_visual_weight=-0.1)


def test_a_resumed_run_with_another_recipe_is_refused_before_any_work(tmp_path, monkeypatch):
    from vlaccel.errors import UsageError
    from vlaccel.training import reference

    make_demos(tmp_path / "demos", n=1, frames=4)
    cfg = TrainConfig(data=str(tmp_path / "demos"), run_dir=str(tmp_path / "run"), out=str(tmp_path / "policy"),
                      preset="tiny", steps=2, batch_size=1, lr=3e-3, warmup=1, checkpoint_every=1, shift_pad=0,
                      bf16=False, tasks=["push-v3"])
    train(cfg, log=lambda *_: None)
    fields = _cfg_fields(cfg)
    # how long, where and how fast this invocation runs are not the recipe: the same run goes on
    reference.check_resumed_recipe(TrainConfig(**{**fields, "steps": 9, "minutes": 5.0, "threads": 1,
                                                  "checkpoint_every": 3}))

    def no_work(*args, **kwargs):
        raise AssertionError("demos were loaded before the recipe was compared")

    monkeypatch.setattr(reference, "_load_demos", no_work)
    changed = TrainConfig(**{**fields, "lr": 1e-3, "seed": 1, "tasks": ["push-v3", "reach-v3"]})
    with pytest.raises(UsageError, match=r"checkpoint.pt was trained with another recipe \(lr: 0.003 in the checkpoint, "
                                         r"0.001 now; seed: 0 in the checkpoint, 1 now; tasks: \['push-v3'\] in the "
                                         r"checkpoint, \['push-v3', 'reach-v3'\] now\); .*--run-dir NEW_FOLDER"):
        train(changed, log=lambda *_: None)
    experiment = TrainConfig(**{**fields, "experiment": TrainExperiment(distill_frames=3)})
    with pytest.raises(UsageError, match=r"experiment.distill_frames: 16 in the checkpoint, 3 now"):
        train(experiment, log=lambda *_: None)
