"""The LeRobot plugin (``lerobot_policy_vlaccel`` + vlaccel.integrations.lerobot_plugin) on LeRobot's own code paths:
plugin discovery in a fresh process, ``make_policy`` from a saved policy folder, LeRobot's ``eval_policy`` rollout on
its Meta-World env, training untouched, and the report."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lerobot")
pytest.importorskip("metaworld")

from vlaccel.integrations import lerobot_plugin  # noqa: E402

TASK = "push-v3"


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory):
    from lerobot.envs.configs import MetaworldEnv

    from vlaccel.integrations.lerobot_folder import write_smolvla_folder

    return write_smolvla_folder(tmp_path_factory.mktemp("lerobot") / "smolvla", MetaworldEnv(task=TASK))


@pytest.fixture
def installed():
    def install(presets, report=None):
        lerobot_plugin.install(presets, report=report)

    yield install
    lerobot_plugin.uninstall()


def _make_policy(folder):
    """What lerobot-eval does: the policy config from the folder, then ``make_policy`` with the env's features."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.envs.configs import MetaworldEnv
    from lerobot.policies.factory import make_policy

    cfg = PreTrainedConfig.from_pretrained(folder)
    cfg.pretrained_path = folder
    cfg.device = "cpu"
    policy = make_policy(cfg, env_cfg=MetaworldEnv(task=TASK))
    policy.eval()
    return policy


def _batch(policy, folder, seed=0):
    from lerobot.policies.factory import make_pre_post_processors

    preprocessor, _ = make_pre_post_processors(policy.config, pretrained_path=str(folder))
    g = torch.Generator().manual_seed(seed)
    obs = {"observation.image": torch.rand(3, 480, 480, generator=g), "observation.state": torch.randn(4, generator=g),
           "task": "push the puck to the goal"}
    return preprocessor(obs)


def test_plugin_is_found_by_lerobot_in_a_fresh_process():
    try:
        importlib.metadata.distribution("lerobot_policy_vlaccel")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the plugin distribution is not installed: bash scripts/setup.sh --lerobot installs "
                    "plugins/lerobot_policy_vlaccel")
    code = ("from lerobot.utils.import_utils import register_third_party_plugins; register_third_party_plugins(); "
            "from lerobot.policies import factory; print(factory.get_policy_class.__code__.co_filename)")
    env = {**os.environ, lerobot_plugin.PRESET_ENV: "head-cache"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("vlaccel/integrations/lerobot_plugin.py")
    env.pop(lerobot_plugin.PRESET_ENV)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("lerobot/policies/factory.py")  # unset: nothing changed


def test_preset_applies_at_the_first_inference_call_and_matches_applying_it_by_hand(policy_folder, installed):
    import vlaccel

    plain = _make_policy(policy_folder)
    installed(["head-cache"])
    policy = _make_policy(policy_folder)
    assert vlaccel.applied_configs(policy) == []  # nothing before the first inference call
    batch = _batch(policy, policy_folder)
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim,
                        generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = policy.predict_action_chunk(batch, noise=noise)
    assert [type(c).__name__ for c in vlaccel.applied_configs(policy)] == ["HeadCacheConfig"]
    with vlaccel.applied(plain, *vlaccel.presets.get("head-cache", plain)), torch.no_grad():
        want = plain.predict_action_chunk(batch, noise=noise)
    assert torch.equal(got, want)


def test_training_mode_is_never_changed(policy_folder, installed):
    import vlaccel

    installed(["head-cache"])
    policy = _make_policy(policy_folder)
    policy.train()
    with torch.no_grad():
        policy.predict_action_chunk(_batch(policy, policy_folder))
    assert vlaccel.applied_configs(policy) == []


def test_lerobot_eval_rollout_runs_with_the_preset_and_reports(policy_folder, installed, tmp_path):
    """LeRobot's own eval loop (``eval_policy``, as ``lerobot-eval`` runs it) on its Meta-World env, cut to 12 steps."""
    from lerobot.envs.configs import MetaworldEnv
    from lerobot.envs.factory import make_env, make_env_pre_post_processors
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.scripts.lerobot_eval import eval_policy

    import vlaccel

    report = tmp_path / "report.json"
    installed(["head-cache"], report=str(report))
    policy = _make_policy(policy_folder)
    env_cfg = MetaworldEnv(task=TASK)
    envs = make_env(env_cfg, n_envs=1)
    env = envs[TASK][0]
    env.envs[0]._max_episode_steps = 12
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=str(policy_folder))
    env_pre, env_post = make_env_pre_post_processors(env_cfg=env_cfg, policy_cfg=policy.config)
    try:
        with torch.no_grad():
            info = eval_policy(env, policy, env_pre, env_post, preprocessor, postprocessor, n_episodes=1, start_seed=0)
    finally:
        env.close()
    assert len(info["per_episode"]) == 1
    assert [type(c).__name__ for c in vlaccel.applied_configs(policy)] == ["HeadCacheConfig"]
    accelerator = policy.select_action.func.__self__
    accelerator.write_report()
    data = json.loads(report.read_text())
    assert data["applied"] and data["policy"] == "SmolVLAPolicy"
    assert data["resolutions"][0]["applied"] == ["HeadCacheConfig()"]
    assert data["timing"]["select_action"]["calls"] == 12


def test_unknown_preset_is_refused_before_anything_changes():
    from lerobot.policies import factory

    from vlaccel.errors import UnknownNameError

    before = factory.get_policy_class
    with pytest.raises(UnknownNameError, match="unknown preset 'no-such-preset'"):
        lerobot_plugin.install(["no-such-preset"])
    assert factory.get_policy_class is before


def test_nothing_happens_without_the_variable_or_in_training(monkeypatch):
    monkeypatch.delenv(lerobot_plugin.PRESET_ENV, raising=False)
    assert lerobot_plugin.install_from_environment() is False
    monkeypatch.setenv(lerobot_plugin.PRESET_ENV, "head-cache")
    monkeypatch.setitem(sys.modules, "lerobot.scripts.lerobot_train", object())
    assert lerobot_plugin.install_from_environment() is False
