"""A validation split smaller than ``config.eval_batch_size`` (issue 31): the eval pads the one partial
batch and drops the padding, so the scores are those of the split alone, as with batches that fit."""
import jax
import numpy as np
import pytest

from hdvila_jax import sharding
from hdvila_jax.models import HDVILA, model_config_from_dict
from hdvila_jax.models.variables import init_variables
from hdvila_jax.tasks.retrieval import RetrievalEvaluator
from tests import train_helpers

NUM_VAL = 8  # train_helpers.make_demo_data's val split


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def test_a_val_split_smaller_than_the_eval_batch_is_scored_on_its_own_examples(demo_root):
    config = train_helpers.tiny_config(1, demo_root)
    model_cfg = model_config_from_dict(config.model.to_dict())
    variables = init_variables(model_cfg, jax.random.PRNGKey(3), stage=1)
    mesh = sharding.make_mesh(config.mesh)

    def scores(eval_batch_size: int) -> dict[str, float]:
        run = train_helpers.apply_overrides(config.copy_and_resolve_references(), {"eval_batch_size": eval_batch_size})
        return RetrievalEvaluator(run, HDVILA(model_cfg))(variables, mesh, 0)

    padded = scores(4 * NUM_VAL)  # one batch: 8 examples, 24 rows of padding
    fitting = scores(NUM_VAL // 4)  # four full batches, no padding
    assert padded["num_videos"] == fitting["num_videos"] == NUM_VAL
    assert padded.keys() == fitting.keys()
    for key in padded:
        np.testing.assert_allclose(padded[key], fitting[key], rtol=1e-6, err_msg=key)
    # not trivially perfect: random weights rank the 8 captions' videos apart from chance only
    assert padded["t2v_R1"] < 100.0
