"""Parity fixtures (format: docs/fidelity.md §17) made by the PyTorch port of the original HD-VILA.

    python -m reference.make_fixture --out DIR --stage 2 --hw 128 192 --batch 2 --clips 2 \
        --seq 12 --resnet-depth 18 --score-agg mean --bert-mean 0 --seed 3
    python -m reference.make_fixture --out DIR --task retrieval --frames 11 --batch 4 --clips 3
    python -m reference.make_fixture --out DIR --task qa --score-agg mean --answers 11 --clips 3
    python -m reference.make_fixture --out DIR --task mc --score-agg lse --answers 5
    python -m reference.make_fixture --check $HDVILA_PARITY_FIXTURES/stage1_tiny   # port vs a fixture

``--task`` writes a downstream task fixture (the task format of docs/fidelity.md §17, no ResNet stage maps):
``retrieval`` (stage 1, the retrieval loss at temperature 0.08, the MSRVTT multiple-choice inputs and outputs);
``qa`` / ``mc`` (the stage-2 video QA models, ``--answers`` answers or choices, the training loop's loss with
the clip aggregation ``--score-agg``, the original's ``score_agg_func``).

A fixture folder's weights are rebuilt by the ``recipe.py`` in its parent directory, so ``make_fixture``
copies the shared ``recipe.py`` next to the folder it writes.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import pathlib
import shutil
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from reference.model import (HDVILA, HDVILAForMultipleChoice, HDVILAForPreTraining,
                                         HDVILAForSequenceClassification, make_config, make_qa_config, recording)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_RECIPE = pathlib.Path(os.environ.get("HDVILA_FIXTURE_RECIPE",
                                            REPO.parent / "shared" / "fixtures" / "recipe.py"))
STAGE1_TEMPERATURE = 0.05
# Retrieval fine-tuning (run_video_retrieval.py): NCEContrastiveLoss at loss_config.temp, MSRVTT-MC options.
RETRIEVAL_TEMPERATURE, MSRVTT_MC_CHOICES = 0.08, 5
RETRIEVAL_TASK = dict(name="retrieval", script="src/tasks/run_video_retrieval.py (setup_model, start_training)",
                      model_class="HDVILAForPreTraining", stage=1,
                      loss="NCEContrastiveLoss: S = vis_features @ text_features^T / temp; CE(S, arange) + "
                           "CE(S^T, arange), each averaged over rows, summed (no 0.5)",
                      temp=RETRIEVAL_TEMPERATURE, msrvtt_mc_choices=MSRVTT_MC_CHOICES)
# Video QA (run_video_qa.py): open-ended (qa) and multiple choice (mc, TGIF Action / Transition).
QA_LOSS = ("clip aggregation + softmax CE over {}, batch mean (lse: logsumexp_{{k,c}} z - logsumexp_k z[k, label]; "
           "mean/max: CE on the clip mean/max)")
QA_SCRIPT = "src/tasks/run_video_qa.py (setup_model, start_training, validate)"
QA_TASKS = dict(qa=dict(name="qa", script=QA_SCRIPT, model_class="HDVILAForSequenceClassification", stage=2,
                        loss=QA_LOSS.format("num_labels")),
                mc=dict(name="mc", script=QA_SCRIPT + ", task action/transition", model_class="HDVILAForMultipleChoice",
                        stage=2, loss=QA_LOSS.format("the choices")))
TRANSFORMER_CLS = dict(qa=HDVILAForSequenceClassification, mc=HDVILAForMultipleChoice)
QA_AGGREGATIONS = ("mean", "max", "lse")
# Task fixtures leave out the large ResNet stage maps (the pretraining fixtures cover them).
TASK_OMITTED_OUTPUTS = ("hr_stage3", "hr_stage4", "lr_stage3")
MODEL_INPUTS = ("img_middle", "img_other", "text_input_ids", "text_input_mask", "mlm_labels")
TASK_STAGE = dict(retrieval=1, qa=2, mc=2)
ALIASES = {"transformer.cls.predictions.decoder.bias": "transformer.cls.predictions.bias"}
# A fixture whose float32 values are further than this from the same computation in float64 is refused:
# a quarter of the parity test's tolerances (outputs 1e-4, gradient L2 norms 1e-3), so that the reference's
# own round-off cannot decide whether a correct float32 implementation passes.
FRAGILE_OUTPUT_RTOL, FRAGILE_GRAD_RTOL = 2.5e-5, 2.5e-4
CLS_ID, MASK_ID, PAD_ID, FIRST_WORD_ID = 101, 103, 0, 104
# The shared fixtures' "tiny" preset.
TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, timesformer_depth=2, timesformer_heads=4)


def load_recipe(path: os.PathLike = SHARED_RECIPE):
    spec = importlib.util.spec_from_file_location("fixture_recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def make_text(rng: np.random.Generator, rows: int, seq: int, vocab_size: int):
    """[CLS]-led token ids and mask: row 0 is full length, the others (or row 0 alone, if it is the only
    one) are padded. Returns (ids, mask, lengths)."""
    lengths = [seq] + [int(rng.integers(max(2, seq // 3), seq)) for _ in range(rows - 1)]
    if rows == 1:
        lengths = [max(2, seq - 3)]
    mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = rng.integers(FIRST_WORD_ID, vocab_size, (rows, seq)).astype(np.int64)
    ids[:, 0] = CLS_ID
    ids[mask == 0] = PAD_ID
    return ids, mask, lengths


def make_inputs(stage: int, hw, batch: int, clips: int, seq: int, vocab_size: int, input_seed: int,
                frames: int = 7, task: str | None = None, answers: int = 0):
    """Random 0..255 integer-valued frames (1 HR + ``frames - 1`` LR per clip), [CLS]-led token ids with
    padding, and per ``task``: none, stage-2 MLM labels; ``retrieval``, MSRVTT-MC captions per video; ``qa``,
    labels in [0, ``answers``); ``mc``, ``answers`` texts per video ([B, answers, L]) and the labels."""
    h, w = hw
    rng = np.random.default_rng(input_seed)
    inputs = dict(img_middle=rng.integers(0, 256, (batch, clips, 3, h, w)).astype(np.float32),
                  img_other=rng.integers(0, 256, (batch, clips, frames - 1, 3, h // 4, w // 4)).astype(np.float32))
    if task in QA_TASKS:
        rows = batch * answers if task == "mc" else batch
        ids, mask, _ = make_text(rng, rows, seq, vocab_size)
        if task == "mc":
            ids, mask = ids.reshape(batch, answers, seq), mask.reshape(batch, answers, seq)
        return dict(inputs, text_input_ids=ids, text_input_mask=mask,
                    labels=rng.integers(0, answers, batch).astype(np.int64))
    ids, mask, lengths = make_text(rng, batch, seq, vocab_size)
    inputs.update(text_input_ids=ids, text_input_mask=mask)
    if stage == 2:
        labels = np.full((batch, seq), -100, np.int64)
        for row, n in enumerate(lengths):
            picked = np.flatnonzero(rng.random(n - 1) < 0.15) + 1
            if picked.size == 0:
                picked = np.array([int(rng.integers(1, n))])
            labels[row, picked] = ids[row, picked]
            for pos in picked:  # BERT's 80 / 10 / 10
                u = rng.random()
                if u < 0.8:
                    ids[row, pos] = MASK_ID
                elif u < 0.9:
                    ids[row, pos] = int(rng.integers(FIRST_WORD_ID, vocab_size))
        inputs["mlm_labels"] = labels
    if task == "retrieval":
        ids, mask, _ = make_text(rng, batch * MSRVTT_MC_CHOICES, seq, vocab_size)
        inputs.update(msrvtt_mc_text_input_ids=ids.reshape(batch, MSRVTT_MC_CHOICES, seq),
                      msrvtt_mc_text_input_mask=mask.reshape(batch, MSRVTT_MC_CHOICES, seq),
                      msrvtt_mc_answer=rng.integers(0, MSRVTT_MC_CHOICES, batch).astype(np.int64))
    return inputs


def build_model(config: dict, stage: int, state_dict: dict[str, np.ndarray] | None, task: str | None = None) -> HDVILA:
    """The original's model for ``task`` (its ``transformer_cls``) in eval mode, with ``state_dict`` if given."""
    model = HDVILA(config, stage=stage, transformer_cls=TRANSFORMER_CLS.get(task, HDVILAForPreTraining))
    if state_dict is not None:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, strict=True)
    return model.eval()


