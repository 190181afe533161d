"""KV bytes are the bytes the cache tensors hold: checked against nbytes and the analytic size."""

import torch
from torch import nn

from vlaccel.memory import cache_tensor_bytes, count_parameters, kv_bytes, kv_storage_bytes


def test_kv_bytes_after_an_episode(tiny_policy, frames):
    cfg = tiny_policy.config
    tiny_policy.reset("push the puck")
    prefix = tiny_policy.cache.get_seq_length()
    for f in frames[:3]:
        tiny_policy.step(f)
    cache = tiny_policy.cache
    expected = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert kv_bytes(cache) == expected
    tokens = prefix + 3 * cfg.tokens_per_frame
    assert expected == 2 * cfg.lm_layers * cfg.lm_kv_heads * cfg.head_dim * tokens * 4  # K and V, fp32
    assert kv_storage_bytes(cache) == expected  # DynamicCache concatenates: every tensor owns its storage
    assert cache_tensor_bytes(cache) >= expected


class _Layer:
    def __init__(self, keys, values):
        self.keys, self.values = keys, values


class _Cache:
    def __init__(self, layers):
        self.layers = layers


def test_views_count_their_nbytes_but_hold_their_storage():
    buf = torch.zeros(1, 2, 100, 8)
    cache = _Cache([_Layer(buf[:, :, :10], buf[:, :, 10:20]), _Layer(None, None)])
    assert kv_bytes(cache) == 2 * (1 * 2 * 10 * 8 * 4)
    assert kv_storage_bytes(cache) == buf.nbytes  # both views share one buffer, counted once
    assert kv_bytes(None) == 0


def test_count_parameters_counts_shared_weights_once():
    lin = nn.Linear(4, 3)
    assert count_parameters(nn.Sequential(lin, lin)) == 4 * 3 + 3
    assert count_parameters(nn.Linear(10, 10, bias=False)) == 100
