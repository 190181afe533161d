"""``ReferenceVLA``: a CogACT-shaped Vision-Language-Action policy built from transformers configs.

Pipeline (CogACT, arXiv 2411.19650; CogACT puts the image first, we put the instruction first so
it can be a protected KV-cache prefix in history mode):

    image(s) --SiglipVisionModel--> patch features --projector--> visual tokens
    LM input  [<s> instruction][visual tokens][proprio token][<cog>]  --LlamaModel-->  h
    cognition feature z = h at <cog> (last layer, after the final norm, as CogACT's hidden_states[-1]),
        plus, with ``visual_readout_heads > 0``, a readout (attention or flatten pool) of the frame's visual tokens
        (h there, or the projector's tokens with ``visual_readout_source="lm_input"``)
    z --DiT action head (DDIM 10 steps, CFG 1.5)--> action chunk [16, action_dim]

History mode: ``reset(instruction)`` prefills the instruction into a transformers ``Cache``; each
``step(image)`` appends that observation's ``[visual][proprio][<cog>]`` tokens, so step t attends to the
instruction and every earlier frame. ``predict_action`` is exactly ``reset`` + one ``step`` on a fresh cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vlaccel.errors import PositionLimitError
from vlaccel.models.config import ReferenceVLAConfig
from vlaccel.models.dit import DiffusionActionHead
from vlaccel.models.tokenizer import BOS, COG, load_tokenizer
from vlaccel.models.visual_readout import build_visual_readout
from vlaccel.token_layout import TokenLayout
from vlaccel.transformers_compat import cache_kwargs, output_cache


class ReferenceVLA(nn.Module):
    """The bundled reference policy. See the module docstring for the data flow."""

    def __init__(self, config: ReferenceVLAConfig):
        super().__init__()
        self.config = config
        self.tokenizer = load_tokenizer()
        if len(self.tokenizer) != config.vocab_size:
            raise ValueError(f"config.vocab_size={config.vocab_size} but the shipped tokenizer has {len(self.tokenizer)}")
        self.bos_id = self.tokenizer.convert_tokens_to_ids(BOS)
        self.cog_id = self.tokenizer.convert_tokens_to_ids(COG)
        # The initial weights come from their own stream seeded with init_seed (the same weights as a global
        # torch.manual_seed(init_seed) gave); the caller's RNG is left exactly as it was.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(config.init_seed)
            self._build_modules(config)
            self._init_rng_state = torch.get_rng_state()  # where that stream stopped (see init_rng)
        self.noise_seed: int | None = config.sampling_seed  # fixed initial noise per call -> deterministic policy; None = global RNG
        # Transformations set these through the adapter, never by editing this class.
        self.cache_factory: Callable[[], Any] | None = None
        self.current_layout: TokenLayout | None = None
        self._reset_hooks: OrderedDict[int, Callable[[], None]] = OrderedDict()  # weak-referenceable for RemovableHandle
        # History-mode state.
        self.cache: Any = None
        self.instruction: str | None = None
        self.episode_active = False  # a reset(...) episode is running (predict_action's own never counts)
        self._ended_because: str | None = None
        self.last_cognition: torch.Tensor | None = None
        self.eval()

    def _build_modules(self, config: ReferenceVLAConfig) -> None:
        """The policy's modules, in the order that fixes which random draws each one's initial weights get."""
        from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig

        from vlaccel.transformers_compat import siglip_vision_encoder

        self.vision = siglip_vision_encoder(SiglipVisionConfig(
            hidden_size=config.vision_hidden, intermediate_size=config.vision_intermediate,
            num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
            image_size=config.image_size, patch_size=config.patch_size, num_channels=3, vision_use_head=False,
        ))
        self.projector = nn.Sequential(
            nn.Linear(config.vision_hidden, config.lm_hidden), nn.GELU(), nn.Linear(config.lm_hidden, config.lm_hidden)
        )
        self.proprio_proj = nn.Linear(config.proprio_dim, config.lm_hidden) if config.proprio_dim else None
        self.language_model = LlamaModel(LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.lm_hidden, intermediate_size=config.lm_intermediate,
            num_hidden_layers=config.lm_layers, num_attention_heads=config.lm_heads,
            num_key_value_heads=config.lm_kv_heads, max_position_embeddings=config.max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            bos_token_id=self.bos_id, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=None,
        ))
        self.action_head = DiffusionActionHead(
            config.action_dim, config.action_chunk, config.lm_hidden, config.dit_width, config.dit_depth,
            config.dit_heads, config.dit_mlp_ratio, config.train_timesteps, config.inference_steps, config.cfg_scale,
            config.init_noise_scale, config.timestep_spacing,
        )
        self.visual_readout = build_visual_readout(config)

    def add_visual_readout(self, heads: int, source: str = "lm_output", pool: str = "attention") -> None:
        """Give a policy without one a visual readout (``heads``, ``source``, ``pool``: see ``ReferenceVLAConfig``);
        its zero output projection leaves every output unchanged until it is trained (``vlaccel train-reference
        --init POLICY --experiment.visual-readout-heads N``, or a recipe's ``[experiment]`` table)."""
        if self.visual_readout is not None:
            raise ValueError(f"this policy already has a visual readout ({self.config.visual_readout_heads} heads)")
        config = dataclasses.replace(self.config, visual_readout_heads=heads, visual_readout_source=source,
                                     visual_readout_pool=pool)  # validates all three
        with self.init_rng():
            readout = build_visual_readout(config)
        self.visual_readout = readout.to(self.device, self.dtype)
        self.config = config

    @contextlib.contextmanager
    def init_rng(self) -> Iterator[None]:
        """Inside, the global torch RNG continues this policy's weight-initialisation stream where it stopped
        (after building the policy, or the last module built under ``init_rng``); outside, the caller's RNG is
        untouched. Modules built inside get the weights they got when the policy's construction still reseeded the
        global RNG and they were built right after it (``add_visual_readout``; ``train-reference``'s probes)."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._init_rng_state)
            yield
            self._init_rng_state = torch.get_rng_state()

    # ------------------------------------------------------------------ hooks for transformations
    def register_reset_hook(self, fn: Callable[[], None]) -> RemovableHandle:
        """``fn()`` runs at every ``reset`` (new episode), before the instruction is prefilled."""
        handle = RemovableHandle(self._reset_hooks)
        self._reset_hooks[handle.id] = fn
        return handle

    def make_cache(self) -> Any:
        """A fresh KV cache for a new episode: ``cache_factory()`` if a technique set one, else ``DynamicCache``."""
        from transformers import DynamicCache

        return self.cache_factory() if self.cache_factory is not None else DynamicCache(config=self.language_model.config)

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector[0].weight.dtype

    # ------------------------------------------------------------------ input checking / preprocessing
    def _check_instruction(self, instruction: Any) -> str:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
        return instruction

    def pixels_from_images(self, image: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 HxWx3 image (or a list of them, one per camera) -> normalised [1, cams, 3, H, W]."""
        cfg = self.config
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if len(images) != cfg.num_cameras:
            raise ValueError(f"expected {cfg.num_cameras} camera image(s), got {len(images)}")
        want = (cfg.image_size, cfg.image_size, 3)
        for i, img in enumerate(images):
            if not isinstance(img, np.ndarray):
                raise ValueError(f"camera {i}: expected a uint8 numpy array of shape {want} (H, W, RGB), got "
                                 f"{type(img).__name__}")
            if img.shape != want:
                raise ValueError(f"camera {i}: expected shape {want} (H, W, RGB), got {img.shape}; resize the image "
                                 f"to {cfg.image_size}x{cfg.image_size}")
            if img.dtype != np.uint8:
                raise ValueError(f"camera {i}: expected dtype uint8 (0-255), got {img.dtype}; convert it, e.g. "
                                 "(image * 255).round().astype(np.uint8) for floats in [0, 1]")
        arr = torch.from_numpy(np.stack(images)).to(self.device)  # [cams, H, W, 3] uint8
        return self.normalize_pixels(arr.unsqueeze(0))

    def normalize_pixels(self, images_u8: torch.Tensor) -> torch.Tensor:
        """[..., H, W, 3] uint8 -> [..., 3, H, W] in [-1, 1] (SigLIP's mean/std of 0.5)."""
        x = images_u8.to(self.dtype).movedim(-1, -3) / 255.0
        return (x - 0.5) / 0.5

    def proprio_tensor(self, proprio: Any, batch: int = 1) -> torch.Tensor | None:
        p = self.config.proprio_dim
        if not p:
            if proprio is not None:
                raise ValueError("this policy has proprio_dim=0; do not pass proprio")
            return None
        if proprio is None:
            return torch.zeros(batch, p, device=self.device, dtype=self.dtype)
        try:
            values = np.asarray(proprio, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"proprio must be {p} numbers, got {type(proprio).__name__}: {err}") from None
        want = (p,) if batch == 1 else (batch, p)
        if values.shape != want and not (batch == 1 and values.shape == (1, p)):
            raise ValueError(f"proprio must have shape {want} ({p} values per observation), got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError(f"proprio has non-finite values (NaN or inf): {values.tolist()}; a NaN state gives NaN "
                             "actions and, in an episode, poisons the KV cache for every later step")
        return torch.as_tensor(values, device=self.device).to(self.dtype).reshape(batch, p)

    def instruction_ids(self, instruction: str) -> torch.Tensor:
        """[1, L]: <s> + BPE ids of the instruction. Refused if it leaves no room for an observation within
        ``config.max_positions``."""
        ids = [self.bos_id] + self.tokenizer(self._check_instruction(instruction)).input_ids
        room = self.config.max_positions - self.config.tokens_per_frame
        if len(ids) > room:
            raise ValueError(f"the instruction is {len(ids)} tokens; this policy takes at most {room} (max_positions "
                             f"{self.config.max_positions} less one observation of {self.config.tokens_per_frame} "
                             "tokens). Shorten it.")
        return torch.tensor([ids], device=self.device)

    # ------------------------------------------------------------------ embeddings
    def embed_observation(self, pixels: torch.Tensor, proprio: torch.Tensor | None) -> torch.Tensor:
        """pixels [B, cams, 3, H, W], proprio [B, P] -> observation tokens [B, n_obs, D]."""
        b, cams = pixels.shape[:2]
        feats = self.vision(pixel_values=pixels.flatten(0, 1)).last_hidden_state  # [B*cams, N, Dv]
        visual = self.projector(feats).reshape(b, cams * feats.shape[1], -1)  # [B, cams*N, D]
        parts = [visual]
        if self.proprio_proj is not None:
            parts.append(self.proprio_proj(proprio).unsqueeze(1))  # [B, 1, D]
        cog = self.language_model.embed_tokens(torch.full((b, 1), self.cog_id, device=pixels.device))
        parts.append(cog)  # [B, 1, D]
        return torch.cat(parts, dim=1)

    def observation_layout(self, offset: int = 0) -> TokenLayout:
        n_vis, n = self.config.visual_tokens, self.config.tokens_per_frame
        return TokenLayout("observation", visual=slice(offset, offset + n_vis), cognition=offset + n - 1,
                           length=offset + n)

    # ------------------------------------------------------------------ language model
    def run_language_model(self, embeds: torch.Tensor, layout: TokenLayout, cache: Any,
                           attention_mask: torch.Tensor | None = None,
                           position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One LM forward over ``embeds`` [B, T, D] appended to ``cache``; returns last hidden [B, T', D].

        T' may be smaller than T when a transformation drops tokens inside the LM; the cognition
        token is always last. Positions are logical: ``cache.get_seq_length()`` counts every token seen.
        """
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past, past + embeds.shape[1], device=embeds.device).unsqueeze(0)
        self.current_layout = layout
        try:
            out = self.language_model(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=cache is not None, **cache_kwargs(self.language_model, cache),
            )
        finally:
            self.current_layout = None
        if cache is not None and output_cache(out) is not cache:  # transformers ran on a cache of its own
            raise RuntimeError(f"the language model ran on a {type(output_cache(out)).__name__} instead of the "
                               f"episode's {type(cache).__name__}: vlaccel.transformers_compat does not know how "
                               "this transformers release takes the KV cache; install a release in vlaccel's range")
        return out.last_hidden_state

    # ------------------------------------------------------------------ history mode
    @torch.no_grad()
    def reset(self, instruction: str, cache: Any = None) -> None:
        """Start an episode: new KV cache (``cache`` if given), run reset hooks, prefill the instruction."""
        self._begin(instruction, self.instruction_ids(instruction), cache)
        self.episode_active, self._ended_because = True, None

    def end_episode(self, reason: str | None = None) -> None:
        """End the running episode and free its KV cache (``step`` then needs a new ``reset``). ``reason`` is
        what a later ``step`` says (vlaccel ends the episode when techniques are applied or removed)."""
        self.cache, self.instruction, self.episode_active = None, None, False
        self._ended_because = reason

    @torch.no_grad()
    def step(self, image: np.ndarray | Sequence[np.ndarray], proprio: Any = None) -> np.ndarray:
        """Append one observation to the episode's KV cache and return its action chunk [chunk, action_dim]."""
        if self.cache is None or not self.episode_active:
            why = f" ({self._ended_because})" if self._ended_because else ""
            raise RuntimeError(f"call policy.reset(instruction) before policy.step(image){why}")
        pixels, state = self.pixels_from_images(image), self.proprio_tensor(proprio)
        self._check_positions()
        try:
            return self._observe(pixels, state)
        except BaseException as err:
            self._end_after_failure(err)
            raise

    def _end_after_failure(self, err: BaseException) -> None:
        """A ``step`` that failed part-way (an exception in a module, KeyboardInterrupt, out of memory) may have
        stored its frame in the KV cache and advanced a technique's per-episode state: the episode ends, and the
        next ``step`` names the failure (``reset`` starts a clean one)."""
        detail = str(err).splitlines()[0] if str(err) else ""
        self.end_episode(f"the episode ended because an earlier step failed with {type(err).__name__}"
                         f"{': ' + detail if detail else ''}")

    @torch.no_grad()
    def predict_action(self, image: np.ndarray | Sequence[np.ndarray], instruction: str,
                       proprio: Any = None) -> np.ndarray:
        """One observation, no history, on a cache of its own that is freed afterwards.

        Refused while a history episode is running (``reset`` ... ``step``): a technique's per-episode state
        belongs to that episode. Every input is checked before any state changes.
        ``proprio``: the robot state (``config.proprio_dim`` values). ``None`` feeds an all-zero state, on
        purpose and documented: it is what the quick start and the speed benchmarks pass; a policy controlling a
        robot should pass the state it was trained with (the simulator's, ``vlaccel.sim``).
        """
        if self.episode_active:
            raise RuntimeError("predict_action runs a single observation with no history, and a history episode "
                               f"({self.instruction!r}) is running on this policy; continue it with step(image), or "
                               "call policy.end_episode() first (or use a copy.deepcopy of the policy)")
        # every input checked (and converted) before any state changes
        ids = self.instruction_ids(instruction)
        pixels, state = self.pixels_from_images(image), self.proprio_tensor(proprio)
        try:
            self._begin(instruction, ids, None)
            return self._observe(pixels, state)
        finally:
            self.end_episode()

    def _begin(self, instruction: str, ids: torch.Tensor, cache: Any) -> None:
        """A new episode on ``cache`` (a fresh one if None): reset hooks, then the instruction ``ids`` [1, L]."""
        for fn in list(self._reset_hooks.values()):
            fn()
        self.cache = cache if cache is not None else self.make_cache()
        self.instruction = instruction
        embeds = self.language_model.embed_tokens(ids)  # [1, L, D]
        layout = TokenLayout("prefix", instruction=slice(0, ids.shape[1]), length=ids.shape[1])
        self.run_language_model(embeds, layout, self.cache)

    def _observe(self, pixels: torch.Tensor, state: torch.Tensor | None) -> np.ndarray:
        """One observation (checked pixels [1, cams, 3, H, W], proprio [1, P]) appended to the episode's cache."""
        self._check_positions()
        embeds = self.embed_observation(pixels, state)  # [1, n_obs, D]
        hidden = self.run_language_model(embeds, self.observation_layout(), self.cache)
        z = self.observation_feature(hidden, embeds)  # [1, D] cognition feature
        self.last_cognition = z.float().clone()
        return self.sample_actions(z)[0].float().cpu().numpy()

    def _check_positions(self) -> None:
        """Refuse an observation whose positions would pass ``config.max_positions``, before anything changes.

        Positions are logical (every token the episode has seen counts, see ``run_language_model``, also under a
        KV-Efficient cache that stores only a bounded part of them), so an episode of ``max_positions /
        tokens_per_frame`` observations (496 for the reference policy) reaches the model's limit; past it the
        policy would run at positions it was neither built nor trained for."""
        end = self.cache.get_seq_length() + self.config.tokens_per_frame
        if end > self.config.max_positions:
            raise PositionLimitError(
                f"this episode's next observation would end at position {end}, past the policy's max_positions="
                f"{self.config.max_positions} ({self.config.max_positions // self.config.tokens_per_frame} "
                f"observations of {self.config.tokens_per_frame} tokens, instruction included): call "
                "policy.reset(instruction) to start a new episode at position 0")

    def observation_feature(self, block: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The action head's condition from one observation block.

        block: [B, T', D], the LM outputs of the block's tokens ``[visual][proprio][<cog>]`` in order (T' <
        tokens_per_frame when a technique dropped visual tokens inside the LM); tokens: [B, n, D], the block's LM
        input (``embed_observation``) -> z [B, D]: the output at ``<cog>``, plus, when the policy has a visual
        readout, its pool of the visual outputs that were kept (``lm_output``) or of all the frame's projector
        tokens (``lm_input``; token pruning acts inside the LM and does not change what this reads).
        """
        z = block[:, -1]  # [B, D]
        if self.visual_readout is None:
            return z
        if self.config.visual_readout_source == "lm_input":
            return z + self.visual_readout(tokens[:, : self.config.visual_tokens])  # [B, D]
        after_visual = self.config.tokens_per_frame - self.config.visual_tokens  # proprio + <cog>
        return z + self.visual_readout(block[:, : block.shape[1] - after_visual])  # [B, D]

    def sample_actions(self, z: torch.Tensor) -> torch.Tensor:
        """Cognition features [B, D] -> actions [B, chunk, A] (DDIM + CFG), reproducible via ``noise_seed``."""
        gen = None
        if self.noise_seed is not None:
            gen = torch.Generator(device=z.device).manual_seed(self.noise_seed)
        return self.action_head.sample(z, generator=gen)

    # ------------------------------------------------------------------ whole-history forward (training)
    def history_cognition(self, instr_ids: torch.Tensor, instr_mask: torch.Tensor, pixels: torch.Tensor,
                          proprio: torch.Tensor | None, frame_index: torch.Tensor | None = None) -> torch.Tensor:
        """Cognition features of every frame of a history, from one LM forward over the whole sequence.

        instr_ids/instr_mask: [B, L] left-padded (pads masked out, positions start at the first real token);
        pixels: [B, F, cams, 3, H, W]; proprio: [B, F, P] -> z: [B, F, D]. This is the computation history
        mode performs incrementally; with B = 1 the two agree (tested). ``frame_index`` [B, F] (training only):
        the episode frame each frame is; its tokens get the positions they have in the whole episode, so a
        subset of an episode's frames (a window, possibly behind the first frames) sees true positions.
        """
        b, f = pixels.shape[:2]
        n = self.config.tokens_per_frame
        if proprio is None and self.config.proprio_dim:
            proprio = pixels.new_zeros(b, f, self.config.proprio_dim)
        obs = self.embed_observation(pixels.flatten(0, 1), None if proprio is None else proprio.flatten(0, 1))
        obs = obs.reshape(b, f * n, -1)  # [B, F*n, D]
        embeds = torch.cat([self.language_model.embed_tokens(instr_ids), obs], dim=1)  # [B, L+F*n, D]
        mask = torch.cat([instr_mask, instr_mask.new_ones(b, f * n)], dim=1)  # [B, L+F*n]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        if frame_index is not None:
            offset = frame_index.to(mask.device)[:, :, None] * n + torch.arange(n, device=mask.device)  # [B, F, n]
            position_ids = position_ids.clone()
            position_ids[:, instr_ids.shape[1]:] = instr_mask.sum(-1, keepdim=True) + offset.flatten(1)
        layout = TokenLayout("history", instruction=slice(0, instr_ids.shape[1]), length=embeds.shape[1])
        hidden = self.run_language_model(embeds, layout, cache=None, attention_mask=mask, position_ids=position_ids)
        blocks = hidden[:, instr_ids.shape[1]:].reshape(b * f, n, -1)  # [B*F, n, D], one per frame
        return self.observation_feature(blocks, obs.reshape(b * f, n, -1)).reshape(b, f, -1)  # [B, F, D]

    def batch_instruction_ids(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded [B, L] ids and mask for a batch of instructions (each starts with <s>)."""
        seqs = [[self.bos_id] + self.tokenizer(self._check_instruction(s)).input_ids for s in instructions]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask
