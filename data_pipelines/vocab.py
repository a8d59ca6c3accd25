"""A small WordPiece vocab for a closed caption set, loadable by transformers' BERT tokenizer."""
from __future__ import annotations

import re
import string
from typing import Iterable

from hdvila_jax import storage

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] = 0


def words_of(texts: Iterable[str]) -> set[str]:
    """Lower-cased words and punctuation marks as BERT's basic tokenizer splits them."""
    words = set()
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return words


def wordpiece_vocab(texts: Iterable[str]) -> list[str]:
    """Specials, the words of `texts`, then single characters and ##characters, so that any
    ASCII word outside the captions still splits into pieces instead of [UNK]."""
    characters = string.ascii_lowercase + string.digits
    tokens = list(RESERVED_TOKENS) + sorted(words_of(texts))
    tokens += [c for c in characters + string.punctuation]
    tokens += [f"##{c}" for c in characters]
    seen, vocab = set(), []
    for token in tokens:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    return vocab


def write_vocab(path: str, texts: Iterable[str]) -> int:
    """Writes vocab.txt (one token per line; local or gs://) and returns its size."""
    vocab = wordpiece_vocab(texts)
    storage.write_text(path, "\n".join(vocab) + "\n")
    return len(vocab)
