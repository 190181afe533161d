"""Latency harness: strict alternation, warm-up not recorded, module hooks fire once per module call."""

import time

import numpy as np
import pytest
import torch
from torch import nn

from vlaccel.bench.latency import ModuleTimer, Subject, policy_modules, ratio, time_alternating

SLEEP_S = 0.004  # per fake module call; timings are checked only from below (sleep never returns early)


def test_subjects_alternate_and_warmup_is_not_recorded():
    calls: list[str] = []
    subjects = [Subject("baseline", lambda: calls.append("baseline")),
                Subject("accelerated", lambda: calls.append("accelerated"))]
    samples, order = time_alternating(subjects, repeats=4, warmup=2)
    assert order == calls == ["baseline", "accelerated"] * 6
    assert len(samples["baseline"].e2e) == len(samples["accelerated"].e2e) == 4


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="repeats"):
        time_alternating([Subject("a", lambda: None)], repeats=0)
    with pytest.raises(ValueError, match="unique"):
        time_alternating([Subject("a", lambda: None), Subject("a", lambda: None)])


class _Sleepy(nn.Module):
    def forward(self, x):
        time.sleep(SLEEP_S)
        return x


def test_module_timer_sums_calls_within_one_measured_call():
    m = _Sleepy()
    with ModuleTimer({"m": m}) as timer:
        def three_calls():
            for _ in range(3):
                m(torch.zeros(1))

        samples, _ = time_alternating([Subject("s", three_calls, timer)], repeats=2, warmup=1)
        assert timer.calls() == {"m": 3}  # begin() cleared the previous call's spans
    assert all(v >= 3 * SLEEP_S for v in samples["s"].modules["m"])
    assert all(e >= m_ for e, m_ in zip(samples["s"].e2e, samples["s"].modules["m"]))
    m(torch.zeros(1))
    assert timer.calls() == {"m": 3}  # detached: no more spans recorded


def test_module_timer_hooks_on_the_policy(tiny_policy):
    cfg = tiny_policy.config
    image = np.zeros((cfg.image_size, cfg.image_size, 3), np.uint8)
    with ModuleTimer(policy_modules(tiny_policy)) as timer:
        timer.begin()
        tiny_policy.predict_action(image, "push the puck")
        # vision once, LM twice (instruction prefill + observation), DiT once per DDIM step
        assert timer.calls() == {"vision": 1, "language_model": 2, "action_head": cfg.inference_steps}
        totals = timer.totals()
    assert all(v > 0 for v in totals.values())


def test_ratio_edge_cases():
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(0.0, 0.0) == 1.0
    assert ratio(1.0, 0.0) == float("inf")
