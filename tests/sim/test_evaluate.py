"""Closed-loop evaluation harness, driven by small stand-in policies that follow the policy interface
(`predict_action(image, instruction, proprio)`, `reset(instruction)` + `step(image, proprio)`)."""

import json

import numpy as np
import pytest

pytest.importorskip("metaworld")

from vlaccel.sim.env import make_env  # noqa: E402 (after importorskip)
from vlaccel.sim.evaluate import condition_identity, render_table, rollout, run_eval, summarize  # noqa: E402 (after importorskip)

pytestmark = pytest.mark.sim


class HoldStillPolicy:
    """Always returns a zero action chunk (never succeeds at reaching)."""

    def predict_action(self, image, instruction, proprio=None):
        assert image.shape == (128, 128, 3) and proprio.shape == (4,)
        return np.zeros((16, 4), dtype=np.float32)

    def reset(self, instruction):
        self.frames = 0

    def step(self, image, proprio=None):
        self.frames += 1
        return np.zeros((16, 4), dtype=np.float32)


class PushRaisesPolicy(HoldStillPolicy):
    """Crashes on the push task only (stand-in for a model bug hit by some inputs)."""

    def predict_action(self, image, instruction, proprio=None):
        if "push" in instruction:
            raise RuntimeError("boom on push")
        return super().predict_action(image, instruction, proprio)


class ExpertEchoPolicy:
    """Test double with privileged access: repeats the scripted expert's current action for the chunk."""

    def __init__(self, env):
        self.env = env
        self.calls = 0

    def predict_action(self, image, instruction, proprio=None):
        self.calls += 1
        return np.tile(self.env.expert_action(), (16, 1))

    def reset(self, instruction):
        self.calls = 0

    def step(self, image, proprio=None):
        return self.predict_action(image, None, proprio)


@pytest.mark.parametrize("history", [False, True])
def test_rollout_detects_success_and_counts_calls(history):
    with make_env("reach-v3", seed=0) as env:
        policy = ExpertEchoPolicy(env)
        res = rollout(policy, env, seed=1000, history=history, action_repeat=4)
        assert res["success"] and res["steps"] < env.max_steps
        assert res["policy_calls"] == policy.calls == -(-res["steps"] // 4)
        assert res["latency_ms_mean"] > 0
        still = rollout(HoldStillPolicy(), env, seed=1000, history=history)
        assert not still["success"] and still["steps"] == env.max_steps


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_resume_skips_finished_episodes(tmp_path):
    out = tmp_path / "res.jsonl"
    run_eval(
        HoldStillPolicy,
        tasks=["reach-v3"],
        episodes=2,
        workers=0,
        out_path=out,
        progress=False,
        video_dir=tmp_path / "vid",
    )
    first = _lines(out)
    assert [(r["seed"], r["preset"]) for r in first] == [(1000, "none"), (1001, "none")]
    assert all(r["error"] is None and r["success"] is False and r["steps"] == 120 for r in first)
    assert len(list((tmp_path / "vid").glob("*.gif"))) == 1  # first episode per task/preset only
    summary = run_eval(
        HoldStillPolicy, tasks=["reach-v3"], episodes=3, workers=0, out_path=out, progress=False
    )
    lines = _lines(out)
    assert len(lines) == 3 and lines[:2] == first and lines[2]["seed"] == 1002
    cell = summary["tasks"]["reach-v3"]["none"]
    assert cell["n"] == 3 and cell["successes"] == 0 and cell["ci95"][0] == 0.0
    with pytest.raises(ValueError, match="different --out"):
        run_eval(PushRaisesPolicy, tasks=["reach-v3"], episodes=1, workers=0, out_path=out, progress=False)


def test_resume_refuses_results_of_other_weights_or_settings(tmp_path):
    """Same policy name, different identity (retrained weights, changed preset or gate): refused, file untouched."""
    out = tmp_path / "res.jsonl"
    run_eval(HoldStillPolicy, tasks=["reach-v3"], episodes=1, workers=0, out_path=out, progress=False)
    (rec,) = _lines(out)
    assert rec["identity"] == condition_identity(None, "none")
    out.write_text(json.dumps({**rec, "identity": "0" * 16}) + "\n")
    before = out.read_text()
    with pytest.raises(ValueError, match=r"\['none'\] run with other policy weights.*different --out"):
        run_eval(HoldStillPolicy, tasks=["reach-v3"], episodes=2, workers=0, out_path=out, progress=False)
    assert out.read_text() == before
    out.write_text(json.dumps({k: v for k, v in rec.items() if k != "identity"}) + "\n")  # a file from before
    run_eval(HoldStillPolicy, tasks=["reach-v3"], episodes=2, workers=0, out_path=out, progress=False)
    assert [r["seed"] for r in _lines(out)] == [1000, 1001]


def test_policy_fingerprint_covers_decoding_settings(tmp_path, tiny_policy):
    """Same weights, another guidance scale in config.json: other episodes, so another identity."""
    from vlaccel.models.io import save_policy
    from vlaccel.sim.evaluate import policy_fingerprint

    save_policy(tiny_policy, tmp_path / "a")
    save_policy(tiny_policy, tmp_path / "b")
    assert policy_fingerprint(str(tmp_path / "a")) == policy_fingerprint(str(tmp_path / "b"))
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps({**cfg, "cfg_scale": cfg["cfg_scale"] + 1.0}))
    assert policy_fingerprint(str(tmp_path / "a")) != policy_fingerprint(str(tmp_path / "b"))


