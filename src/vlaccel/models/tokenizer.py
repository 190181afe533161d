"""The reference policy's tokenizer: a small byte-level BPE shipped in the repo (no hub access).

``load_tokenizer()`` returns a ``transformers.PreTrainedTokenizerFast`` built from
``vlaccel/assets/tokenizer.json``. The file was produced by :func:`build_tokenizer` from
:data:`CORPUS` (run ``python -m vlaccel.models.tokenizer`` to rebuild it). Byte-level BPE means any
instruction tokenizes, words outside the corpus just split into more pieces.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

BOS, PAD, COG = "<s>", "<pad>", "<cog>"
SPECIAL_TOKENS = [PAD, BOS, COG]

CORPUS = """
reach the red goal marker with the gripper
reach the goal you saw at the start of the episode
push the puck to the green goal
open the drawer by pulling its handle
close the drawer by pushing it
press the button from the top
open the door by pulling the handle
open the window by sliding it to the left
close the window by sliding it to the right
pick up the block and place it at the goal
slide the plate into the net
turn the faucet on and off
move the arm to the target position
grasp the object and lift it up
put the cube in the bin and stop
what action should the robot take to complete the task
remember where the goal was shown before it disappeared
move left right forward backward up down slowly quickly
pull push press lift lower rotate twist open close grasp release place stack insert
red green blue yellow black white small large near far top bottom front back
"""


def build_tokenizer(vocab_size: int = 400):
    """Train the byte-level BPE on :data:`CORPUS` (deterministic) and return a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in CORPUS.splitlines() if line.strip()], trainer=trainer)
    return tok


def _asset_path() -> Path:
    return Path(str(resources.files("vlaccel") / "assets" / "tokenizer.json"))


@lru_cache(maxsize=1)
def load_tokenizer():
    """The shipped tokenizer as a ``PreTrainedTokenizerFast`` (BOS is added by the model, not here)."""
    from transformers import PreTrainedTokenizerFast

    path = _asset_path()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer asset missing at {path}; rebuild it with `python -m vlaccel.models.tokenizer`")
    return PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=BOS, pad_token=PAD)


if __name__ == "__main__":
    out = _asset_path()
    build_tokenizer().save(str(out))
    print(f"wrote {out}")
