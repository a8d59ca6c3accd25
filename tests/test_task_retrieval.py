"""Retrieval fine-tuning on the one trainer: init from a stage-2 checkpoint (stage-1 part taken,
the rest dropped), the summed InfoNCE, epochs -> steps, step-0 zero-shot eval, the best
checkpoint, and eval mode on any checkpoint."""
import json
import math
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import retrieval
from hdvila_jax import eval_only, variables_io
from hdvila_jax.losses import contrastive_loss
from hdvila_jax.models import HDVILA, model_config_from_dict
from hdvila_jax.models.variables import init_variables
from hdvila_jax.tasks import get_task
from hdvila_jax.tasks.retrieval import RETRIEVAL_DIRECTION_WEIGHT, multiple_choice_accuracy, multiple_choice_scores
from hdvila_jax.train import trainer
from hdvila_jax.tasks.base import TrainConfigError
from hdvila_jax.train.recipe import resolve_epochs
from tests import train_helpers
from tests.model_helpers import relative_error


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _config(root: str, **overrides):
    config = retrieval.get_config("tiny")
    config.data.train_files = os.path.join(root, "records", "train-*.tfrecord")
    config.data.val_files = os.path.join(root, "records", "val-*.tfrecord")
    config.data.vocab_file = os.path.join(root, "vocab.txt")
    return train_helpers.apply_overrides(config, overrides)


@pytest.fixture(scope="module")
def stage2_checkpoint(tmp_path_factory):
    """A random stage-2 variables checkpoint of the tiny model (what the converter writes)."""
    cfg = model_config_from_dict(retrieval.get_config("tiny").model.to_dict())
    variables = init_variables(cfg, jax.random.PRNGKey(7), stage=2)
    path = str(tmp_path_factory.mktemp("converted") / "stage2")
    variables_io.save_variables(path, variables)
    return path, variables


def test_retrieval_loss_sums_both_directions_and_task_dispatch():
    rng = np.random.default_rng(0)
    text, video = (rng.normal(size=(6, 8)).astype(np.float32) for _ in range(2))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    logits = video @ text.T / 0.08
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    log_softmax_t = logits.T - np.log(np.exp(logits.T).sum(1, keepdims=True))
    expected = -np.diag(log_softmax).mean() - np.diag(log_softmax_t).mean()
    np.testing.assert_allclose(float(contrastive_loss(text, video, 0.08, RETRIEVAL_DIRECTION_WEIGHT)[0]), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(float(contrastive_loss(text, video, 0.08)[0]), expected / 2, rtol=1e-5)
    task = get_task(retrieval.get_config("tiny"))
    assert (task.name, task.stage, task.direction_weight, task.temperature) == ("retrieval", 1, 1.0, 0.08)
    np.testing.assert_allclose(float(task.contrastive_loss(text, video)[0]), expected, rtol=1e-5)


def test_multiple_choice_scores_and_accuracy_on_a_constructed_case():
    video = np.eye(3, 4, dtype=np.float32)  # video b points along axis b
    options = np.zeros((3, 5, 4), np.float32)
    options[0, 2, 0] = 1.0  # video 0: option 2 matches
    options[1, 4, 1] = 1.0  # video 1: option 4 matches
    options[2, 0, 2], options[2, 1, 2] = 0.5, 0.9  # video 2: option 1 scores highest
    scores = np.asarray(multiple_choice_scores(video, options))
    np.testing.assert_allclose(scores[2], [0.5, 0.9, 0, 0, 0])
    assert scores.argmax(1).tolist() == [2, 4, 1]
    assert multiple_choice_accuracy(scores, np.array([2, 4, 0])) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="answers"):
        multiple_choice_accuracy(scores, np.array([1, 2]))


def test_multi_clip_video_feature_is_the_hand_computed_aggregation():
    """K clips -> v_proj(mean of the K grids over clips, rows and columns), then L2 normalisation."""
    config = retrieval.get_config("tiny")
    cfg = model_config_from_dict(config.model.to_dict())
    model = HDVILA(cfg)
    variables = init_variables(cfg, jax.random.PRNGKey(3), stage=1)
    batch = train_helpers.synthetic_batch(config, batch_size=2, seed=4, clips=3)
    _, features = model.apply(variables, batch["img_middle"], batch["img_other"], True, method=HDVILA.encode_video)
    grids = [model.apply(variables, batch["img_middle"][:, k:k + 1], batch["img_other"][:, k:k + 1], True,
                         method=HDVILA.encode_video)[0] for k in range(3)]
    pooled = np.mean([np.asarray(g).mean(axis=(1, 2, 3)) for g in grids], axis=0)
    projected = model.apply(variables, pooled, method=lambda m, x: m.contrastive.video_proj(x))
    expected = np.asarray(projected) / np.linalg.norm(projected, axis=1, keepdims=True)
    assert relative_error(np.asarray(features), expected) < 1e-5
    single = model.apply(variables, batch["img_middle"][:, :1], batch["img_other"][:, :1], True,
                         method=HDVILA.encode_video)[1]
    assert relative_error(np.asarray(single), expected) > 1e-3  # the clips really differ