def test_condition_identity_follows_weights_configs_and_gate_file(tmp_path, monkeypatch):
    from vlaccel.techniques.kv_efficient import gate

    monkeypatch.setattr(gate, "shipped_gate_dir", lambda: tmp_path)  # where weight_files() looks it up
    (tmp_path / "gate.safetensors").write_bytes(b"gate one")
    base, streaming = condition_identity("fp1", "kv-efficient"), condition_identity("fp1", "kv-streaming")
    assert base == condition_identity("fp1", "kv-efficient")
    assert base != condition_identity("fp2", "kv-efficient")  # other policy weights
    assert base != condition_identity("fp1", "kv-streaming")  # other configs
    assert condition_identity("fp1", "none") != condition_identity("fp2", "none")
    (tmp_path / "gate.safetensors").write_bytes(b"gate two")  # retrained gate, same preset
    assert condition_identity("fp1", "kv-efficient") != base
    assert condition_identity("fp1", "kv-streaming") == streaming  # uses no gate


def test_condition_identity_follows_a_gate_stored_with_the_policy(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from vlaccel.techniques.kv_efficient import gate

    monkeypatch.setattr(gate, "shipped_gate_dir", lambda: tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "gate.safetensors").write_bytes(b"shipped gate")
    policy = SimpleNamespace(source_dir=tmp_path / "policy")
    no_gate = condition_identity("fp1", "kv-efficient", policy)
    assert no_gate == condition_identity("fp1", "kv-efficient")  # nothing stored with it: the shipped gate
    (tmp_path / "policy" / "kv_gate").mkdir(parents=True)
    (tmp_path / "policy" / "kv_gate" / "gate.safetensors").write_bytes(b"its own gate")
    own = condition_identity("fp1", "kv-efficient", policy)
    assert own != no_gate
    (tmp_path / "policy" / "kv_gate" / "gate.safetensors").write_bytes(b"its gate, retrained")
    assert condition_identity("fp1", "kv-efficient", policy) != own


@pytest.mark.slow
def test_worker_exception_is_recorded_and_run_continues(tmp_path):
    out = tmp_path / "res.jsonl"
    summary = run_eval(
        PushRaisesPolicy, tasks=["reach-v3", "push-v3"], episodes=1, workers=1, out_path=out, progress=False
    )
    recs = {r["task"]: r for r in _lines(out)}
    assert recs["reach-v3"]["error"] is None and recs["reach-v3"]["steps"] == 120
    assert "RuntimeError: boom on push" in recs["push-v3"]["error"] and recs["push-v3"]["success"] is False
    assert "Traceback" in recs["push-v3"]["traceback"]
    assert recs["reach-v3"]["pid"] != __import__("os").getpid()  # it really ran in a worker process
    assert summary["errors"] == 1
    push = summary["tasks"]["push-v3"]["none"]
    assert (push["n"], push["successes"], push["errors"], push["success_rate"]) == (1, 0, 1, 0.0)


def test_summary_pairs_presets_with_baseline(tmp_path):
    out = tmp_path / "res.jsonl"
    recs = []
    for seed in range(10):
        base_ok, fast_ok = seed < 8, seed < 5  # the preset loses 3 of the baseline's successes
        for preset, ok, lat in (("none", base_ok, 100.0), ("fast", fast_ok, 50.0)):
            recs.append(
                {
                    "task": "reach-v3",
                    "seed": seed,
                    "preset": preset,
                    "history": True,
                    "policy": "p",
                    "success": ok,
                    "steps": 40,
                    "policy_calls": 10,
                    "latency_ms_mean": lat,
                    "error": None,
                }
            )
    recs.append({**recs[-1], "seed": 10, "preset": "fast", "success": False, "error": "ValueError: x"})
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = summarize(out)
    assert s["conditions"] == ["none+hist", "fast+hist"]
    fast = s["tasks"]["reach-v3"]["fast+hist"]
    assert fast["n"] == 11 and fast["successes"] == 5 and fast["errors"] == 1 and fast["latency_ms"] == 50.0
    paired = s["paired"]["fast+hist"]["all"]
    assert paired["n_pairs"] == 10 and paired["delta"] == pytest.approx(-0.3) and paired["only_baseline"] == 3
    assert paired["ci95"][0] < -0.3 < paired["ci95"][1]  # 3 discordant pairs of 10: not significant
    assert paired["mcnemar_p"] == pytest.approx(0.25)
    table = render_table(s)
    assert table.row_count == 4


def test_summary_compares_every_pair_of_presets_and_reports_kv_at_the_end(tmp_path):
    """The retention baselines are compared with the gate (not only with the full cache): McNemar on the pairs."""
    out = tmp_path / "res.jsonl"
    wins = {"none": range(0, 9), "kv-efficient": range(0, 8), "kv-streaming": range(0, 1)}  # seeds that succeed
    recs = [{"task": "reach-memory-long", "seed": seed, "preset": preset, "history": True, "policy": "p",
             "success": seed in won, "steps": 400, "policy_calls": 100, "latency_ms_mean": 10.0,
             "latency_ms_late": 12.0 if preset == "none" else 9.0, "kv_bytes_end": 2**20 if preset == "none" else 2**15,
             "error": None}
            for preset, won in wins.items() for seed in range(10)]
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    s = summarize(out)
    assert set(s["pairwise"]) == {"kv-streaming+hist vs kv-efficient+hist"}  # pairs with the baseline: s["paired"]
    p = s["pairwise"]["kv-streaming+hist vs kv-efficient+hist"]
    assert (p["only_new"], p["only_baseline"], p["delta"]) == (0, 7, pytest.approx(-0.7))
    assert p["mcnemar_p"] == pytest.approx(2 / 2**7)  # exact two-sided: 7 discordant pairs, all one way
    cell = s["average"]["kv-efficient+hist"]
    assert cell["kv_bytes_end"] == 2**15 and cell["latency_ms_late"] == 9.0
    assert s["average"]["none+hist"]["kv_bytes_end"] == 2**20
    from vlaccel.sim.results import render_pairwise

    assert render_pairwise(s).row_count == 1 and render_table(s).row_count == 6


def test_two_policies_results_files_are_compared_pair_by_pair(tmp_path):
    """--against: a fine-tune against the policy it came from, per condition and task, on the seeds both ran."""
    from vlaccel.sim.results import compare_files, render_comparison

    def write(path, policy, wins, seeds):
        recs = [{"task": task, "seed": seed, "preset": preset, "history": True, "policy": policy,
                 "success": seed in won, "steps": 40, "policy_calls": 10, "error": None}
                for (task, preset), won in wins.items() for seed in seeds]
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    write(old, "v1", {("push-v3", "none"): range(0, 5), ("push-v3", "kv-efficient"): range(0, 4),
                      ("reach-v3", "none"): range(0, 10)}, range(10))
    # seeds 10-11 only in the new file, and a preset only in the new file: neither is paired
    write(new, "v2", {("push-v3", "none"): range(2, 10), ("push-v3", "kv-efficient"): range(0, 4),
                      ("reach-v3", "none"): range(0, 9), ("push-v3", "fast"): range(12)}, range(12))
    c = compare_files(new, old)
    assert c["policies"] == {"new": ["v2"], "old": ["v1"]}
    # each condition against itself there, each preset against the old baseline (the old policy as it ran plain)
    assert list(c["pairs"]) == ["none+hist vs none+hist", "kv-efficient+hist vs kv-efficient+hist",
                                "kv-efficient+hist vs none+hist", "fast+hist vs none+hist"]
    push = c["pairs"]["none+hist vs none+hist"]["per_task"]["push-v3"]
    assert (push["n_pairs"], push["both"], push["only_new"], push["only_baseline"]) == (10, 3, 5, 2)
    assert push["mcnemar_p"] == pytest.approx(2 * (1 + 7 + 21) / 2**7)  # 5 vs 2 discordant pairs
    pooled = c["pairs"]["none+hist vs none+hist"]["all"]
    assert (pooled["n_pairs"], pooled["only_new"], pooled["only_baseline"]) == (20, 5, 3)
    same = c["pairs"]["kv-efficient+hist vs kv-efficient+hist"]["all"]
    assert same["delta"] == 0 and same["mcnemar_p"] == 1.0
    against_plain = c["pairs"]["kv-efficient+hist vs none+hist"]["per_task"]["push-v3"]  # seeds 0-3 vs 0-4
    assert (against_plain["both"], against_plain["only_new"], against_plain["only_baseline"]) == (4, 0, 1)
    fast = c["pairs"]["fast+hist vs none+hist"]["all"]  # seeds 10-11 are in the new file only: not paired
    assert fast["n_pairs"] == 10 and fast["only_new"] == 5
    assert render_comparison(c).row_count == 3 + 2 + 2 + 2


@pytest.mark.slow
@pytest.mark.skipif(
    not __import__("os").environ.get("VLACCEL_RAY_TESTS"), reason="set VLACCEL_RAY_TESTS=1 (~30 s)"
)
def test_ray_path_records_results_and_errors(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "res.jsonl"
    summary = run_eval(
        "tests.sim.test_evaluate:PushRaisesPolicy",
        tasks=["reach-v3", "push-v3"],
        episodes=1,
        ray_address="local",
        out_path=out,
        progress=False,
    )
    assert summary["tasks"]["reach-v3"]["none"]["errors"] == 0
    assert summary["tasks"]["push-v3"]["none"]["errors"] == 1


def test_evaluate_re_exports_what_its_parts_define():
    """evaluate.py plans a run; its parts live in small modules, and the names callers import stay put."""
    import vlaccel.sim
    from vlaccel.sim import episode, episode_store, evaluate, identity, policies, protocol, results, workers

    assert evaluate.rollout is episode.rollout and evaluate.run_episode is episode.run_episode
    assert evaluate.as_action_chunk is episode.as_action_chunk
    assert evaluate.load_records is episode_store.load_records and evaluate.record_key is episode_store.record_key
    assert evaluate.condition_identity is identity.condition_identity
    assert evaluate.policy_fingerprint is identity.policy_fingerprint
    assert evaluate.get_policy is policies.get_policy and evaluate.load_policy is policies.load_policy
    assert (evaluate.BASELINE, evaluate.ACTION_REPEAT, evaluate.DEFAULT_SEED0) == ("none", 4, 1000)
    assert evaluate.BASELINE is protocol.BASELINE
    assert evaluate.summarize is results.summarize and evaluate.render_table is results.render_table
    assert callable(workers.run_pool) and callable(workers.run_ray)
    assert all(hasattr(evaluate, name) for name in evaluate.__all__)
    assert vlaccel.sim.rollout is episode.rollout  # the package's lazy name is still the function


@pytest.mark.slow
def test_history_rollout_records_kv_bytes_held_at_the_episode_end(tiny_policy):
    """The closed-loop table's KV column: what the cache holds when the episode ends (a bounded cache holds less)."""
    import vlaccel
    from vlaccel.memory import kv_bytes

    assert tiny_policy.config.action_dim == 4 and tiny_policy.config.proprio_dim == 4
    with make_env("reach-v3", image_size=tiny_policy.config.image_size) as env:
        full = rollout(tiny_policy, env, seed=1000, history=True)
        assert full["steps"] == env.max_steps and full["policy_calls"] == 30  # a random policy never succeeds
        tiny_policy.reset(env.instruction)
        for _ in range(full["policy_calls"]):  # the same number of observations, straight into a cache
            tiny_policy.step(env.render(), proprio=np.zeros(4))
        assert full["kv_bytes_end"] == kv_bytes(tiny_policy.cache) > 0
        tiny_policy.end_episode()
        handle = vlaccel.apply(tiny_policy, *vlaccel.presets.get("kv-streaming"))
        bounded = rollout(tiny_policy, env, seed=1000, history=True)
        handle.remove()
    assert 0 < bounded["kv_bytes_end"] < full["kv_bytes_end"] / 3
    assert bounded["latency_ms_late"] > 0 and full["latency_ms_late"] > 0
    with make_env("reach-v3") as env:
        assert rollout(HoldStillPolicy(), env, seed=1000)["kv_bytes_end"] is None  # no history, no cache
