"""Adapters: where a model keeps the parts techniques act on. Techniques never import a concrete model.

An adapter answers, for one model family: the decoder layers (and how to replace them), the LM config,
the token layout of the block being processed (instruction / visual / cognition spans), the action-head
blocks, and how to plug a KV cache factory or a per-episode reset hook in; :meth:`ModelAdapter.capabilities`
says which of these the model has. New family = one adapter file, found through :data:`ADAPTERS` (a table of
dotted paths, entry points of the group ``vlaccel.adapters``, or :func:`register_adapter` at run time).
Adapters never name a technique: what a technique plugs in (a cache factory, a reset hook) it passes in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from vlaccel.errors import VlaccelError
from vlaccel.registry import Registry

__all__ = ["ModelAdapter", "register_adapter", "get_adapter", "supported_models", "UnsupportedModelError",
           "ADAPTERS", "CAPABILITY_NAMES"]

#: capability -> what it means, as errors say it (``ModelAdapter.capabilities``; techniques' ``requires``)
CAPABILITY_NAMES = {
    "decoder_layers": "a decoder stack vlaccel can reach",
    "visual_tokens": "visual tokens in its LM input",
    "action_head": "a diffusion or flow-matching action head",
    "sampler": "an action sampler whose step count vlaccel can set",
    "history": "a KV cache vlaccel can give a cache factory to",
    "frames": "observations of a fixed number of tokens (frames)",
    "cross_kv": "an action expert that re-projects a cached prefix in cross-attention at every flow step",
}

#: built-in adapters, tried in this order after run-time registrations and entry points
ADAPTERS = Registry("adapter", "vlaccel.adapters", {
    "reference": "vlaccel.adapters.reference:ReferenceVLAAdapter",
    "lerobot_pi": "vlaccel.adapters.lerobot_pi:LeRobotPI0Adapter",
    "lerobot_smolvla": "vlaccel.adapters.lerobot_smolvla:SmolVLAAdapter",
    "pi0": "vlaccel.adapters.pi0:PI0Adapter",
    "hf_vlm": "vlaccel.adapters.hf_vlm:HFVLMAdapter",
    "hf_decoder": "vlaccel.adapters.hf_decoder:HFDecoderAdapter",
})


class UnsupportedModelError(VlaccelError, TypeError):
    """No adapter serves this model: the message lists the supported models and how to add an adapter."""


class ModelAdapter:
    """Base class. Override what the model supports; unsupported parts raise a clear error."""

    #: human-readable names of the model classes this adapter serves (shown in errors)
    model_names: tuple[str, ...] = ()
    #: what models of this family have (keys of CAPABILITY_NAMES); see :meth:`capabilities`
    CAPABILITIES: frozenset[str] = frozenset()

    def capabilities(self, model: Any) -> frozenset[str]:  # noqa: ARG002 - a subclass may look at the model
        """The parts of ``model`` techniques can act on; a technique ``requires`` some of them."""
        return self.CAPABILITIES

    @classmethod
    def matches(cls, model: Any) -> bool:
        raise NotImplementedError

    # --- language model -------------------------------------------------------------------------
    def decoder_owner(self, model: Any) -> nn.Module:
        """The module holding ``.layers`` (a ``ModuleList`` of decoder layers) - e.g. a ``LlamaModel``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose decoder layers")

    def decoder_layers(self, model: Any) -> nn.ModuleList:
        return self.decoder_owner(model).layers

    def lm_config(self, model: Any) -> Any:
        """The decoder's transformers config (``num_hidden_layers``, ``layer_types`` ... live here)."""
        return self.decoder_owner(model).config

    def language_model(self, model: Any) -> nn.Module:
        """The module whose forward runs the decoder stack (used for calibration forwards)."""
        return self.decoder_owner(model)

    def token_layout(self, model: Any) -> Any:
        """Spans of the block currently being processed (``TokenLayout``), or ``None`` if unknown."""
        raise NotImplementedError(f"{type(self).__name__} does not know visual/instruction token spans")

    def track_layout(self, model: Any) -> Any:
        """Start keeping :meth:`token_layout` up to date; returns a handle with ``remove()``.

        Models that set their layout themselves (the reference VLA) need nothing: the default is a no-op.
        """
        return _NoHandle()

    def coupled_decoders(self, model: Any) -> list[nn.Module]:
        """Other decoder stacks (modules holding ``.layers`` and ``.config``) whose layer i attends to the KV cache
        slot of :meth:`decoder_layers`' layer i, e.g. pi0's action expert reading the VLM's prefix KV. Layer
        pruning removes their layers in pairs with the decoder's; token pruning narrows what their layers read."""
        return []

    def layer_groups(self, model: Any) -> list[list[int]]:
        """Indices of :meth:`decoder_layers` that layer pruning keeps or removes only together (e.g. SmolVLA's aligned
        (self-attn, cross-attn) pairs). Default: every layer on its own."""
        return [[i] for i in range(len(self.decoder_layers(model)))]

    def hidden_state_taps(self, model: Any, owner: nn.Module) -> list[tuple[nn.Module, str]]:
        """Where layer-importance calibration reads the hidden states of the stack ``owner`` (holds ``.layers``):
        L + 1 ``(module, "input" | "output")`` pairs: the input of layer 0, then each layer's output. Default: the
        layers' own forwards; a model whose loop calls the layers' parts instead names those parts."""
        layers = owner.layers
        return [(layers[0], "input"), *[(layer, "output") for layer in layers]]

    def layers_changed(self, model: Any) -> None:
        """Called after layer pruning changed the layer lists (and after it restored them): a model that keeps its
        own layer counts outside the decoder configs updates them here. Default: nothing to do."""

    def token_prune_handler(self, model: Any) -> Any:
        """A handler (``validate``/``apply``, as a technique's, and ``DEFAULT_LAYER``, what ``layer=None`` resolves
        to) running token pruning on a model whose own layer loop bypasses decoder-layer hooks; None (default): the
        generic hook-based pruning."""
        return None

    def visual_tokens(self, model: Any) -> int:
        """Visual tokens of one image - the budget token pruning selects from (a model given several images per
        observation, one per camera, gets that budget per image, chosen jointly over all of them)."""
        raise NotImplementedError(f"{type(self).__name__}: this model has no visual tokens")

    def run_calibration_sample(self, model: Any, sample: dict[str, Any]) -> None:
        """Run one calibration sample (a dict of named fields) through the language model, for statistics
        collected by hooks (layer importance, MLP activations). Must leave the model's state unchanged."""
        raise NotImplementedError(f"{type(self).__name__} cannot run calibration samples")

    # Defaults below follow the transformers decoder-layer convention (Llama, Qwen2/3, Mistral, Gemma):
    # ``layer.self_attn`` (q_proj, k_proj, layer_idx, head_dim, optional q_norm) and ``layer.mlp``
    # (gate_proj, up_proj, down_proj, act_fn). Override for other layer shapes.
    def attention_module(self, model: Any, layer: nn.Module) -> nn.Module:
        """The self-attention module of one decoder layer (holds ``layer_idx``)."""
        return layer.self_attn

    def mlp_module(self, model: Any, layer: nn.Module) -> nn.Module:
        """The gated FFN of one decoder layer: ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""
        return layer.mlp

    def attention_queries(self, model: Any, layer: nn.Module, hidden_states: Any, position_embeddings: Any) -> Any:
        """Post-RoPE queries [B, H, T, d_h] the layer would compute from its input ``hidden_states`` [B, T, D]."""
        from vlaccel.adapters.layer_conventions import decoder_layer_queries

        return decoder_layer_queries(layer, hidden_states, position_embeddings)

    # --- action head ------------------------------------------------------------------------------
    def action_head_blocks(self, model: Any) -> nn.ModuleList:
        raise NotImplementedError(f"{type(self).__name__}: this model has no diffusion action head")

    def action_head_branches(self, model: Any) -> list[nn.Module]:
        """The residual-branch modules of the head's blocks that a feature cache reuses across sampler steps
        (EfficientVLA's ``h_attn`` and ``h_mlp``). Default: each block's ``attn_branch`` and ``mlp_branch``."""
        branches = []
        for i, block in enumerate(self.action_head_blocks(model)):
            missing = [n for n in ("attn_branch", "mlp_branch") if not isinstance(getattr(block, n, None), nn.Module)]
            if missing:
                raise NotImplementedError(f"action-head block {i} ({type(block).__name__}) has no {missing}: head "
                                          "caching needs pre-LN blocks exposing attn_branch / mlp_branch, or an "
                                          "adapter overriding action_head_branches")
            branches += [block.attn_branch, block.mlp_branch]
        return branches

    def track_denoise_step(self, model: Any) -> Any:
        """Start keeping :meth:`denoise_step` up to date; returns a handle with ``remove()``. Models whose sampler
        counts its own steps (the reference VLA) need nothing: the default is a no-op."""
        return _NoHandle()

    def denoise_step(self, model: Any) -> int:
        raise NotImplementedError(f"{type(self).__name__}: this model has no diffusion action head")

    def inference_steps(self, model: Any) -> int:
        raise NotImplementedError(f"{type(self).__name__}: this model has no diffusion action head")

    def max_inference_steps(self, model: Any) -> int | None:
        """The most sampler steps the head takes (its training timesteps); None when any count works (a
        flow-matching Euler sampler integrates continuous time)."""
        raise NotImplementedError(f"{type(self).__name__}: this model has no diffusion action head")

    def set_inference_steps(self, model: Any, steps: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}: this model has no diffusion action head")

    # --- episode / cache plumbing -------------------------------------------------------------
    def set_cache_factory(self, model: Any, factory: Callable[[], Any] | None) -> Callable[[], Any] | None:
        """Install ``factory`` as the model's KV-cache maker; return the previous one (for ``remove``).
        ``factory.cache_class`` is the type of cache it makes (a caller's own cache of that type is kept)."""
        raise NotImplementedError(f"{type(self).__name__}: pass the cache to generate()/forward yourself")

    def module_parts(self, model: Any) -> dict[str, list[nn.Module]]:
        """Named groups of modules, the parts ``PrecisionConfig`` casts and ``CompileConfig`` compiles: list the
        modules that are *called* (each gets an input-casting pre-hook, or its forward compiled); a group's
        parameters and buffers are what changes dtype."""
        return {"model": [model]}

    def compile_sites(self, model: Any) -> dict[str, list[tuple[Any, str]]]:
        """Named groups of ``(object, method name)`` that ``CompileConfig`` compiles (an instance attribute replaces
        each, removed with the technique). Default: the ``forward`` of every module of :meth:`module_parts`.
        Override where the model's work is one method calling many small modules (SmolVLA's own layer loop)."""
        return {part: [(m, "forward") for m in modules] for part, modules in self.module_parts(model).items()}

    def end_episode(self, model: Any, reason: str) -> None:
        """End a running history episode (``apply`` and ``remove`` call this: an episode's cache and a technique's
        per-episode state must come from one set of techniques). Models whose history is one forward or one
        ``generate()`` call have no episode between calls: nothing to do."""

    def register_reset_hook(self, model: Any, fn: Callable[[], None]) -> Any:
        """Run ``fn`` at every new episode; returns a handle with ``remove()``."""
        raise NotImplementedError(f"{type(self).__name__}: call handle.reset() at each new episode yourself")


class _NoHandle:
    def remove(self) -> None:
        pass


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: try ``cls`` (before the built-in adapters) for every model ``get_adapter`` sees."""
    ADAPTERS.register(f"{cls.__module__}:{cls.__qualname__}", cls)
    return cls


def supported_models() -> list[str]:
    return [name for _, cls in ADAPTERS.items() for name in cls.model_names]


def get_adapter(model: Any) -> ModelAdapter:
    """The adapter for ``model``; a clear error listing the supported models otherwise."""
    for _, cls in ADAPTERS.items():
        if cls.matches(model):
            return cls()
    raise UnsupportedModelError(
        f"vlaccel has no adapter for {type(model).__name__}. Supported: {', '.join(supported_models())}. "
        "To support another model, subclass vlaccel.adapters.ModelAdapter and decorate it with "
        "@vlaccel.adapters.register_adapter, or declare it as an entry point of the group 'vlaccel.adapters' "
        "(see docs/adapters.md)."
    )
