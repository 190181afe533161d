"""What decides a condition's episodes, as a digest: a rerun into the same results file must match it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vlaccel.sim.policies import PolicySpec, load_policy
from vlaccel.sim.protocol import BASELINE


def policy_fingerprint(spec: PolicySpec) -> str | None:
    """Fingerprint of the policy's weights (``vlaccel.fingerprint``) and of its config, whose decoding settings
    (denoising steps, guidance scale) change the episodes as much as the weights do; None for a policy that is no
    torch module."""
    return loaded_policy_fingerprint(load_policy(spec))


def loaded_policy_fingerprint(policy: Any) -> str | None:
    """:func:`policy_fingerprint` of an already loaded policy."""
    if not hasattr(policy, "state_dict"):
        return None
    from vlaccel.weights import fingerprint

    config = getattr(policy, "config", None)
    if not hasattr(config, "to_dict"):
        return fingerprint(policy)
    settings = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{fingerprint(policy)}-{settings}"


def _file_digest(path: str) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


def condition_identity(policy_fp: str | None, preset: str, policy: Any = None) -> str:
    """Digest of everything that decides a condition's episodes: the policy's weights and, for a preset, its
    configs and the files they load on ``policy`` (``TechniqueConfig.weight_files``, e.g. the KV-Efficient gate,
    which may be stored with the policy)."""
    parts: dict[str, Any] = {"policy": policy_fp}
    if preset != BASELINE:
        import vlaccel

        configs = vlaccel.presets.get(preset)
        parts["configs"] = [c.to_dict() for c in configs]
        parts["files"] = [_file_digest(f) for c in configs for f in c.weight_files(policy)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