def test_recipes_follow_the_original():
    for name, (frames, clips, batch, epochs, lr, warmup) in {
            "msrvtt": (7, (2, 4), 64, 200, (1e-5, 1e-5, 5e-6), 0.01),
            "didemo": (11, (4, 8), 32, 100, (5e-6,) * 3, 0.1),
            "lsmdc": (11, (2, 4), 64, 20, (5e-6,) * 3, 0.01),
            "actnet": (13, (4, 8), 32, 100, (5e-6,) * 3, 0.1)}.items():
        config = retrieval.get_config(name)
        assert (config.task, config.stage, config.temperature) == ("retrieval", 1, 0.08)
        assert config.model.num_frames == frames and "num_frm" not in config.data
        assert (config.data.train_n_clips, config.data.inference_n_clips) == clips
        assert (config.batch_size, config.epochs, config.optimizer.warmup_ratio) == (batch, epochs, warmup)
        groups = config.optimizer.groups
        assert (groups.transformer.lr, groups.cnn.lr, groups.align.lr) == lr
        assert config.optimizer.frozen == ""  # nothing frozen in fine-tuning
    assert retrieval.get_config("didemo").optimizer.groups.cnn.weight_decay == 0.1
    assert retrieval.get_config("msrvtt").optimizer.decay_milestone_epochs == (32, 64, 128, 256)


def test_epochs_become_steps_and_milestones(demo_root):
    config = resolve_epochs(_config(demo_root, epochs=2.5, total_steps=0, batch_size=4,
                                    **{"optimizer.decay_milestone_epochs": (1, 2)}))
    assert config.total_steps == math.ceil(2.5 * 16 / 4)  # 16 demo training videos
    assert config.optimizer.decay_milestones == (4.0, 8.0)


def test_fine_tune_from_stage2_checkpoint_then_eval_any_checkpoint(demo_root, stage2_checkpoint, tmp_path, caplog):
    source, source_variables = stage2_checkpoint
    config = _config(demo_root, total_steps=3, eval_every_steps=2, **{
        "init.restore": source, "data.mc_files": os.path.join(demo_root, "records", "mc_test-*.tfrecord")})
    workdir = str(tmp_path / "run")
    with caplog.at_level("INFO"):
        trainer.train_and_evaluate(config, workdir)
    log = caplog.text
    assert "took ['contrastive', 'text', 'video']" in log and "params/fusion" in log and "params/heads" in log

    evals = {step: {k[len("eval/"):]: v for k, v in row.items()}
             for step, row in train_helpers.read_metrics(workdir, prefix="eval/").items()}
    assert sorted(evals) == [0, 2, 3]  # zero-shot at step 0, every eval_every_steps, at the end
    for metrics in evals.values():
        assert {"t2v_R1", "t2v_R5", "t2v_R10", "t2v_R50", "t2v_MedR", "t2v_MeanR", "v2t_R1", "v2t_MedR"} <= set(metrics)
        assert metrics["num_videos"] == 8 and metrics["mc_questions"] == 8
        assert metrics["mc_accuracy"] in {100 * k / 8 for k in range(9)}

    best = json.load(open(os.path.join(workdir, "best", "best.json")))
    assert best["metric"] == "t2v_R1"
    assert best["value"] == max(m["t2v_R1"] for m in evals.values())
    assert best["step"] == min(s for s, m in evals.items() if m["t2v_R1"] == best["value"])
    assert os.path.isdir(best["path"]) and best["path"].endswith(f"step_{best['step']}")

    # Eval mode on the stage-2 source (its stage-1 part) reproduces the step-0 zero-shot numbers.
    zero_shot = eval_only.evaluate_checkpoint(_config(demo_root, **{"init.restore": source}), str(tmp_path / "eval0"))
    for key in ("t2v_R1", "t2v_R5", "t2v_MeanR", "v2t_R1", "v2t_MeanR"):
        assert zero_shot[key] == pytest.approx(evals[0][key]), key
    # ... and on the kept best checkpoint, its recorded numbers.
    at_best = eval_only.evaluate_checkpoint(_config(demo_root, **{"init.restore": best["path"]}), str(tmp_path / "eval1"))
    for key in ("t2v_R1", "t2v_MeanR", "v2t_MeanR"):
        assert at_best[key] == pytest.approx(best["metrics"][key]), key

    # The fine-tuned text tower started from the source's and moved; fusion was never created.
    final = variables_io.restore_variables(os.path.join(workdir, "checkpoints")).variables
    flat = traverse_util.flatten_dict(final["params"], sep="/")
    assert not any(p.startswith("fusion/") or p.startswith("heads/") for p in flat)
    src = traverse_util.flatten_dict(source_variables["params"], sep="/")
    key = "text/encoder/layer_0/query/kernel"
    assert not np.allclose(flat[key], src[key]) and np.abs(np.asarray(flat[key]) - src[key]).max() < 0.1


def test_fine_tuning_without_init_restore_names_the_field(demo_root, tmp_path):
    with pytest.raises(TrainConfigError, match="init.restore"):
        trainer.train_and_evaluate(_config(demo_root), str(tmp_path / "run"))


def test_checkpoint_of_another_model_is_refused_by_name(demo_root, tmp_path):
    other = retrieval.get_config("tiny")
    other.model.hidden_size = 64
    cfg = model_config_from_dict(other.model.to_dict())
    path = str(tmp_path / "wide")
    variables_io.save_variables(path, init_variables(cfg, jax.random.PRNGKey(0), stage=1))
    with pytest.raises(variables_io.CheckpointError, match="init.restore.*other shapes"):
        trainer.train_and_evaluate(_config(demo_root, **{"init.restore": path}), str(tmp_path / "run"))
