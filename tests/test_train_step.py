"""Real train steps of the tiny model on synthetic batches: learning, freezing, gradient accumulation."""
import jax
import numpy as np
from flax import traverse_util

from hdvila_jax import sharding
from hdvila_jax.models import HDVILA
from hdvila_jax.models.variables import abstract_variables
from hdvila_jax.train import train_state
from hdvila_jax.train.config_checks import check_config
from hdvila_jax.train.optimizer import make_optimizer
from hdvila_jax.train.train_step import make_train_step
from tests.train_helpers import synthetic_batch, tiny_config

NO_DROPOUT = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0,
              "model.timesformer_drop_path_rate": 0.0, "model.pixel_random_sampling_size": 0}


def build(config):
    """Sharded fresh state and the jitted step on all local devices."""
    model_cfg = check_config(config)
    mesh = sharding.make_mesh(config.mesh)
    opt = make_optimizer(config.optimizer, abstract_variables(model_cfg, config.stage)["params"], config.total_steps)
    specs = train_state.state_specs(config, model_cfg, mesh, opt)
    state = train_state.new_train_state(config, train_state.init_variables_sharded(config, model_cfg, mesh),
                                        mesh, specs, opt)
    step = jax.jit(make_train_step(config, HDVILA(model_cfg), opt, mesh))
    return state, step, mesh


def run_steps(config, batch, n):
    """``n`` steps on the same batch: the initial state, then per step the state, loss and metrics."""
    state, step, mesh = build(config)
    initial = jax.device_get(state)
    batch = sharding.global_batch(batch, mesh)
    losses, states, metrics = [], [], []
    for _ in range(n):
        state, step_metrics = step(state, batch)
        losses.append(float(step_metrics["loss"]))
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(step_metrics))
        assert bool(step_metrics["finite"])
    return initial, states, losses, metrics


def assert_same_params(a, b, rtol=1e-5, atol=1e-7):
    flat_b = traverse_util.flatten_dict(b, sep="/")
    for path, value in traverse_util.flatten_dict(a, sep="/").items():
        np.testing.assert_allclose(flat_b[path], value, rtol=rtol, atol=atol, err_msg=path)


# Adam's first step is about lr * g / (|g| + eps). With eps=1 the update is linear in small
# gradients, so float32 rounding of g near 0 is not blown up to a full lr step and the
# accumulation comparison can be tight (1e-7); lr 0.05 keeps the steps big enough to learn.
OVERRIDES = {"optimizer.warmup_ratio": 0.0, "total_steps": 100, "batch_size": 4, "optimizer.eps": 1.0,
             **NO_DROPOUT}


def run_config(stage, **extra):
    config = tiny_config(stage, "unused", **OVERRIDES, **extra)
    for group in config.optimizer.groups.values():
        group.lr = 0.05
    return config


def assert_accumulation_matches(stage, batch, state_1, loss_1, metrics_1):
    """One step with 2 micro-batches of 2 == the first step on the batch of 4."""
    _, states, losses, metrics = run_steps(run_config(stage, grad_accum_steps=2), batch, 1)
    np.testing.assert_allclose(losses[0], loss_1, rtol=1e-6)
    np.testing.assert_allclose(metrics[0]["grad_norm"], metrics_1["grad_norm"], rtol=1e-5)
    assert_same_params(state_1["params"], states[0]["params"])


def test_stage1_steps_learn_and_accumulation_equals_one_big_batch():
    config = run_config(1)
    batch = synthetic_batch(config, 4)
    _, states, losses, metrics = run_steps(config, batch, 4)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses
    assert int(states[-1]["step"]) == 4
    for key in ("t2v_acc", "v2t_acc", "grad_norm", "param_norm", "update_norm", "lr_cnn", "lr_align"):
        assert np.isfinite(metrics[-1][key])
    # GradCache: global-batch InfoNCE on all micro-batches' features, backward per micro-batch.
    assert_accumulation_matches(1, batch, states[0], losses[0], metrics[0])


def test_stage2_trains_mlm_freezes_stage1_and_accumulation_equals_one_big_batch():
    config = run_config(2)
    batch = synthetic_batch(config, 4)
    initial, states, losses, metrics = run_steps(config, batch, 4)
    assert losses[-1] < losses[0] - 0.05, losses
    assert 0.0 <= metrics[-1]["mlm_acc"] <= 1.0 and metrics[-1]["mlm_tokens"] > 0
    before = traverse_util.flatten_dict(initial["params"], sep="/")
    after = traverse_util.flatten_dict(states[-1]["params"], sep="/")
    stage1_keys = [p for p in before if p.split("/")[0] in ("video", "text", "contrastive")]
    stage2_keys = [p for p in before if p.split("/")[0] in ("fusion", "heads")]
    assert stage1_keys and stage2_keys
    for p in stage1_keys:
        assert before[p].tobytes() == after[p].tobytes(), f"frozen {p} changed"
    assert sum(not np.array_equal(before[p], after[p]) for p in stage2_keys) > len(stage2_keys) // 2
    # Adam moments (mu, nu) exist for the stage-2 parameters only.
    moments = [leaf for leaf in jax.tree.leaves(states[-1]["opt_state"]) if np.ndim(leaf) > 0]
    assert sorted(m.size for m in moments) == sorted(before[p].size for p in stage2_keys for _ in range(2))
    # Each micro-batch's mean MLM loss weighted by its share of the masked tokens.
    assert_accumulation_matches(2, batch, states[0], losses[0], metrics[0])
