"""Tokenizer for the sentence-embed function: `tokenizer.json` beside this file, read once,
through the `tokenizers` library only (importing transformers would cost seconds per cold start)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_FILE = Path(__file__).resolve().parent / "tokenizer.json"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
PAD_ID = 0


@cache
def _tokenizer() -> Tokenizer:
    if not TOKENIZER_FILE.is_file():
        raise FileNotFoundError(f"{TOKENIZER_FILE} is missing: run python functions/sentence-embed/build.py")
    tokenizer = Tokenizer.from_file(str(TOKENIZER_FILE))
    # The shipped file pads every text to 128 tokens; pad to the batch's longest instead.
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    return tokenizer


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask, int64 [batch, longest text in the batch]."""
    encodings = _tokenizer().encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
