"""Save / load reference policies (safetensors + JSON config) and ``load_policy``; the weights' fingerprint is
:mod:`vlaccel.weights`."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from vlaccel import atomic
from vlaccel.calibration import CALIBRATION_FILE, load_calibration_observations, set_calibration_observations
from vlaccel.errors import MissingInputError, UsageError, WrongTypeError
from vlaccel.models.config import ReferenceVLAConfig
from vlaccel.models.vla import ReferenceVLA
from vlaccel.weights import plain_state_dict, state_dict_fingerprint

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "model_card.json"
BUNDLED = {"reference": "reference"}  # name -> folder under vlaccel/assets


def bundled_dir(name: str) -> Path:
    return Path(str(resources.files("vlaccel") / "assets" / BUNDLED[name]))


def save_policy(policy: ReferenceVLA, path: str | Path, card: dict | None = None,
                storage_dtype: torch.dtype | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``model_card.json``) into the folder ``path``: the plain
    policy's weights, exactly those ``handle.remove()`` would leave (:func:`plain_state_dict`; applied techniques
    are not saved, and one whose changes cannot be undone on paper is refused before anything is written).

    The files are written into a temp folder next to ``path`` and moved into place when complete
    (:func:`vlaccel.atomic.folder`), so a failed save leaves no half-written policy. ``storage_dtype=torch.bfloat16``
    halves the file (the bundled checkpoint uses it); loading casts the weights back to the model's float32
    parameters, so a reloaded policy computes in float32.
    """
    from safetensors.torch import save_file

    state = plain_state_dict(policy)
    metadata = {"format": "pt", "fingerprint": state_dict_fingerprint(state)}
    if storage_dtype is not None:
        state = {k: v.to(storage_dtype) if v.is_floating_point() else v for k, v in state.items()}
    config_text = policy.config.to_json() + "\n"
    card_text = json.dumps(card, indent=2) + "\n" if card is not None else None
    path = Path(path)
    with atomic.folder(path) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata=metadata)
        (tmp / CONFIG).write_text(config_text)
        if card_text is not None:
            (tmp / CARD).write_text(card_text)
    return path


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def load_reference(path: str | Path) -> ReferenceVLA:
    """A saved policy from its folder. Everything is checked before the model is built: ``config.json`` (a JSON
    object, every field of its type and in its range) and the tensor names and shapes it implies against the
    ``model.safetensors`` header (read without loading the data); each refusal is one ``UsageError`` line."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        raise MissingInputError(f"{path} is a file; pass the policy's folder (the one holding {WEIGHTS} and {CONFIG})")
    for name in (WEIGHTS, CONFIG):
        if not (path / name).exists():
            raise MissingInputError(f"{path} is not a saved policy: {name} is missing (save one with vlaccel.save_policy)")
        if not (path / name).is_file():
            raise UsageError(f"{path / name} is a folder, not a file; a saved policy's {name} is a file written by "
                             "vlaccel.save_policy: save the policy again")
    config = read_config(path / CONFIG)
    check_weights(path / WEIGHTS, config, path / CONFIG)
    policy = ReferenceVLA(config)
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as err:  # safetensors raises its own error type (truncated file, bad header)
        raise UsageError(f"{path / WEIGHTS} is not a readable safetensors file ({type(err).__name__}: {err}); "
                         "it may be truncated: save or copy it again") from err
    bad = next((name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())),
               None)
    if bad is not None:
        raise UsageError(f"{path / WEIGHTS}: {bad} has non-finite values (NaN or inf), so every action would be NaN; "
                         "the training that wrote it diverged or the file is damaged: use an earlier checkpoint, or "
                         "save or copy the policy again")
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UsageError(f"{path / WEIGHTS} does not match its config: missing={missing[:5]} unexpected={unexpected[:5]}")
    if (path / CALIBRATION_FILE).is_dir():
        raise UsageError(f"{path / CALIBRATION_FILE} is a folder; a policy's {CALIBRATION_FILE} is one .npz of "
                         "calibration observations (layer pruning reads it): replace it with that file, or remove it")
    if (path / CALIBRATION_FILE).exists():  # the folder's layer-pruning calibration set
        set_calibration_observations(policy, load_calibration_observations(path / CALIBRATION_FILE))
    policy.source_dir = path  # where companion files live (a KV-Efficient gate trained for it: kv_gate/)
    return policy.eval()


_MAX_CONFIG_BYTES = 1 << 20  # a saved config.json is about a kilobyte


def read_config(file: Path) -> ReferenceVLAConfig:
    """``config.json`` -> :class:`ReferenceVLAConfig`, refusing (one line naming the file) a file that is too big,
    not UTF-8, not JSON, not a JSON object, or has a missing, unknown, mistyped or out-of-range field."""
    size = file.stat().st_size
    if size > _MAX_CONFIG_BYTES:
        raise UsageError(f"{file} is {size} bytes; a policy config.json is about a kilobyte: it is not one "
                         "(save the policy again with vlaccel.save_policy)")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{file} is not UTF-8 text (byte {err.start}); it must be the JSON vlaccel.save_policy "
                         "writes: save the policy again") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise UsageError(f"{file} is not valid JSON: {str(err).splitlines()[0]}") from None
    return ReferenceVLAConfig.from_dict(data, source=str(file))


def read_card(folder: str | Path) -> dict:
    """A policy folder's ``model_card.json`` as a dict (``{}`` when there is none); a card that is not a JSON object
    is refused with one ``UsageError`` line naming the file (the policy itself loads without its card)."""
    file = Path(folder) / CARD
    if not file.exists():
        return {}
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise UsageError(f"{file} is not a readable JSON model card ({type(err).__name__}: {first}); fix it or "
                         "delete it (it only describes the policy: vlaccel info reads its version)") from None
    if not isinstance(data, dict):
        raise UsageError(f"{file} must be a JSON object (the model card vlaccel train-reference writes), got "
                         f"{type(data).__name__}; fix it or delete it")
    return data


def implied_shapes(config: ReferenceVLAConfig, source: str = "the policy config") -> dict[str, tuple[int, ...]]:
    """The state-dict names and shapes a policy built from ``config`` has, from a shape-only model on the
    ``meta`` device (no memory allocated, no weights initialized)."""
    try:
        with torch.device("meta"):
            model = ReferenceVLA(config)
    except (ValueError, RuntimeError) as err:  # sizes the modules refuse (e.g. vocab_size vs the tokenizer)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{source}: these sizes do not build a ReferenceVLA ({first}); fix the field it names") from None
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_weights(file: Path, config: ReferenceVLAConfig, config_file: Path | str = CONFIG) -> None:
    """Refuse a ``model.safetensors`` whose header (read without the data) does not hold exactly the tensors,
    with the shapes, that ``config`` implies; the error names the tensor and the config fields of that size."""
    from safetensors import safe_open

    want = implied_shapes(config, str(config_file))
    try:
        with safe_open(str(file), "pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            have = {name: tuple(s.get_shape()) for name, s in slices.items()}
            dtypes = {name: s.get_dtype() for name, s in slices.items()}
    except Exception as err:  # safetensors raises its own error type (truncated file, bad header)
        raise UsageError(f"{file} is not a readable safetensors file ({type(err).__name__}: {err}); "
                         "it may be truncated: save or copy it again") from err
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise UsageError(f"{file} does not hold the tensors {config_file} implies (missing: {_few(missing) or 'none'}; "
                         f"unexpected: {_few(unexpected) or 'none'}); the two come from different policies: "
                         "save the policy again, or fix the config fields that add or remove parts")
    wrong = [name for name in want if want[name] != have[name]]
    if wrong:
        name = wrong[0]
        raise UsageError(f"{config_file} does not match {file}: {name} is {list(have[name])} in the weights but the "
                         f"config implies {list(want[name])} ({len(wrong)} tensor(s) differ){_suspects(config, want[name], have[name])}; "
                         "set those fields to the sizes the weights were saved with, or save the policy again")
    # every parameter is floating point; a file of integers or booleans would load (cast) without a word
    not_float = [name for name in want if not dtypes[name].startswith(("F", "BF"))]
    if not_float:
        name = not_float[0]
        raise UsageError(f"{file}: {name} is stored as {dtypes[name]}, not a floating-point type ({len(not_float)} "
                         "tensor(s)); a policy's weights are F32, F16 or BF16 (as vlaccel.save_policy writes them): "
                         "save the policy again")


def _suspects(config: ReferenceVLAConfig, want: tuple[int, ...], have: tuple[int, ...]) -> str:
    """``"; check lm_hidden"``: the config's integer fields equal to a size that differs from the weights'."""
    sizes = {d for d, h in zip(want, have) if d != h} | (set(want) if len(want) != len(have) else set())
    fields = [name for name, value in config.to_dict().items()
              if isinstance(value, int) and not isinstance(value, bool) and value in sizes and value > 1]
    return f"; check {', '.join(fields)}" if fields else ""


def load_policy(name_or_path: str | Path) -> ReferenceVLA:
    """``load_policy("reference")`` loads the bundled trained policy; ``load_policy(path)`` any saved one."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise WrongTypeError(f"load_policy takes a bundled name ({', '.join(sorted(BUNDLED))}) or a folder path, got "
                             f"{type(name_or_path).__name__}" + ("; it is already loaded"
                                                                 if isinstance(name_or_path, torch.nn.Module) else ""))
    key = os.fspath(name_or_path)
    if isinstance(key, bytes):
        key = os.fsdecode(key)
    if not key.strip():
        raise MissingInputError(f"no policy given: pass a bundled name ({', '.join(sorted(BUNDLED))}) or a folder")
    if key in BUNDLED:
        folder = bundled_dir(key)
        if not (folder / WEIGHTS).exists():
            raise MissingInputError(
                f"the bundled {key!r} checkpoint is not in this install ({folder}); train one with "
                "`vlaccel collect && vlaccel train-reference` or pass the path of a saved policy"
            )
        return load_reference(folder)
    path = Path(key)
    if not path.exists():
        raise MissingInputError(
            f"unknown policy {key!r}: not a bundled name ({', '.join(sorted(BUNDLED))}) and no such folder"
        )
    return load_reference(path)


