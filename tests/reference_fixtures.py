"""Loading the reference-output fixtures (layout: docs/fidelity.md §17) and running our model on them.

Serves both roots: the pretraining fixtures (``$HDVILA_PARITY_FIXTURES``) and the downstream task fixtures
(``$HDVILA_TASK_FIXTURES``, folders whose ``config.json`` has a ``task`` object).
"""
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
from hdvila_jax.tasks.qa_loss import qa_loss
from hdvila_jax.tasks.retrieval import RETRIEVAL_DIRECTION_WEIGHT, multiple_choice_scores
from tests.model_helpers import relative_error

# Tolerances of the fixtures' README: relative error per tensor (float32), of the losses and of
# the per-parameter gradient L2 norms.
TENSOR_RTOL = 1e-4
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-3
# Per parameter |ours - ref| <= GRAD_RTOL * ref + GRAD_ATOL_FRACTION * (largest reference norm): the
# absolute term covers gradients that are zero in exact arithmetic (e.g. attention key biases: softmax
# ignores a constant added to a row of logits), whose float32 round-off (~1e-8) is noise in both.
GRAD_ATOL_FRACTION = 1e-6
SCALARS = ("loss", "mlm_loss", "mlm_acc")
# Integer outputs (argmax predictions): must be equal.
EXACT = ("msrvtt_mc_pred", "pred")
QA_TASKS = ("qa", "mc")

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "fixtures"
DEFAULT_TASK_ROOT = DEFAULT_ROOT / "tasks"
STAGE1_TEMPERATURE = 0.05


def fixtures_root() -> pathlib.Path:
    """``$HDVILA_PARITY_FIXTURES``, else ``shared/fixtures`` in the directory that holds the repo."""
    return pathlib.Path(os.environ.get("HDVILA_PARITY_FIXTURES", DEFAULT_ROOT))


def task_fixtures_root() -> pathlib.Path:
    """``$HDVILA_TASK_FIXTURES``, else ``shared/fixtures/tasks`` in the directory that holds the repo."""
    return pathlib.Path(os.environ.get("HDVILA_TASK_FIXTURES", DEFAULT_TASK_ROOT))


def fixture_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    """Every folder under ``root`` that holds a ``config.json``."""
    return sorted(p.parent for p in root.glob("*/config.json"))


def task_name(folder: pathlib.Path) -> str | None:
    """``task.name`` of a task fixture; None for a pretraining fixture."""
    return json.loads((folder / "config.json").read_text()).get("task", {}).get("name")


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
    task = meta.get("task", {}).get("name")
    # QA head outputs: the answers (qa) or one score per option (mc).
    overrides = {"num_qa_outputs": int(meta["task"]["num_labels"]) if task == "qa" else 1} if task in QA_TASKS \
        else {}
    cfg = model_config_from_reference(meta["config"], tuple(meta["hw"]), frames=meta.get("frames", 7), **overrides)
    with np.load(folder / "inputs.npz") as f:
        raw = {k: f[k] for k in f.files}
    inputs = dict(img_middle=np.moveaxis(raw["img_middle"], -3, -1).astype(np.float32),
                  img_other=np.moveaxis(raw["img_other"], -3, -1).astype(np.float32))
    for name in ("text_input_ids", "text_input_mask", "mlm_labels", "msrvtt_mc_text_input_ids",
                 "msrvtt_mc_text_input_mask"):
        if name in raw:
            inputs[name] = raw[name].astype(np.int32)
    if "labels" in raw:
        inputs["labels"] = raw["labels"].astype(np.int32)
    with np.load(folder / "outputs.npz") as f:
        outputs = {k: f[k] for k in f.files}
    grads = json.loads((folder / "grad_norms.json").read_text())
    return meta, cfg, inputs, outputs, grads