def msrvtt_multiple_choice(model: HDVILA, vis_features: torch.Tensor, ids: np.ndarray, mask: np.ndarray):
    """The MSRVTT-MC evaluation: features of the [B, N, L] captions (rows b*N + i), scores [B, N], argmax."""
    b, n, length = ids.shape
    _, text = model.transformer.encode_text(torch.from_numpy(ids.reshape(b * n, length)),
                                            torch.from_numpy(mask.reshape(b * n, length)))
    scores = torch.einsum("bd,bnd->bn", vis_features, text.view(b, n, -1))
    return dict(msrvtt_mc_text_features=text, msrvtt_mc_scores=scores, msrvtt_mc_pred=scores.argmax(dim=1))


def video_qa_loss(logits: torch.Tensor, labels: torch.Tensor, agg: str) -> dict[str, torch.Tensor]:
    """run_video_qa.py's clip aggregation (``validate``) and training loss (``start_training``) of [K, B, C]
    logits: ``agg_logits``, ``pred``, ``loss_per_example``, ``loss``."""
    per_clip = logits.permute(1, 0, 2).contiguous()  # (B, K, C)
    if agg == "mean":
        agg_logits = logits.mean(0)
    elif agg == "max":
        agg_logits = logits.max(0)[0]
    elif agg == "lse":
        agg_logits = torch.logsumexp(per_clip, dim=1)
    else:
        raise ValueError(f"agg must be one of {QA_AGGREGATIONS}, got {agg!r}")
    if agg == "lse":
        out = torch.logsumexp(per_clip.view(per_clip.shape[0], -1), dim=-1, keepdim=True) - agg_logits
        per_example = torch.gather(out, -1, labels.view(-1, 1))[:, 0]
    else:
        per_example = F.cross_entropy(agg_logits, labels, reduction="none")  # calc_loss, loss_type "ce"
    return dict(agg_logits=agg_logits, pred=agg_logits.argmax(dim=-1), loss_per_example=per_example,
                loss=per_example.mean())


