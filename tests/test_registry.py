"""Registries as data: a third-party package adds an adapter and a technique by entry points, without our code."""

from __future__ import annotations

import textwrap

import pytest
import torch

import vlaccel
from vlaccel.adapters import get_adapter
from vlaccel.adapters.base import ADAPTERS
from vlaccel.config import TECHNIQUES, config_from_dict
from vlaccel.registry import Registry, load

PLUGIN = '''
import dataclasses
import torch
from vlaccel.adapters.base import ModelAdapter
from vlaccel.config import TechniqueConfig


class PlugModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class PlugAdapter(ModelAdapter):
    model_names = ("PlugModel",)
    CAPABILITIES = frozenset({"plug"})

    @classmethod
    def matches(cls, model):
        return isinstance(model, PlugModel)


@dataclasses.dataclass(frozen=True)
class DoubleConfig(TechniqueConfig):
    name = "double"
    handler = "vlaccel_plug:DoubleHandler"
    requires = ("plug",)


class _Undo:
    def __init__(self, model):
        self.model = model

    def remove(self):
        self.model.scale.data /= 2


class DoubleHandler:
    def validate(self, model, config, adapter, pending):
        return None

    def apply(self, model, config, adapter, prepared):
        model.scale.data *= 2
        return _Undo(model)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "vlaccel_plug.py").write_text(PLUGIN)
    info = tmp_path / "vlaccel_plug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vlaccel-plug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [vlaccel.adapters]
        plug = vlaccel_plug:PlugAdapter

        [vlaccel.techniques]
        double = vlaccel_plug:DoubleConfig
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for registry in (ADAPTERS, TECHNIQUES):  # installed into the running process: read the entry points again
        registry.refresh()
    yield load("vlaccel_plug:PlugModel")
    for registry in (ADAPTERS, TECHNIQUES):
        registry.refresh()


def test_a_package_adds_an_adapter_and_a_technique_by_entry_points(plugin):
    model = plugin()
    assert type(get_adapter(model)).__name__ == "PlugAdapter"
    assert "double" in TECHNIQUES.names()
    config = config_from_dict({"technique": "double"})
    x = torch.ones(2)
    with vlaccel.applied(model, config):
        assert torch.equal(model(x), 2 * x)
    assert torch.equal(model(x), x)
    with pytest.raises(ValueError, match="needs plug"):  # a model without the capability is refused
        vlaccel.apply(vlaccel.models.ReferenceVLA(vlaccel.models.ReferenceVLAConfig.tiny()), config)


def test_lookup_order_and_errors():
    reg = Registry("thing", "vlaccel.no-such-group", {"a": "vlaccel.registry:load", "b": "vlaccel.registry:Registry"})
    assert reg.get("a") is load and reg.names() == ["a", "b"]
    reg.register("a", "mine")  # run time first
    assert reg.get("a") == "mine" and reg.names() == ["a", "b"]
    with pytest.raises(RuntimeError, match="already registered"):
        reg.register("a", "again")
    with pytest.raises(KeyError, match="unknown thing 'c'; known: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="module:attribute"):
        load("vlaccel.registry.load")