def loss_spec(meta: dict) -> tuple[str, float]:
    """(kind, setting) of the fixture's ``loss``: the retrieval task's (temperature), the QA / MC
    task's (clip aggregation), stage-1 InfoNCE (temperature) or the MLM loss."""
    if "task" in meta:
        name = meta["task"]["name"]
        if name in QA_TASKS:
            return name, meta["task"]["agg"]
        if name != "retrieval":
            raise ValueError(f"task {name!r} fixtures are not served here")
        return "retrieval", float(meta["task"]["temp"])
    return ("infonce", STAGE1_TEMPERATURE) if meta["stage"] == 1 else ("mlm", 0.0)


def fixture_loss(out: dict, kind: str, temperature: float) -> jax.Array:
    """The fixture's ``loss`` from our model outputs (see :func:`loss_spec`)."""
    if kind == "retrieval":
        return contrastive_loss(out["text_features"], out["video_features"], temperature, RETRIEVAL_DIRECTION_WEIGHT)[0]
    if kind == "infonce":
        return contrastive_loss(out["text_features"], out["video_features"], temperature)[0]
    return out["mlm_loss"]


MODEL_INPUTS = ("img_middle", "img_other", "text_input_ids", "text_input_mask", "mlm_labels")
QA_INPUTS = ("img_middle", "img_other", "text_input_ids", "text_input_mask")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def forward_and_grad(cfg: ModelConfig, stage: int, kind: str, temperature, variables: dict, inputs: dict):
    """Deterministic forward with intermediates, the loss, and its gradient w.r.t. all params.

    For ``qa`` / ``mc``, ``temperature`` is the clip aggregation (``task.agg``)."""
    model = HDVILA(cfg)
    if kind in QA_TASKS:
        batch = {k: v for k, v in inputs.items() if k in QA_INPUTS}

        def qa_loss_fn(params):
            logits, state = model.apply({**variables, "params": params}, batch, True, method=HDVILA.qa_logits,
                                        mutable=["intermediates"])
            loss, aux = qa_loss(logits, inputs["labels"], temperature)
            return loss, (dict(aux, logits=logits), state["intermediates"])

        (loss, (out, inter)), grads = jax.value_and_grad(qa_loss_fn, has_aux=True)(variables["params"])
        return dict(out, loss=loss), inter, grads
    batch = {k: v for k, v in inputs.items() if k in MODEL_INPUTS}

    def loss_fn(params):
        out, state = model.apply({**variables, "params": params}, batch, stage=stage, deterministic=True,
                                 mutable=["intermediates"])
        return fixture_loss(out, kind, temperature), (out, state["intermediates"])

    (loss, (out, inter)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return dict(out, loss=loss), inter, grads


@functools.partial(jax.jit, static_argnums=0)
def multiple_choice(cfg: ModelConfig, variables: dict, video_features: jax.Array, ids: jax.Array,
                    mask: jax.Array):
    """MSRVTT multiple choice: features of the ``[B, N, L]`` captions (rows b*N + i) and the ``[B, N]`` scores."""
    b, n, length = ids.shape
    _, text = HDVILA(cfg).apply(variables, ids.reshape(b * n, length), mask.reshape(b * n, length),
                                method=HDVILA.encode_text, mutable=["intermediates"])[0]
    return text, multiple_choice_scores(video_features, text.reshape(b, n, -1))


def _nchw(x):
    return np.moveaxis(x, -1, -3)


def _clip_major(x, batch: int, clips: int):
    """``[B*C, ...]`` example-major -> ``[C*B, ...]`` clip-major (the reference's stage-2 order)."""
    x = x.reshape(batch, clips, *x.shape[1:])
    return np.swapaxes(x, 0, 1).reshape(batch * clips, *x.shape[2:])


def _visual_in_reference_layout(flat: dict, b: int, c: int) -> dict[str, np.ndarray]:
    ours = dict(timesformer_in=np.moveaxis(flat["timesformer_in"], -1, 2),
                timesformer_out=np.moveaxis(flat["timesformer_out"], -1, 2))
    for name in ("hr_stage3", "hr_stage4", "hr_grid", "hr_stage3_down", "hr_stage3_down_grid", "lr_stage3",
                 "lr_grid", "middle_feature"):
        ours[name] = _nchw(flat[name])
    grid = flat["middle_feature"].reshape(b, c, *flat["middle_feature"].shape[1:])
    ours["transformer_visual_inputs"] = np.swapaxes(grid, 0, 1)[:, :, None]
    return ours


def qa_in_reference_layout(out: dict, inter: dict, meta: dict) -> dict[str, np.ndarray]:
    """Our QA / MC outputs and intermediates in the fixture's layout (R = B or B*C text rows)."""
    b, k = meta["batch"], meta["clips"]
    flat = {key[-1]: np.asarray(v[0]) for key, v in traverse_util.flatten_dict(jax.device_get(inter)).items()}
    out = {key: np.asarray(v) for key, v in jax.device_get(out).items()}
    head_in = flat["head_in"]  # [K, R, D]
    rows = head_in.shape[1]
    ours = dict(logits=out["logits"], agg_logits=out["agg_logits"], pred=out["pred"],
                loss_per_example=out["loss_per_example"], loss=out["loss"], head_in=head_in,
                pooled2=head_in.reshape(k * rows, -1), head_hidden=flat["head_hidden"],
                text_embeddings=flat["text_embeddings"], text_seq_stage1=flat["text_seq_stage1"],
                visual_tokens=_clip_major(flat["visual_tokens"], rows, k),
                **_visual_in_reference_layout(flat, b, k))
    for name, value in flat.items():
        if name.startswith("bert_layer"):
            text_layer = int(name[len("bert_layer"):]) < meta["config"]["num_hidden_layers"] // 2
            ours[name] = value if text_layer else _clip_major(value, rows, k)
    return ours


def ours_in_reference_layout(out: dict, inter: dict, meta: dict, stage: int) -> dict[str, np.ndarray]:
    """Our outputs and intermediates, named and laid out like the fixture's ``outputs.npz``."""
    if meta.get("task", {}).get("name") in QA_TASKS:
        return qa_in_reference_layout(out, inter, meta)
    b, c = meta["batch"], meta["clips"]
    flat = {k[-1]: np.asarray(v[0]) for k, v in traverse_util.flatten_dict(jax.device_get(inter)).items()}
    out = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
    ours = dict(text_features=out["text_features"], vis_features=out["video_features"], loss=out["loss"],
                sim_t2v=out["text_features"] @ out["video_features"].T,
                text_embeddings=flat["text_embeddings"], text_seq_stage1=flat["text_seq_stage1"],
                text_pooled=flat["text_pooled"], vis_pooled=flat["vis_pooled"],
                **_visual_in_reference_layout(flat, b, c))
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
    out, inter, grads = forward_and_grad(cfg, stage, *loss_spec(meta), variables, inputs)
    ours = ours_in_reference_layout(out, inter, meta, stage)
    if "msrvtt_mc_text_input_ids" in inputs:
        text, scores = multiple_choice(cfg, variables, out["video_features"], inputs["msrvtt_mc_text_input_ids"],
                                       inputs["msrvtt_mc_text_input_mask"])
        ours.update(msrvtt_mc_text_features=np.asarray(text), msrvtt_mc_scores=np.asarray(scores),
                    msrvtt_mc_pred=np.asarray(scores).argmax(axis=1))
    return meta, ours, ref_out, grad_norms_by_torch_name(grads, cfg, stage), ref_grads


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
        if name in EXACT:
            np.testing.assert_array_equal(ours[name], value, err_msg=name)
            continue
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
    atol = GRAD_ATOL_FRACTION * largest
    bad = {k: (ours[k], n) for k, n in ref_norms.items() if abs(ours[k] - n) > GRAD_RTOL * n + atol}
    assert not bad, f"{folder.name}: gradient norms (ours, reference) beyond {GRAD_RTOL} * ref + {atol:.1e}: {bad}"
    # Reported: the worst relative error where the relative term dominates the tolerance.
    errors = {k: abs(ours[k] - n) / n for k, n in ref_norms.items() if GRAD_RTOL * n > atol}
    worst = max(errors, key=errors.get)
    print(f"\n{folder.name}: worst gradient-norm relative error {errors[worst]:.2e} ({worst})")
    return errors[worst]
