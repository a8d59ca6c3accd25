"""BERT uncased WordPiece tokenisation and MLM masking (docs/fidelity.md §1 and §5)."""
from __future__ import annotations

import threading

import numpy as np
from transformers import BertTokenizerFast

from hdvila_jax import storage

IGNORE_INDEX = -100
MASK_REPLACE_PROB = 0.8  # of the selected tokens: [MASK]
RANDOM_OF_REST_PROB = 0.5  # of the rest: a random token (so 10% / 10% overall)


def resolve_vocab_file(path: str) -> str:
    """`path` itself, or `path/vocab.txt` when given a directory (local or gs://)."""
    vocab = storage.join(path, "vocab.txt") if storage.isdir(path) else path
    if not storage.isfile(vocab):
        raise FileNotFoundError(f"data.vocab_file: no WordPiece vocab at {vocab}")
    return vocab


def read_vocab(vocab_file: str) -> dict[str, int]:
    """The WordPiece vocab of a vocab.txt (or a directory holding one, local or gs://): token -> line
    number, each line's trailing whitespace dropped as the tokenizers library reads the file."""
    vocab = resolve_vocab_file(vocab_file)
    lines = storage.read_text(vocab).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = {line.rstrip(): index for index, line in enumerate(lines)}
    if len(tokens) != len(lines):
        raise ValueError(f"{vocab}: {len(lines)} lines but {len(tokens)} distinct tokens")
    return tokens


def load_tokenizer(vocab_file: str | dict[str, int]) -> BertTokenizerFast:
    """An uncased BERT fast tokenizer from a vocab.txt (or a directory holding one), or from the
    vocab :func:`read_vocab` gave."""
    vocab = read_vocab(vocab_file) if isinstance(vocab_file, str) else vocab_file
    return BertTokenizerFast(vocab=dict(vocab), do_lower_case=True)


class ThreadLocalTokenizer:
    """One tokenizer per thread (a fast tokenizer must not be shared between threads)."""

    def __init__(self, vocab_file: str):
        self.vocab_file = vocab_file
        self._vocab = read_vocab(vocab_file)  # read once (a gs:// file too); each thread builds from it
        self._local = threading.local()
        first = self.get()
        self.special_ids = np.asarray(sorted(first.all_special_ids), np.int32)
        self.mask_id = first.mask_token_id
        self.pad_id = first.pad_token_id
        self.vocab_size = len(first)

    def get(self) -> BertTokenizerFast:
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._local.tokenizer = load_tokenizer(self._vocab)
        return tokenizer

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """`[CLS] text [SEP]` ids and attention mask, int32 [max_len], padded/truncated."""
        encoding = self.get()(text, max_length=max_len, padding="max_length", truncation=True)
        return (np.asarray(encoding["input_ids"], np.int32),
                np.asarray(encoding["attention_mask"], np.int32))

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


def mask_tokens(input_ids: np.ndarray, special_ids: np.ndarray, mask_id: int, vocab_size: int,
                probability: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT MLM masking: each non-special token is selected with `probability`; selected tokens
    become [MASK] (80%), a random token (10%) or stay (10%). Returns (masked ids, labels) with
    labels = original id at selected positions and -100 elsewhere."""
    candidates = ~np.isin(input_ids, special_ids)
    selected = (rng.random(input_ids.shape) < probability) & candidates
    labels = np.where(selected, input_ids, IGNORE_INDEX).astype(np.int32)
    replace = selected & (rng.random(input_ids.shape) < MASK_REPLACE_PROB)
    randomise = selected & ~replace & (rng.random(input_ids.shape) < RANDOM_OF_REST_PROB)
    masked = np.where(replace, mask_id, input_ids)
    masked = np.where(randomise, rng.integers(0, vocab_size, input_ids.shape), masked)
    return masked.astype(np.int32), labels