def run_reference(model: HDVILA, inputs: dict[str, np.ndarray], dtype=np.float32, task: dict | None = None):
    """One eval-mode forward + backward of the loss (the stage loss, or that of ``task``, a fixture's ``task``
    object): (outputs by fixture name, grad_norms.json dict)."""
    model.zero_grad(set_to_none=True)
    kind = task["name"] if task else None
    torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items() if k in MODEL_INPUTS}
    if kind == "mc":  # VideoQACollator: the options of question b are text rows b * C + i
        for k in ("text_input_ids", "text_input_mask"):
            torch_inputs[k] = torch_inputs[k].flatten(0, 1)
    with recording() as taps:
        out = model(**torch_inputs)
    if kind is not None:
        for name in TASK_OMITTED_OUTPUTS:
            del taps[name]
    if kind in QA_TASKS:
        results = dict(logits=out["logits"],
                       **video_qa_loss(out["logits"], torch.from_numpy(inputs["labels"]), task["agg"]))
        loss = results["loss"]
    elif kind == "retrieval":
        sim = torch.matmul(out["vis_features"], out["text_features"].permute(1, 0)) / RETRIEVAL_TEMPERATURE
        labels = torch.arange(sim.shape[0])
        loss = F.cross_entropy(sim, labels) + F.cross_entropy(sim.permute(1, 0), labels)
        results = dict(text_features=out["text_features"], vis_features=out["vis_features"],
                       sim_t2v=torch.matmul(out["text_features"], out["vis_features"].permute(1, 0)), loss=loss)
        with torch.no_grad():
            results.update(msrvtt_multiple_choice(model, out["vis_features"], inputs["msrvtt_mc_text_input_ids"],
                                                  inputs["msrvtt_mc_text_input_mask"]))
    elif kind is not None:
        raise ValueError(f"unknown task {kind!r}")
    elif model.stage == 1:
        t2v = torch.matmul(out["text_features"], out["vis_features"].permute(1, 0)) / STAGE1_TEMPERATURE
        labels = torch.arange(t2v.shape[0])
        loss = 0.5 * (F.cross_entropy(t2v, labels) + F.cross_entropy(t2v.permute(1, 0), labels)).mean()
        results = dict(text_features=out["text_features"], vis_features=out["vis_features"], loss=loss)
    else:
        loss = out["mlm_loss"]
        results = dict(text_features=out["text_features"], vis_features=out["vis_features"],
                       mlm_loss=out["mlm_loss"], mlm_acc=out["mlm_acc"], vtoken_output=out["vtoken_output"],
                       loss=loss)
    results.update(taps)
    loss.backward()
    with_grad, without_grad = {}, []
    for name, p in model.named_parameters():
        if p.grad is None:
            without_grad.append(name)
        else:
            g = p.grad.detach().double()
            with_grad[name] = [float(g.norm()), float(g.sum())]
    outputs = {k: np.asarray(v.detach().numpy(), dtype if v.is_floating_point() else None)
               for k, v in results.items()}
    return outputs, dict(loss=float(loss.detach()), l2_and_sum=with_grad, params_without_grad=without_grad)


