"""Trainer pieces that need no model compilation: optimizer rules, schedules, mesh, metrics, config checks."""
import numpy as np
import pytest

from configs import stage1, stage2
from hdvila_jax import sharding
from hdvila_jax.models import ConfigError
from hdvila_jax.models.variables import abstract_variables
from hdvila_jax.config_checks import check_config
from hdvila_jax.tasks.base import TrainConfigError
from hdvila_jax.tasks.retrieval import retrieval_metrics
from hdvila_jax.train import optimizer

PATHS = ["text/encoder/layer_0/query/kernel", "text/encoder/layer_0/query/bias", "video/cnn_hr/conv1/kernel",
         "video/timesformer/pos_embed"]


def test_every_parameter_needs_exactly_one_rule():
    labels = optimizer.assign_groups(PATHS, {"transformer": r"^text/", "cnn": r"^video/cnn", "align": r"timesformer"}, "")
    assert labels == {PATHS[0]: "transformer", PATHS[1]: "transformer", PATHS[2]: "cnn", PATHS[3]: "align"}
    with pytest.raises(optimizer.OptimizerConfigError, match="video/timesformer/pos_embed") as e:
        optimizer.assign_groups(PATHS, {"transformer": r"^text/", "cnn": r"^video/cnn"}, "")
    assert "no optimizer group" in str(e.value)
    with pytest.raises(optimizer.OptimizerConfigError, match=r"video/cnn_hr/conv1/kernel \(matched by cnn, frozen\)"):
        optimizer.assign_groups(PATHS, {"transformer": r"^text/", "cnn": r"^video/", }, r"^video/cnn")


def test_paper_configs_cover_the_model_and_freeze_stage1_in_stage2():
    for module, stage in ((stage1, 1), (stage2, 2)):
        config = module.get_config("tiny")
        params = abstract_variables(check_config(config)[0], stage)["params"]
        opt = optimizer.make_optimizer(config.optimizer, params, 10)
        frozen = {p for p, label in opt.labels.items() if label == optimizer.FROZEN}
        stage1_paths = {p for p in opt.labels if p.split("/")[0] in ("video", "text", "contrastive")}
        assert frozen == (stage1_paths if stage == 2 else set())


def test_no_weight_decay_on_biases_norms_and_embeddings():
    no_decay = stage1.get_config("paper").optimizer.no_decay
    import re
    decayed = {p: not re.search(no_decay, p) for p in [
        "text/encoder/layer_0/query/kernel", "text/encoder/layer_0/query/bias", "text/encoder/layer_0/attn_norm/scale",
        "video/timesformer/block_0/temporal_norm1/scale", "video/timesformer/pos_embed",
        "text/embeddings/word/embedding", "video/cnn_hr/bn1/scale", "heads/mlm/bias", "video/fuse/kernel"]}
    assert decayed == {"text/encoder/layer_0/query/kernel": True, "text/encoder/layer_0/query/bias": False,
                       "text/encoder/layer_0/attn_norm/scale": False,
                       "video/timesformer/block_0/temporal_norm1/scale": False,
                       "video/timesformer/pos_embed": False, "text/embeddings/word/embedding": False,
                       "video/cnn_hr/bn1/scale": True, "heads/mlm/bias": False, "video/fuse/kernel": True}


