"""Model behaviour beyond the reference fixtures: config checks, bf16, sampling, resizing, remat."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from absl import flags
from ml_collections import config_flags

from configs import model as model_configs
from hdvila_jax.models import HDVILA, ConfigError, model_config_from_dict
from hdvila_jax.models.config import REMAT_POLICIES, ModelConfig
from hdvila_jax.models.layers import linear_resize_matrix
from tests.model_helpers import init_small, random_batch, relative_error, small_config

# bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 2e-3 per op); through ResNet-18, the
# TimeSformer and 4 BERT layers the outputs drift by ~1e-2 (measured on this test's inputs:
# text features 0.8%, video features 0.4%, MLM logits 0.6%, ITM logits 0.2%), so 5e-2 leaves
# room without hiding a real error (a wrong layer gives errors of order 1).
BF16_RTOL = 5e-2


@pytest.mark.parametrize("field, value, message", [
    ("crop_size", (100, 128), "crop_size.*multiples of 64"),
    ("hidden_size", 30, "hidden_size.*not divisible by num_attention_heads"),
    ("num_hidden_layers", 3, "num_hidden_layers.*even"),
    ("score_agg_func", "median", "score_agg_func"),
    ("resnet_depth", 42, "resnet_depth"),
    ("dtype", "float8", "dtype"),
    ("remat_policy", "everything", "remat_policy"),
    ("lowering_platform", "cuda", "lowering_platform"),
    ("onednn_conv", "yes", "onednn_conv"),
    ("fused_attention", 1, "fused_attention.*true or false"),
    ("crop_size", (64, 64 * 101), "max_grid_col_position_embeddings"),
])
def test_bad_config_names_the_field(field, value, message):
    values = model_configs.get_config("tiny").to_dict()
    values[field] = value
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict(values)


def test_unknown_config_field_is_an_error():
    with pytest.raises(ConfigError, match="unknown model config field.*hiden_size"):
        model_config_from_dict({**model_configs.get_config("tiny").to_dict(), "hiden_size": 64})


def _other_value(value):
    """A valid-looking value of ``value``'s type that differs from it, written as on a command line."""
    if isinstance(value, bool):
        return not value, str(not value)
    if isinstance(value, (int, float)):
        return value * 2 + 1, repr(value * 2 + 1)
    if isinstance(value, tuple):
        other = tuple(v * 2 for v in value)
        return other, repr(other)
    return value + "x", value + "x"


def test_paper_model_config_is_model_config_defaults():
    # configs/model.py writes no default of its own: paper is ModelConfig() field for field, with
    # the same types (tuples stay tuples), and tiny differs only where TINY says.
    defaults = dataclasses.asdict(ModelConfig())
    paper = model_configs.get_config("paper").to_dict()
    assert paper == defaults and {k: type(v) for k, v in paper.items()} == {k: type(v) for k, v in defaults.items()}
    assert model_config_from_dict(paper) == ModelConfig()
    tiny = model_configs.get_config("tiny").to_dict()
    assert {k for k in tiny if tiny[k] != defaults[k]} == set(model_configs.TINY)


@pytest.mark.parametrize("variant", ["paper", "tiny"])
def test_every_model_field_can_be_overridden_from_the_command_line(variant):
    # ml_collections refuses --config.model.X for a key the ConfigDict lacks (and a value of another type).
    config = ml_collections.ConfigDict({"model": model_configs.get_config(variant)})
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(config.model) == fields
    values = {name: _other_value(config.model[name]) for name in fields}
    argv = ["prog", *(f"--config.model.{name}={text}" for name, (_, text) in values.items())]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    assert {name: flag_values.config.model[name] for name in fields} == {name: v for name, (v, _) in values.items()}


def test_paper_config_is_the_spec():
    cfg = model_config_from_dict(model_configs.get_config("paper").to_dict())
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (1024, 24, 16, 4096)
    assert (cfg.resnet_depth, cfg.timesformer_depth, cfg.timesformer_heads) == (50, 4, 16)
    assert cfg.crop_size == (640, 1024) and cfg.grid_size == (10, 16) and cfg.num_text_layers == 12


