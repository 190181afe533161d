"""The reference CogACT-shaped VLA (vision: SigLIP, LM: Llama, action head: DiT + DDIM + CFG)."""

from vlaccel.models.config import ReferenceVLAConfig
from vlaccel.models.io import fingerprint, load_policy, load_reference, save_policy
from vlaccel.models.vla import ReferenceVLA, TokenLayout

__all__ = ["ReferenceVLAConfig", "ReferenceVLA", "TokenLayout", "load_policy", "load_reference", "save_policy",
           "fingerprint"]
