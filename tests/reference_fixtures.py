"""Loading the reference-output fixtures (``../shared/fixtures`` layout) and running our model on them."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from hdvila_jax.convert import convert_hdvila
from hdvila_jax.convert.reference_config import model_config_from_reference
from hdvila_jax.convert.rules import hdvila_rules
from hdvila_jax.losses import contrastive_loss
from hdvila_jax.models import HDVILA, ModelConfig
from tests.model_helpers import relative_error

# Tolerances of the fixtures' README: relative error per tensor (float32), of the losses and of
# the per-parameter gradient L2 norms.
TENSOR_RTOL = 1e-4
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-3
SCALARS = ("loss", "mlm_loss", "mlm_acc")
# Gradients that are zero in exact arithmetic (e.g. attention key biases: softmax ignores a
# constant added to a row of logits) come out as float32 round-off, ~1e-9 here, in both
# implementations. Reference norms below this fraction of the largest one are such noise:
# ours must be as small, but their ratio means nothing.
ROUNDOFF_FRACTION = 1e-6

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "fixtures"
STAGE1_TEMPERATURE = 0.05


def fixtures_root() -> pathlib.Path:
    """``$HDVILA_PARITY_FIXTURES`` or ``../shared/fixtures`` next to the repo."""
    return pathlib.Path(os.environ.get("HDVILA_PARITY_FIXTURES", DEFAULT_ROOT))


def fixture_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    """Every folder under ``root`` that holds a ``config.json``."""
    return sorted(p.parent for p in root.glob("*/config.json"))


def rebuild_state_dict(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """The fixture's weights from its recipe (the ``recipe.py`` beside the fixture folders)."""
    recipe_file = folder.parent / "recipe.py"
    spec = importlib.util.spec_from_file_location("fixture_recipe", recipe_file)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe.rebuild_state_dict(str(folder))


def load_fixture(folder: pathlib.Path):
    """(meta, model config, inputs in our NHWC layout, reference outputs, reference grad norms)."""
    meta = json.loads((folder / "config.json").read_text())
    cfg = model_config_from_reference(meta["config"], tuple(meta["hw"]))
    with np.load(folder / "inputs.npz") as f:
        raw = {k: f[k] for k in f.files}
    inputs = dict(img_middle=np.moveaxis(raw["img_middle"], -3, -1).astype(np.float32),
                  img_other=np.moveaxis(raw["img_other"], -3, -1).astype(np.float32),
                  text_input_ids=raw["text_input_ids"].astype(np.int32),
                  text_input_mask=raw["text_input_mask"].astype(np.int32))
    if "mlm_labels" in raw:
        inputs["mlm_labels"] = raw["mlm_labels"].astype(np.int32)
    with np.load(folder / "outputs.npz") as f:
        outputs = {k: f[k] for k in f.files}
    grads = json.loads((folder / "grad_norms.json").read_text())
    return meta, cfg, inputs, outputs, grads


def stage_loss(out: dict, stage: int) -> jax.Array:
    """The fixture's ``loss``: InfoNCE (stage 1) or the MLM loss (stage 2)."""
    if stage == 1:
        return contrastive_loss(out["text_features"], out["video_features"], STAGE1_TEMPERATURE)[0]
    return out["mlm_loss"]