class FragileFixtureError(ValueError):
    """The float32 reference is not reproducible to the parity tolerances even by the reference itself."""


def roundoff(model: HDVILA, inputs: dict[str, np.ndarray], outputs: dict, grads: dict, perturbed_runs: int = 2,
             task: dict | None = None):
    """How fragile a float32 reference is: (worst output relative error vs float64, worst gradient-L2 relative
    error vs float64 over parameters above 1e-6 of the largest norm, their names).

    The gradient error is the worst of this float32 run and ``perturbed_runs`` float32 runs on frames scaled by
    1 + 1e-7 * noise (about one float32 ulp), the size of the round-off differences between two correct float32
    implementations. A ReLU input (or a max-pool / max-over-clips pair) that close to its kink takes either
    branch depending on round-off; with random weights one such flip can move a backbone gradient norm by
    ~1e-3, so a fixture where that happens cannot tell a correct implementation from a wrong one.
    """
    inputs64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in inputs.items()}
    out64, grads64 = run_reference(copy.deepcopy(model).double(), inputs64, np.float64, task)
    runs = [grads]
    rng = np.random.default_rng(0)
    for _ in range(perturbed_runs):
        noisy = dict(inputs)
        for k in ("img_middle", "img_other"):
            noisy[k] = (inputs[k] * (1 + 1e-7 * rng.standard_normal(inputs[k].shape))).astype(np.float32)
        runs.append(run_reference(model, noisy, task=task)[1])

    def rel(a, b):
        n = np.linalg.norm(b)
        return float(np.linalg.norm(np.asarray(a, np.float64) - b) / n) if n > 0 else float(np.abs(a).max())

    out_err = {k: rel(outputs[k], out64[k]) for k in out64}
    norms64 = {k: v[0] for k, v in grads64["l2_and_sum"].items()}
    floor = 1e-6 * max(norms64.values(), default=0.0)
    grad_err = {k: max(abs(r["l2_and_sum"][k][0] - n) for r in runs) / n
                for k, n in norms64.items() if n > floor and n > 0}
    worst_out = max(out_err, key=out_err.get)
    worst_grad = max(grad_err, key=grad_err.get, default=None)
    return out_err[worst_out], grad_err.get(worst_grad, 0.0), worst_out, worst_grad


