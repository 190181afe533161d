"""Save / load reference policies (safetensors + JSON config) and ``load_policy``."""

from __future__ import annotations

import hashlib
import json
import weakref
from importlib import resources
from pathlib import Path

import torch

from vlaccel import atomic
from vlaccel.errors import MissingInputError, UsageError
from vlaccel.models.config import ReferenceVLAConfig
from vlaccel.models.vla import ReferenceVLA
from vlaccel.techniques.layer_prune import CALIBRATION_FILE, load_calibration_observations, set_calibration_observations

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
    metadata = {"format": "pt", "fingerprint": _digest(state)}
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


def plain_state_dict(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``policy`` has without the techniques applied to it (detached, contiguous, on the CPU),
    without removing them: what ``vlaccel.handle_for(policy).remove()`` would leave.

    ``vlaccel.apply`` measures which entries each technique changed (:func:`vlaccel.api.applied_changes`). A
    technique that changed some gives the plain tensors back through its applied state's ``plain_tensors()``
    (``{id(current tensor): plain tensor}``: precision its float32 originals, quantization its float weights);
    one without that method (layer pruning: layers and channels are gone) is refused with ``UsageError``. The
    result is checked against the shapes and dtypes the entries had before the first change.
    """
    from vlaccel.api import applied_changes

    entries = applied_changes(policy)
    refused = [(cfg, changed) for cfg, state, changed in entries
               if getattr(type(cfg), "changes_state_dict", False) or (changed and not hasattr(state, "plain_tensors"))]
    if refused:
        names = ", ".join(type(cfg).__name__ for cfg, _ in refused)
        changed = sorted({name for _, c in refused for name in c})
        raise UsageError(f"{names} is applied and changed this policy's parameters ({_few(changed)}), so the file "
                         "would not match its config.json; save before applying, or remove it first (handle.remove()). "
                         "Techniques that keep or can give back the weights (head cache, token pruning, KV-Efficient, "
                         "precision, compile) may stay applied: the plain policy is saved, without them")
    state = dict(policy.state_dict(keep_vars=True))
    before: dict[str, tuple | None] = {}
    for _, applied_state, changed in reversed(entries):  # undo the latest first, as remove() does
        if changed:
            swap = applied_state.plain_tensors()
            state = {name: swap.get(id(t), t) for name, t in state.items()}
            before.update(changed)  # the earliest technique's "before" wins: it is the plain one
    wrong = [name for name, meta in before.items() if not _is_plain(state.get(name), meta)]
    if wrong:
        names = ", ".join(type(cfg).__name__ for cfg, _, changed in entries if set(changed) & set(wrong))
        raise UsageError(f"{names} could not give back the plain {_few(wrong)} (shape, dtype or tensor type differ "
                         "from before it was applied); save before applying, or remove it first (handle.remove())")
    return {name: t.detach().contiguous().cpu() for name, t in state.items()}


def _is_plain(tensor: torch.Tensor | None, meta: tuple | None) -> bool:
    """Whether ``tensor`` looks like the plain entry described by ``meta`` (``(shape, dtype)``; None = absent)."""
    if meta is None or tensor is None:
        return meta is None and tensor is None
    return type(tensor) in (torch.Tensor, torch.nn.Parameter) and (tuple(tensor.shape), tensor.dtype) == meta


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
    config = read_config(path / CONFIG)
    check_weights(path / WEIGHTS, config, path / CONFIG)
    policy = ReferenceVLA(config)
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as err:  # safetensors raises its own error type (truncated file, bad header)
        raise UsageError(f"{path / WEIGHTS} is not a readable safetensors file ({type(err).__name__}: {err}); "
                         "it may be truncated: save or copy it again") from err
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UsageError(f"{path / WEIGHTS} does not match its config: missing={missing[:5]} unexpected={unexpected[:5]}")
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
            have = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
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


def _suspects(config: ReferenceVLAConfig, want: tuple[int, ...], have: tuple[int, ...]) -> str:
    """``"; check lm_hidden"``: the config's integer fields equal to a size that differs from the weights'."""
    sizes = {d for d, h in zip(want, have) if d != h} | (set(want) if len(want) != len(have) else set())
    fields = [name for name, value in config.to_dict().items()
              if isinstance(value, int) and not isinstance(value, bool) and value in sizes and value > 1]
    return f"; check {', '.join(fields)}" if fields else ""


def load_policy(name_or_path: str | Path) -> ReferenceVLA:
    """``load_policy("reference")`` loads the bundled trained policy; ``load_policy(path)`` any saved one."""
    key = str(name_or_path)
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


_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def fingerprint(policy: torch.nn.Module, refresh: bool = False) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes: identifies the exact weights a gate was trained for.

    Hashed once per state of the weights: the result is kept (outside the model) with each tensor's storage
    address and in-place version counter, and recomputed when any of them changes (an optimizer step,
    ``load_state_dict``, a replaced or pruned parameter). Edits through ``tensor.data`` bypass the version
    counter: pass ``refresh=True`` after such an edit.
    """
    state = policy.state_dict(keep_vars=True)
    key = tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for name, t in sorted(state.items()))
    known = _FINGERPRINTS.get(policy)
    if known is not None and known[0] == key and not refresh:
        return known[1]
    digest = _digest(state)
    _FINGERPRINTS[policy] = (key, digest)
    return digest


def plain_fingerprint(policy: torch.nn.Module) -> str:
    """The :func:`fingerprint` of the plain policy (what ``remove()`` would leave): a gate trained for the policy is
    found while an engine switch that changed the weights (precision, int8) is applied. Raises ``UsageError`` when
    an applied technique cannot give the plain weights back (layer pruning)."""
    from vlaccel.api import applied_changes

    if not any(changed for _, _, changed in applied_changes(policy)):
        return fingerprint(policy)
    return _digest(plain_state_dict(policy))


def _digest(state: dict[str, torch.Tensor]) -> str:
    """The :func:`fingerprint` of a state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