@functools.partial(jax.jit, static_argnums=(0, 1))
def forward_and_grad(cfg: ModelConfig, stage: int, variables: dict, inputs: dict):
    """Deterministic forward with intermediates, and the gradient of the stage loss w.r.t. all params."""
    model = HDVILA(cfg)

    def loss_fn(params):
        out, state = model.apply({**variables, "params": params}, inputs, stage=stage, deterministic=True,
                                 mutable=["intermediates"])
        return stage_loss(out, stage), (out, state["intermediates"])

    (_, (out, inter)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return out, inter, grads


def _nchw(x):
    return np.moveaxis(x, -1, -3)


def _clip_major(x, batch: int, clips: int):
    """``[B*C, ...]`` example-major -> ``[C*B, ...]`` clip-major (the reference's stage-2 order)."""
    x = x.reshape(batch, clips, *x.shape[1:])
    return np.swapaxes(x, 0, 1).reshape(batch * clips, *x.shape[2:])


def ours_in_reference_layout(out: dict, inter: dict, meta: dict, stage: int) -> dict[str, np.ndarray]:
    """Our outputs and intermediates, named and laid out like the fixture's ``outputs.npz``."""
    b, c = meta["batch"], meta["clips"]
    flat = {k[-1]: np.asarray(v[0]) for k, v in traverse_util.flatten_dict(jax.device_get(inter)).items()}
    out = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
    ours = dict(text_features=out["text_features"], vis_features=out["video_features"],
                loss=np.asarray(stage_loss(out, stage)),
                text_embeddings=flat["text_embeddings"], text_seq_stage1=flat["text_seq_stage1"],
                text_pooled=flat["text_pooled"], vis_pooled=flat["vis_pooled"],
                timesformer_in=np.moveaxis(flat["timesformer_in"], -1, 2),
                timesformer_out=np.moveaxis(flat["timesformer_out"], -1, 2))
    for name in ("hr_stage3", "hr_stage4", "hr_grid", "hr_stage3_down", "hr_stage3_down_grid", "lr_stage3",
                 "lr_grid", "middle_feature"):
        ours[name] = _nchw(flat[name])
    grid = flat["middle_feature"].reshape(b, c, *flat["middle_feature"].shape[1:])
    ours["transformer_visual_inputs"] = np.swapaxes(grid, 0, 1)[:, :, None]
    for name, value in flat.items():
        if name.startswith("bert_layer"):
            layer = int(name[len("bert_layer"):])
            ours[name] = value if value.shape[0] == b and layer < meta["config"]["num_hidden_layers"] // 2 \
                else _clip_major(value, b, c)
    if stage == 2:
        ours.update(visual_tokens=_clip_major(flat["visual_tokens"], b, c),
                    pooled2=_clip_major(flat["pooled2"].reshape(b * c, -1), b, c),
                    vtoken_output=np.swapaxes(out["vtoken_output"], 0, 1),
                    cls_in=flat["cls_in"], mlm_logits=out["mlm_logits"], itm_logits=out["itm_logits"])
        if "mlm_loss" in out:
            ours.update(mlm_loss=out["mlm_loss"], mlm_acc=out["mlm_acc"])
    return ours


def grad_norms_by_torch_name(grads: dict, cfg: ModelConfig, stage: int) -> dict[str, float]:
    """L2 norm of our gradient for every reference parameter name our model has."""
    flat = traverse_util.flatten_dict(jax.device_get(grads))
    norms = {}
    for key, target in hdvila_rules(cfg, stage).items():
        if target.collection == "params":
            norms[key] = float(np.linalg.norm(np.asarray(flat[target.path], np.float64)))
    return norms


def run_fixture(folder: pathlib.Path):
    """Convert the fixture's weights and run our model: (meta, ours, reference outputs, our/ref grad norms)."""
    meta, cfg, inputs, ref_out, ref_grads = load_fixture(folder)
    stage = meta["stage"]
    variables = convert_hdvila(rebuild_state_dict(folder), cfg, stage)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    out, inter, grads = forward_and_grad(cfg, stage, variables, inputs)
    return meta, ours_in_reference_layout(out, inter, meta, stage), ref_out, \
        grad_norms_by_torch_name(grads, cfg, stage), ref_grads


@functools.lru_cache(maxsize=None)
def cached_run(folder: pathlib.Path):
    """:func:`run_fixture`, once per folder per test session."""
    return run_fixture(folder)


def check_outputs(folder: pathlib.Path) -> float:
    """Assert every reference output of ``folder`` is matched; return the worst relative error."""
    meta, ours, ref, _, _ = cached_run(folder)
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"{folder.name}: outputs we do not produce: {missing}"
    errors = {}
    for name, value in ref.items():
        assert ours[name].shape == value.shape, f"{name}: shape {ours[name].shape} vs reference {value.shape}"
        if name in SCALARS and value == 0:  # e.g. the MLM accuracy of a random model: must be exactly 0 too
            assert ours[name] == 0, f"{name}: ours {ours[name]} vs reference 0"
            continue
        assert np.linalg.norm(value) > 0, f"{name}: reference is all zeros, comparison would be meaningless"
        errors[name] = relative_error(ours[name], value)
    worst = max(errors, key=errors.get)
    print(f"\n{folder.name}: worst relative error {errors[worst]:.2e} ({worst})")
    bad = {n: e for n, e in errors.items() if e >= (LOSS_RTOL if n in SCALARS else TENSOR_RTOL)}
    assert not bad, f"{folder.name}: relative errors over tolerance: {bad}"
    return errors[worst]


def check_gradient_norms(folder: pathlib.Path) -> float:
    """Assert our per-parameter gradient L2 norms match the reference's; return the worst relative error."""
    _, _, _, ours, ref = cached_run(folder)
    ref_norms = {k: v[0] for k, v in ref["l2_and_sum"].items()}
    without_grad = set(ref["params_without_grad"])
    # Every parameter the reference trains must exist in ours (no silently dropped weights).
    assert not (set(ref_norms) - set(ours)), f"parameters we lack: {sorted(set(ref_norms) - set(ours))}"
    # What the reference's loss does not reach, ours does not reach either.
    reached = {k: ours[k] for k in without_grad & set(ours) if ours[k] != 0.0}
    assert not reached, f"gradients where the reference has none: {reached}"
    largest = max(ref_norms.values())
    if largest == 0:  # a degenerate loss (InfoNCE over one pair is 0): ours must vanish too
        assert not any(ours[k] for k in ref_norms), f"{folder.name}: reference gradients are all 0, ours are not"
        return 0.0
    floor = ROUNDOFF_FRACTION * largest
    noise = {k for k, n in ref_norms.items() if n < floor}
    loud = {k: ours[k] for k in noise if ours[k] >= floor}
    assert not loud, f"gradients the reference has as round-off (< {floor:.1e}) are large in ours: {loud}"
    errors = {k: abs(ours[k] - n) / n for k, n in ref_norms.items() if k not in noise}
    worst = max(errors, key=errors.get)
    print(f"\n{folder.name}: worst gradient-norm relative error {errors[worst]:.2e} ({worst})")
    bad = {k: e for k, e in errors.items() if e >= GRAD_RTOL}
    assert not bad, f"{folder.name}: gradient-norm relative errors over tolerance: {bad}"
    return errors[worst]