def make_fixture(out: os.PathLike, *, stage: int | None = None, hw=(128, 192), batch: int = 2, clips: int = 2,
                 seq: int = 12, resnet_depth: int = 50, score_agg: str = "lse", bert_mean: int = 1, seed: int = 0,
                 input_seed: int | None = None, preset: str = "tiny", recipe_path: os.PathLike = SHARED_RECIPE,
                 check_roundoff: bool = True, verbose: bool = False, task: str | None = None, frames: int = 7,
                 answers: int = 5, **config_overrides) -> pathlib.Path:
    """Write one fixture folder ``out`` (config.json, weights.json, inputs.npz, outputs.npz, grad_norms.json).

    ``task`` (``retrieval``, ``qa`` or ``mc``) writes a downstream task fixture (``config.json`` gets the ``task``
    object; ``stage`` defaults to the task's, else to 1). ``frames`` is F, the frames per clip (1 HR + F - 1 LR).
    qa / mc: ``answers`` is C, the answers (``num_labels``) or choices, and ``score_agg`` the clip aggregation
    of the logits (the model config has no ``score_agg_func`` or ``bert_mean`` then).

    With ``check_roundoff`` the float32 reference is also run in float64 and refused (:class:`FragileFixtureError`,
    nothing written) if its outputs or gradient L2 norms differ by more than ``FRAGILE_OUTPUT_RTOL`` /
    ``FRAGILE_GRAD_RTOL`` relative; pick another seed then.
    """
    h, w = hw
    if h % 64 or w % 64:
        raise ValueError(f"frame size {hw}: both sides must be multiples of 64")
    if task is not None and task not in TASK_STAGE:
        raise ValueError(f"task must be one of {tuple(TASK_STAGE)}, got {task!r}")
    stage = TASK_STAGE.get(task, 1) if stage is None else stage
    if task is not None and stage != TASK_STAGE[task]:
        raise ValueError(f"task {task!r} is a stage-{TASK_STAGE[task]} model, not stage {stage}")
    if task in QA_TASKS and (score_agg not in QA_AGGREGATIONS or answers < 2):
        raise ValueError(f"task {task!r} needs score_agg in {QA_AGGREGATIONS} and answers >= 2")
    if stage == 1 and batch < 2:
        warnings.warn("stage 1 with batch 1: InfoNCE over a single pair is identically 0, so is every gradient")
    out = pathlib.Path(out)
    input_seed = seed + 1 if input_seed is None else input_seed
    if task == "retrieval":
        config_overrides = dict(config_overrides, bert_frozen_stage=-1)
        task_meta = dict(RETRIEVAL_TASK, frames=frames)
    elif task in QA_TASKS:
        task_meta = dict(QA_TASKS[task], frames=frames, agg=score_agg,
                         **{"num_labels" if task == "qa" else "num_choices": answers})
    else:
        task_meta = None
    base = dict(TINY if preset == "tiny" else {}, **config_overrides)
    if task in QA_TASKS:
        config = make_qa_config(answers, **base, resnet_depth=resnet_depth, stage=stage)
    else:
        config = make_config(**base, resnet_depth=resnet_depth, score_agg_func=score_agg, bert_mean=int(bert_mean),
                             stage=stage)
    recipe = load_recipe(recipe_path)
    model = build_model(config, stage, None, task)
    named_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    weights = recipe.make_recipe(named_shapes, seed, ALIASES)
    model = build_model(config, stage, recipe.draw(weights["tensors"], weights["seed"]), task)
    inputs = make_inputs(stage, hw, batch, clips, seq, config["vocab_size"], input_seed, frames, task, answers)
    outputs, grads = run_reference(model, inputs, task=task_meta)
    if check_roundoff:
        out_err, grad_err, worst_out, worst_grad = roundoff(model, inputs, outputs, grads, task=task_meta)
        report = (f"{out.name}: float32 reference (and perturbed reruns) vs float64: outputs {out_err:.1e} ({worst_out}), "
                  f"gradient L2 norms {grad_err:.1e} ({worst_grad})")
        if verbose:
            print(report)
        if out_err > FRAGILE_OUTPUT_RTOL or grad_err > FRAGILE_GRAD_RTOL:
            raise FragileFixtureError(f"{report} over {FRAGILE_OUTPUT_RTOL:.1e} / {FRAGILE_GRAD_RTOL:.1e}: "
                                      "the fixture is fragile, try another seed")

    out.mkdir(parents=True, exist_ok=True)
    meta = dict(stage=stage, preset=preset, config=config, hw=[h, w], batch=batch, clips=clips, seq=seq,
                frames=frames, seed=seed, input_seed=input_seed, torch=torch.__version__, mode="eval",
                inputs={k: list(v.shape) for k, v in inputs.items()},
                outputs={k: list(v.shape) for k, v in outputs.items()},
                n_state_dict=len(named_shapes), n_params=sum(p.numel() for p in model.parameters()),
                grads=dict(loss=grads["loss"], n_with_grad=len(grads["l2_and_sum"]),
                           params_without_grad=grads["params_without_grad"]),
                source="PyTorch port of the original HD-VILA model (reference), eval mode "
                       "(no dropout, no drop-path, no token sampling), weights from weights.json")
    if task_meta:
        meta["task"] = task_meta
    (out / "config.json").write_text(json.dumps(meta, indent=1))
    (out / "weights.json").write_text(json.dumps(weights))
    (out / "grad_norms.json").write_text(json.dumps(grads))
    np.savez(out / "inputs.npz", **inputs)
    np.savez(out / "outputs.npz", **outputs)
    if not (out.parent / "recipe.py").exists():
        shutil.copyfile(recipe_path, out.parent / "recipe.py")
    return out