def test_schedules_match_the_reference_formulas():
    lin = optimizer.make_schedule("warmup_linear", 1.0, total_steps=100, warmup_steps=10)
    # The reference's global_step is count + 1: step/warmup, then (total - step) / (total - warmup).
    np.testing.assert_allclose([float(lin(c)) for c in (0, 4, 9, 10, 54, 99)],
                               [0.1, 0.5, 1.0, 89 / 90, 45 / 90, 0.0], rtol=1e-6)
    # Downstream multi_step: epoch = int(step / steps_per_epoch) halves once per milestone m with
    # epoch >= m, i.e. step >= m * steps_per_epoch (milestones given here in steps).
    multi = optimizer.make_schedule("multi_step", 2.0, total_steps=100, warmup_steps=0, milestones=(10, 20))
    np.testing.assert_allclose([float(multi(c)) for c in (0, 8, 9, 18, 19, 50)], [2, 2, 1, 1, 0.5, 0.5])
    # Warmup (no decay while step <= warmup), fractional milestones, and the original's skipped
    # halving past the last milestone (docs/fidelity.md Q10): 0.5 -> 0.125, not 0.25.
    quirk = optimizer.make_schedule("multi_step", 1.0, total_steps=100, warmup_steps=4, milestones=(2.5, 6.5),
                                    skip_last_halving=True)
    np.testing.assert_allclose([float(quirk(c)) for c in (0, 3, 4, 5, 6, 90)], [0.25, 1, 0.5, 0.5, 0.125, 0.125])
    with pytest.raises(optimizer.OptimizerConfigError, match="cosine"):
        optimizer.make_schedule("cosine", 1.0, 10, 0)


def test_mesh_fills_minus_one_and_rejects_bad_shapes():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2}, 8) == {"data": 4, "fsdp": 2}
    assert sharding.mesh_shape({"data": 1, "fsdp": -1}, 8) == {"data": 1, "fsdp": 8}
    with pytest.raises(sharding.ShardingConfigError, match="config.mesh"):
        sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)
    with pytest.raises(sharding.ShardingConfigError, match="config.mesh"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)


def test_retrieval_metrics_on_a_known_similarity():
    # Texts 0,1 rank their video first; text 2 ranks its video third; text 3 second.
    sim = np.array([[0.9, 0.1, 0.0, 0.0],
                    [0.0, 0.8, 0.1, 0.0],
                    [0.5, 0.6, 0.4, 0.0],
                    [0.0, 0.0, 0.9, 0.5]])
    m = retrieval_metrics(sim)
    assert m["t2v_R1"] == 50.0 and m["t2v_R5"] == 100.0
    assert m["t2v_MedR"] == 1.5 and m["t2v_MeanR"] == (1 + 1 + 3 + 2) / 4
    # Columns: video 2 is beaten by text 3's 0.9 -> rank 1; others first.
    assert m["v2t_R1"] == 75.0 and m["v2t_MeanR"] == (1 + 1 + 2 + 1) / 4


@pytest.mark.parametrize("key,value,field", [
    ("grad_accum_steps", 3, "grad_accum_steps"),
    ("temperature", 0.0, "temperature"),
    ("total_steps", 0, "total_steps"),
    ("init.stage1_checkpoint", "x", "init.stage1_checkpoint"),
    ("data.num_workers", -1, "data.num_workers"),
    ("data.num_parallel_calls", 0, "data.num_parallel_calls"),
    ("rng_impl", "philox", "rng_impl"),
])
def test_bad_config_fails_naming_the_field(key, value, field):
    config = stage1.get_config("tiny")
    node, *rest = key.split(".")
    (config[node] if rest else config).__setattr__(rest[0] if rest else node, value)
    with pytest.raises(TrainConfigError, match=f"config.{field}"):
        check_config(config)


def test_bad_model_field_is_named():
    config = stage1.get_config("tiny")
    config.model.crop_size = (60, 192)
    with pytest.raises(ConfigError, match="crop_size"):
        check_config(config)
    config = stage2.get_config("tiny")
    config.data.mlm_probability = 0.0
    with pytest.raises(TrainConfigError, match="config.data.mlm_probability"):
        check_config(config)


def test_paper_configs_use_the_elementwise_remat_policy_and_the_small_variants_none():
    # docs/performance.md, "Fewer bytes": 12 stage-1 examples per v5e chip fit with it; the tiny and demo
    # variants run on CPUs and small GPUs without remat.
    from configs import qa, retrieval
    for config in (stage1.get_config("paper"), stage2.get_config("paper"), retrieval.get_config("msrvtt"),
                   qa.get_config("msrvtt_qa")):
        assert (config.model.remat, config.model.remat_policy) == (True, "elementwise")
    for variant in ("tiny", "demo"):
        assert stage1.get_config(variant).model.remat is False
