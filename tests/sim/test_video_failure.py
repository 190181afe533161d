"""A GIF that cannot be written never turns a finished episode into a failure: the error is recorded beside
the episode's result."""

from __future__ import annotations

import pytest

from vlaccel.sim.episode_store import load_records


def test_a_failed_gif_keeps_the_episode_result(tmp_path, monkeypatch):
    pytest.importorskip("metaworld")
    from tests.sim.test_evaluate import HoldStillPolicy
    from vlaccel.sim import episode
    from vlaccel.sim.evaluate import run_eval

    def disk_full(path, frames):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(episode, "_write_gif", disk_full)
    out = tmp_path / "res.jsonl"
    run_eval(HoldStillPolicy, tasks=["reach-v3"], episodes=1, workers=0, out_path=out, progress=False,
             video_dir=tmp_path / "gifs")
    (rec,) = load_records(out)
    assert rec["error"] is None
    assert rec["video"] is None and "No space left on device" in rec["video_error"]