def _load(folder: pathlib.Path):
    """(model, inputs, ``task`` object or None) of a fixture folder."""
    meta = json.loads((folder / "config.json").read_text())
    recipe_path = folder.parent / "recipe.py"
    recipe = load_recipe(recipe_path if recipe_path.exists() else SHARED_RECIPE)
    task = meta.get("task")
    model = build_model(meta["config"], meta["stage"], recipe.rebuild_state_dict(str(folder)),
                        task and task["name"])
    with np.load(folder / "inputs.npz") as f:
        inputs = {k: f[k] for k in f.files}
    return model, inputs, task


def fixture_roundoff(folder: os.PathLike):
    """:func:`roundoff` of an existing fixture folder (its float32 outputs and gradients as stored)."""
    folder = pathlib.Path(folder)
    model, inputs, task = _load(folder)
    with np.load(folder / "outputs.npz") as f:
        outputs = {k: f[k] for k in f.files}
    return roundoff(model, inputs, outputs, json.loads((folder / "grad_norms.json").read_text()), task=task)


def reproduce_fixture(folder: os.PathLike):
    """Rerun the port on a fixture's own weights and inputs: (output rel. errors, per parameter
    (|L2 diff|, |sum diff|, reference L2), loss rel. error, whether ``params_without_grad`` agree)."""
    folder = pathlib.Path(folder)
    model, inputs, task = _load(folder)
    ours, grads = run_reference(model, inputs, task=task)
    with np.load(folder / "outputs.npz") as f:
        ref = {k: f[k] for k in f.files}
    ref_grads = json.loads((folder / "grad_norms.json").read_text())

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        d = np.linalg.norm(a - b)
        return float(d / np.linalg.norm(b)) if np.linalg.norm(b) > 0 else float(d)

    missing = sorted(set(ref) ^ set(ours))
    if missing:
        raise AssertionError(f"output names differ: {missing}")
    shape_diff = {k: (ours[k].shape, ref[k].shape) for k in ref if ours[k].shape != ref[k].shape}
    if shape_diff:
        raise AssertionError(f"output shapes differ: {shape_diff}")
    out_err = {k: rel(ours[k], ref[k]) for k in ref}
    # Per parameter: (|L2 difference|, |sum difference|, reference L2), judged by the caller.
    grad_err = {k: (abs(grads["l2_and_sum"][k][0] - v[0]), abs(grads["l2_and_sum"][k][1] - v[1]), abs(v[0]))
                for k, v in ref_grads["l2_and_sum"].items()}
    same_without = grads["params_without_grad"] == ref_grads["params_without_grad"] and \
        set(grads["l2_and_sum"]) == set(ref_grads["l2_and_sum"])
    return out_err, grad_err, rel(grads["loss"], ref_grads["loss"]), same_without


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", nargs="+", metavar="FIXTURE", help="only compare the port with existing fixtures")
    p.add_argument("--out")
    p.add_argument("--stage", type=int, choices=(1, 2), help="default: the task's, else 1")
    p.add_argument("--hw", type=int, nargs=2, default=(128, 192), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--seq", type=int, default=12)
    p.add_argument("--frames", type=int, default=7, help="F, frames per clip (1 HR + F-1 LR)")
    p.add_argument("--task", choices=tuple(TASK_STAGE), help="write a downstream task fixture")
    p.add_argument("--answers", type=int, default=5, help="qa: num_labels; mc: choices per question")
    p.add_argument("--resnet-depth", type=int, default=50, choices=(18, 34, 50, 101, 152))
    p.add_argument("--score-agg", default="lse", choices=QA_AGGREGATIONS,
                   help="stage-2 score_agg_func, or the qa / mc clip aggregation")
    p.add_argument("--bert-mean", type=int, default=1, choices=(0, 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-seed", type=int)
    p.add_argument("--hidden", type=int, help="hidden_size (default: the tiny preset's 64)")
    p.add_argument("--layers", type=int, help="num_hidden_layers (even; default 4)")
    p.add_argument("--heads", type=int, help="num_attention_heads (default 4)")
    p.add_argument("--intermediate", type=int, help="intermediate_size (default 128)")
    p.add_argument("--vocab", type=int, help="vocab_size (default 1000)")
    p.add_argument("--timesformer-depth", type=int)
    p.add_argument("--timesformer-heads", type=int)
    p.add_argument("--no-roundoff-check", action="store_true",
                   help="skip the float64 rerun that refuses fragile fixtures")
    a = p.parse_args(argv)
    if a.check:
        for folder in a.check:
            out_err, grad_err, loss_err, same = reproduce_fixture(folder)
            worst = max(out_err, key=out_err.get)
            worst_l2 = max(grad_err, key=lambda k: grad_err[k][0] / max(grad_err[k][2], 1e-30))
            worst_sum = max(grad_err, key=lambda k: grad_err[k][1] / max(grad_err[k][2], 1e-30))
            print(f"{folder}: outputs worst {out_err[worst]:.2e} ({worst}); loss {loss_err:.2e}; grad L2 worst "
                  f"{grad_err[worst_l2][0] / grad_err[worst_l2][2]:.2e} ({worst_l2}); grad sum worst "
                  f"{grad_err[worst_sum][1] / grad_err[worst_sum][2]:.2e} (x L2, {worst_sum}); "
                  f"params with/without grad agree: {same}")
            r = fixture_roundoff(folder)
            print(f"  its float32 values (and perturbed reruns) vs float64: outputs {r[0]:.1e} ({r[2]}), gradient L2 {r[1]:.1e} ({r[3]})")
        return
    if not a.out:
        p.error("--out is required")
    overrides = {k: v for k, v in dict(hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
                                       intermediate_size=a.intermediate, vocab_size=a.vocab,
                                       timesformer_depth=a.timesformer_depth,
                                       timesformer_heads=a.timesformer_heads).items() if v is not None}
    folder = make_fixture(a.out, stage=a.stage, hw=tuple(a.hw), batch=a.batch, clips=a.clips, seq=a.seq,
                          resnet_depth=a.resnet_depth, score_agg=a.score_agg, bert_mean=a.bert_mean, seed=a.seed,
                          input_seed=a.input_seed, check_roundoff=not a.no_roundoff_check,
                          verbose=True, task=a.task, frames=a.frames, answers=a.answers, **overrides)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