@functools.lru_cache(maxsize=None)
def _apply(cfg, stage, deterministic):
    model = HDVILA(cfg)
    return jax.jit(lambda v, b, r: model.apply(v, b, stage=stage, deterministic=deterministic, rngs={"dropout": r}))


def test_bf16_compute_stays_close_to_float32():
    cfg32 = small_config()
    cfg16 = small_config(dtype="bfloat16")
    variables = init_small(cfg32, stage=2)
    batch = random_batch(cfg32, batch=2, clips=1)
    key = jax.random.PRNGKey(0)
    out32 = _apply(cfg32, 2, True)(variables, batch, key)
    out16 = _apply(cfg16, 2, True)(variables, batch, key)
    assert out16["mlm_logits"].dtype == jnp.bfloat16
    assert jax.tree_util.tree_leaves(variables["params"])[0].dtype == jnp.float32
    for name in ("text_features", "video_features", "mlm_logits", "itm_logits"):
        err = relative_error(out16[name], out32[name])
        assert err < BF16_RTOL, f"{name}: bf16 vs float32 relative error {err:.3g}"


def test_visual_token_sampling_only_in_training():
    cfg = small_config(pixel_random_sampling_size=1)  # grid 1x2 -> sample 1 of 2 cells
    variables = init_small(cfg, stage=2)
    batch = random_batch(cfg)
    train = _apply(cfg, 2, False)(variables, batch, jax.random.PRNGKey(1))
    evaluation = _apply(cfg, 2, True)(variables, batch, jax.random.PRNGKey(1))
    assert train["vtoken_output"].shape[2] == 1
    assert evaluation["vtoken_output"].shape[2] == 2
    assert np.isfinite(float(train["mlm_loss"]))


def test_dropout_is_random_in_training_and_off_in_evaluation():
    cfg = small_config()
    variables = init_small(cfg, stage=1)
    batch = random_batch(cfg)
    a = _apply(cfg, 1, False)(variables, batch, jax.random.PRNGKey(1))["text_features"]
    b = _apply(cfg, 1, False)(variables, batch, jax.random.PRNGKey(2))["text_features"]
    c = _apply(cfg, 1, True)(variables, batch, jax.random.PRNGKey(1))["text_features"]
    d = _apply(cfg, 1, True)(variables, batch, jax.random.PRNGKey(2))["text_features"]
    assert relative_error(a, b) > 1e-3
    np.testing.assert_array_equal(c, d)


@pytest.mark.parametrize("size_in, size_out", [(10, 2), (16, 3), (16, 16), (7, 5), (7, 9), (10, 20), (3, 1)])
def test_resize_matches_torch_interpolate(size_in, size_out):
    x = np.random.default_rng(0).standard_normal((1, 4, size_in)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size_out, mode="linear").numpy()
    ours = np.einsum("oi,bci->bco", linear_resize_matrix(size_in, size_out), x)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", REMAT_POLICIES)
def test_remat_changes_nothing_numerically(policy):
    cfg = small_config()
    cfg_remat = small_config(remat=True, remat_policy=policy)
    variables = init_small(cfg, stage=2)
    batch = random_batch(cfg, batch=2, clips=1)

    def grads(c):
        model = HDVILA(c)
        loss = lambda p: model.apply({**variables, "params": p}, batch, stage=2)["mlm_loss"]
        return jax.jit(jax.grad(loss))(variables["params"])

    g, g_remat = grads(cfg), grads(cfg_remat)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree_util.tree_leaves(g_remat)):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("depth, channels", [(18, 512), (34, 512), (50, 2048)])
def test_resnet_depths_build_the_right_backbone(depth, channels):
    from hdvila_jax.models.variables import abstract_variables
    cfg = small_config(resnet_depth=depth)
    params = abstract_variables(cfg, stage=1)["params"]["video"]
    assert params["grid_hr"]["kernel"].shape == (1, 1, channels, cfg.hidden_size)
    assert params["grid_lr"]["kernel"].shape == (1, 1, channels // 2, cfg.hidden_size)
    assert "layer4_0" not in params["cnn_lr"] and "layer4_0" in params["cnn_hr"]
