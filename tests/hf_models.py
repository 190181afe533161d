"""Tiny random transformers VLMs / LMs for the tests: :mod:`vlaccel.testing.tiny_transformers`."""

from vlaccel.testing.tiny_transformers import (  # noqa: F401
    FAMILIES,
    IMAGE_TOKEN,
    VISUAL_TOKENS,
    VOCAB,
    build,
    family_of,
    generate_logits,
    hf_inputs,
    last_logits,
)
