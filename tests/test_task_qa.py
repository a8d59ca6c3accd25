"""Video QA (docs/fidelity.md §13): the multiple-choice row layout, the clip-aggregated losses, accuracy,
the QA parameter tree and its converter. Parity with the original is in test_reference_parity.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdvila_jax.convert import convert_hdvila, export_hdvila
from hdvila_jax.convert.rules import hdvila_rules
from hdvila_jax.models import HDVILA
from hdvila_jax.models.qa_head import flatten_choices
from hdvila_jax.models.variables import example_batch, init_variables
from hdvila_jax.tasks.qa_loss import aggregate_logits, qa_accuracy, qa_loss, qa_loss_per_example, unflatten_choices
from tests.model_helpers import random_batch, small_config


def _ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return lse - logits[np.arange(len(labels)), labels]


def test_choice_rows_round_trip():
    b, c, length = 3, 5, 4
    ids = np.arange(b * c * length).reshape(b, c, length)
    flat = np.asarray(flatten_choices(jnp.asarray(ids)))
    for q in range(b):
        for i in range(c):
            np.testing.assert_array_equal(flat[q * c + i], ids[q, i])  # row b*C + i
    np.testing.assert_array_equal(np.asarray(unflatten_choices(jnp.asarray(flat), c)), ids)
    with pytest.raises(ValueError, match="multiple of 5"):
        unflatten_choices(jnp.zeros((7, 2)), 5)


def test_lse_loss_is_ce_of_lse_aggregated_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 6)) * 3  # [K, B, C]
    labels = np.array([0, 5, 2, 2])
    ours = np.asarray(qa_loss_per_example(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), "lse"))
    # The original's formula, literally: logsumexp_{k,c} z - logsumexp_k z[k, y].
    z = np.swapaxes(logits, 0, 1)
    formula = np.log(np.exp(z).reshape(4, -1).sum(1)) - np.log(np.exp(z[np.arange(4), :, labels]).sum(1))
    aggregated = np.log(np.exp(logits).sum(0))
    np.testing.assert_allclose(ours, formula, rtol=1e-5)
    np.testing.assert_allclose(ours, _ce(aggregated, labels), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aggregate_logits(jnp.asarray(logits, jnp.float32), "lse")), aggregated,
                               rtol=1e-5)


@pytest.mark.parametrize("agg,reduce", [("mean", np.mean), ("max", np.max)])
def test_mean_max_loss_is_ce_of_aggregated_logits(agg, reduce):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 5))
    labels = np.array([4, 0, 1])
    loss, aux = qa_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), agg)
    expected = _ce(reduce(logits, axis=0), labels)
    np.testing.assert_allclose(np.asarray(aux["loss_per_example"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(aux["pred"]), reduce(logits, axis=0).argmax(1))


def test_accuracy_on_constructed_case():
    # Clip 0 votes for class 1 weakly, clip 1 for class 2 strongly: mean picks 2, per question.
    logits = np.zeros((2, 4, 3), np.float32)
    logits[0, :, 1] = 1.0
    logits[1, :, 2] = 5.0
    labels = np.array([2, 2, 1, -1])  # the last answer is outside the vocabulary: always wrong
    _, aux = qa_loss(jnp.asarray(logits), jnp.asarray(np.maximum(labels, 0)), "mean")
    np.testing.assert_array_equal(np.asarray(aux["pred"]), [2, 2, 2, 2])
    assert qa_accuracy(np.asarray(aux["pred"]), labels) == 50.0
    assert qa_accuracy(np.array([0, 1]), np.array([0, 1])) == 100.0
    with pytest.raises(ValueError):
        qa_accuracy(np.zeros(2), np.zeros(3))


@pytest.fixture(scope="module")
def mc_model():
    cfg = small_config(num_qa_outputs=1)
    return cfg, init_variables(cfg, jax.random.PRNGKey(0), 2)


def test_qa_parameter_tree_and_init(mc_model):
    cfg, variables = mc_model
    params = variables["params"]
    assert "contrastive" not in params and set(params["heads"]) == {"qa_classifier"}
    head = params["heads"]["qa_classifier"]
    d = cfg.hidden_size
    assert head["hidden"]["kernel"].shape == (d, 2 * d) and head["out"]["kernel"].shape == (2 * d, 1)
    assert not np.any(np.asarray(head["hidden"]["bias"])) and not np.any(np.asarray(head["out"]["bias"]))
    assert 0.01 < float(np.std(np.asarray(head["hidden"]["kernel"]))) < 0.03
    # Pretraining trees are unchanged by the new field's default.
    assert not any(t.path[:2] == ("heads", "qa_classifier") for t in hdvila_rules(small_config(), 2).values())


def test_qa_converter_round_trip(mc_model):
    cfg, variables = mc_model
    state_dict = export_hdvila(variables, cfg, 2)
    d = cfg.hidden_size
    assert state_dict["transformer.classifier.0.weight"].shape == (2 * d, d)
    assert state_dict["transformer.classifier.2.weight"].shape == (1, 2 * d)
    assert "transformer.bert.pooler1.dense.weight" in state_dict
    assert not any(k.startswith(("transformer.cls.", "transformer.t_proj", "transformer.v_proj")) for k in state_dict)
    back = convert_hdvila(state_dict, cfg, 2)
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(back), jax.tree_util.tree_leaves_with_path(variables)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_multiple_choice_logits_layout(mc_model):
    """Row b*C + i of the flattened texts scores at logits[k, b, i]: permuting question b's options
    permutes its scores, swapping b's clips swaps logits[0, b] and logits[1, b]."""
    cfg, variables = mc_model
    b, k, c, length = 2, 2, 3, 6
    batch = random_batch(cfg, batch=b, clips=k, text_len=length, with_labels=False)
    rng = np.random.default_rng(3)
    ids = rng.integers(5, cfg.vocab_size, (b, c, length)).astype(np.int32)
    mask = np.ones((b, c, length), np.int32)
    mask[0, 1, 4:] = 0
    logits_fn = jax.jit(lambda v, x: HDVILA(cfg).apply(v, x, True, method=HDVILA.qa_logits))
    base = np.asarray(logits_fn(variables, dict(batch, text_input_ids=ids, text_input_mask=mask)))
    assert base.shape == (k, b, c)
    perm = np.array([2, 0, 1])
    permuted = np.asarray(logits_fn(variables, dict(batch, text_input_ids=ids[:, perm], text_input_mask=mask[:, perm])))
    np.testing.assert_allclose(permuted, base[:, :, perm], rtol=1e-5, atol=1e-6)
    swapped = {**batch, "img_middle": batch["img_middle"][:, ::-1], "img_other": batch["img_other"][:, ::-1]}
    clips_swapped = np.asarray(logits_fn(variables, dict(swapped, text_input_ids=ids, text_input_mask=mask)))
    np.testing.assert_allclose(clips_swapped, base[::-1], rtol=1e-5, atol=1e-6)
    assert example_batch(cfg, 1, 1, 4, num_choices=5)["text_input_ids"].shape == (1, 5, 4)
