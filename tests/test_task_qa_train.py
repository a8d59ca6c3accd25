"""Video QA on the one trainer: train steps (open-ended and multiple choice, gradient accumulation as
a mean), init from a stage-2 checkpoint with a new head, config checks, and the evaluation's
metrics and prediction rows on constructed cases."""
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import qa as qa_configs
from hdvila_jax import eval_only, sharding, storage, variables_io
from hdvila_jax.config_checks import check_config
from hdvila_jax.models import model_config_from_dict
from hdvila_jax.models.variables import abstract_variables, init_variables
from hdvila_jax.tasks.base import TrainConfigError
from hdvila_jax.tasks.qa import qa_task
from hdvila_jax.tasks.qa_eval import Question, prediction_rows, qa_metrics, write_predictions
from hdvila_jax.train import startup, train_state, trainer
from hdvila_jax.train.optimizer import make_optimizer
from tests import train_helpers
from tests.test_train_step import NO_DROPOUT, assert_accumulation_matches, run_steps

NUM_ANSWERS = 5
OVERRIDES = {"optimizer.warmup_ratio": 0.0, "total_steps": 100, "batch_size": 4, "optimizer.eps": 1.0,
             "model.num_qa_outputs": NUM_ANSWERS, "data.ans2label": "unused.json", **NO_DROPOUT}


def qa_config(qa_type="open", **extra):
    config = train_helpers.apply_overrides(qa_configs.get_config("tiny"), {**OVERRIDES, **extra})
    config.qa.type = qa_type
    if qa_type == "multiple_choice":
        config.model.num_qa_outputs = 1
    for group in config.optimizer.groups.values():
        group.lr = 1.0  # with eps 1 an update is ~lr x gradient, and a fresh head's gradients are small
    return config


def qa_batch(config, choices=0, seed=0):
    """A synthetic QA batch: open-ended (``qa_label``) or multiple choice (``mc_*``, ``choices`` options)."""
    batch = train_helpers.synthetic_batch(config, 4, seed=seed)
    batch.pop("mlm_labels")
    rng = np.random.default_rng(seed + 1)
    if choices:
        length = config.data.max_txt_len
        batch["mc_text_input_ids"] = rng.integers(5, 100, (4, choices, length)).astype(np.int32)
        batch["mc_text_input_mask"] = np.ones((4, choices, length), np.int32)
        batch["mc_answer"] = np.array([0, 2, 1, choices - 1], np.int32)
    else:
        batch["qa_label"] = np.array([0, 3, 1, 4], np.int32)
    return batch


@pytest.mark.parametrize("qa_type,choices", [("open", 0), ("multiple_choice", 5)])
def test_qa_steps_learn_and_accumulation_is_the_mean(qa_type, choices):
    config = qa_config(qa_type)
    batch = qa_batch(config, choices)
    _, states, losses, metrics = run_steps(config, batch, 3)
    # Open-ended: the head alone can fit 4 labels; multiple choice must tell random options apart.
    assert losses[2] < losses[1] < losses[0] and losses[2] < losses[0] - (0.002 if choices else 0.05), losses
    assert 0.0 <= metrics[-1]["qa_accuracy"] <= 100.0
    # First-step loss of a fresh head: about log(#classes) (N(0, 0.02) head, zero biases).
    np.testing.assert_allclose(losses[0], np.log(choices or NUM_ANSWERS), rtol=0.05)
    # Two micro-batches of 2: the loss and the update equal one step on the batch of 4 (a mean;
    # the original's sum would double the loss).
    assert_accumulation_matches(lambda **extra: qa_config(qa_type, **extra), batch)


def test_qa_config_checks_fail_before_compiling():
    config = qa_config()
    config.qa.aggregation = "median"
    with pytest.raises(TrainConfigError, match="qa.aggregation"):
        check_config(config)
    config = qa_config()
    config.data.ans2label = ""
    with pytest.raises(TrainConfigError, match="data.ans2label"):
        check_config(config)
    config = qa_config()
    config.qa.type = "yes_no"
    with pytest.raises(TrainConfigError, match="qa.type"):
        check_config(config)


def test_resolve_qa_outputs(tmp_path):
    path = str(tmp_path / "ans2label.json")
    with open(path, "w") as f:
        json.dump({"red": 0, "left": 1, "circle": 2}, f)
    config = qa_config(**{"model.num_qa_outputs": 0, "data.ans2label": path})
    assert qa_task(config).resolve(config).model.num_qa_outputs == 3
    config.model.num_qa_outputs = 1500  # the original's fixed head size is kept
    assert qa_task(config).resolve(config).model.num_qa_outputs == 1500
    config.model.num_qa_outputs = 2
    with pytest.raises(ValueError, match="smaller than the 3 answers"):
        qa_task(config).resolve(config)
    mc = qa_config("multiple_choice")
    mc.model.num_qa_outputs = 0
    assert qa_task(mc).resolve(mc).model.num_qa_outputs == 1
    mc.model.num_qa_outputs = 4
    with pytest.raises(ValueError, match="multiple choice"):
        qa_task(mc).resolve(mc)
    with open(path, "w") as f:
        json.dump({"red": 0, "left": 2}, f)
    with pytest.raises(ValueError, match="0..1"):
        qa_task(config).resolve(config)


def test_fine_tuning_from_stage2_takes_all_but_the_new_head(tmp_path):
    config = qa_config()
    model_cfg, task = check_config(config)
    pretrain_cfg = model_config_from_dict({**config.model.to_dict(), "num_qa_outputs": 0})
    stage2 = init_variables(pretrain_cfg, jax.random.PRNGKey(3), 2)
    path = str(tmp_path / "stage2")
    variables_io.save_variables(path, stage2)
    config.init.restore = path
    mesh = sharding.make_mesh(config.mesh)
    opt = make_optimizer(config.optimizer, abstract_variables(model_cfg, 2)["params"], 10)
    target = train_state.abstract_state(config, model_cfg, mesh, opt, train_state.state_specs(config, model_cfg,
                                                                                               mesh, opt))
    variables, origin = startup.fine_tuning_variables(config, model_cfg, mesh, target, task)
    assert "params/heads/qa_classifier" in origin and "params/contrastive" in origin
    got = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
    stored = traverse_util.flatten_dict(stage2["params"], sep="/")
    head = [p for p in got if p.startswith("heads/qa_classifier/")]
    assert sorted(head) == ["heads/qa_classifier/hidden/bias", "heads/qa_classifier/hidden/kernel",
                            "heads/qa_classifier/out/bias", "heads/qa_classifier/out/kernel"]
    for p, value in got.items():
        if p in head:
            continue
        np.testing.assert_array_equal(value, stored[p], err_msg=p)
    assert not any(p.startswith(("contrastive/", "heads/mlm", "heads/itm")) for p in got)
    kernel = got["heads/qa_classifier/hidden/kernel"]
    assert 0.01 < kernel.std() < 0.03 and not got["heads/qa_classifier/out/bias"].any()


def test_metrics_per_answer_type_and_prediction_rows():
    questions = {
        0: Question(("what colour is it",), "red", "colour"),
        1: Question(("what colour is it",), "blue", "colour"),
        2: Question(("which way",), "left", "direction"),
        3: Question(("which way",), "sideways", "direction"),  # outside the vocabulary
    }
    label2ans = {0: "red", 1: "blue", 2: "left"}
    ids = np.array([0, 1, 2, 3])
    pred = np.array([0, 0, 2, 7])
    labels = np.array([0, 1, 2, -1])
    metrics = qa_metrics(pred, labels, [questions[i].answer_type for i in ids])
    assert metrics == {"qa_accuracy": 50.0, "qa_questions": 4.0, "qa_unknown_answers": 1.0,
                       "qa_accuracy_colour": 50.0, "qa_accuracy_direction": 50.0}
    rows = prediction_rows(ids, pred, labels, questions, label2ans)
    assert [r["correct"] for r in rows] == [True, False, True, False]
    assert rows[1] == {"question_id": 1, "question": "what colour is it", "prediction": "red", "answer": "blue",
                       "answer_type": "colour", "correct": False}
    assert rows[3]["prediction"] == "<unused output 7>"
    mc = {5: Question(("q a", "q b", "q c"), "q b", "")}
    rows = prediction_rows(np.array([5]), np.array([1]), np.array([1]), mc, None)
    assert rows == [{"question_id": 5, "question": ["q a", "q b", "q c"], "prediction": "q b", "answer": "q b",
                     "answer_type": "", "correct": True}]


def test_predictions_are_written_whole_locally_and_to_a_bucket(tmp_path, gcs_bucket):
    rows = [{"question_id": 0, "question": "which way", "prediction": "left", "answer": "left",
             "answer_type": "direction", "correct": True},
            {"question_id": 1, "question": "what colour", "prediction": "red", "answer": "blue",
             "answer_type": "colour", "correct": False}]
    for workdir in (str(tmp_path / "run"), f"gs://{gcs_bucket}/run"):
        path = storage.join(workdir, "predictions", "step_4.jsonl")
        write_predictions(path, rows[:1])
        write_predictions(path, rows)  # an evaluation of the same step again replaces the file
        assert [json.loads(line) for line in storage.read_text(path).splitlines()] == rows
        assert storage.listdir(storage.join(workdir, "predictions")) == ["step_4.jsonl"]


def test_paper_recipes():
    msrvtt = qa_configs.get_config("msrvtt_qa")
    assert (msrvtt.batch_size, msrvtt.grad_accum_steps, msrvtt.qa.aggregation) == (16 * 8 * 4, 4, "lse")
    assert msrvtt.model.num_qa_outputs == 1500 and msrvtt.data.max_txt_len == 100
    assert (msrvtt.data.train_n_clips, msrvtt.data.inference_n_clips) == (1, 8)
    frame = qa_configs.get_config("tgif_frame")
    assert frame.model.crop_size == (768, 768) and frame.model.num_qa_outputs == 1540
    assert frame.optimizer.decay_milestone_epochs == (10, 15, 20, 25, 30, 35)
    for name in ("tgif_action", "tgif_transition"):
        config = qa_configs.get_config(name)
        assert config.qa.type == "multiple_choice" and config.qa.aggregation == "mean"
        assert config.optimizer.groups.cnn.lr == 5e-5 and config.optimizer.groups.cnn.weight_decay == 0.1
    for name in ("msrvtt_qa", "tgif_frame", "tgif_action", "demo", "demo_mc", "tiny"):
        config = qa_configs.get_config(name)
        assert check_config(config)[1].stage == 2 and config.seed == 66
    with pytest.raises(ValueError, match="unknown qa variant"):
        qa_configs.get_config("msrvtt")
    assert os.path.basename(qa_configs.get_config("msrvtt_qa").data.ans2label) == "train_ans2label.json"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _demo_config(root, qa_type, checkpoint, **overrides):
    """The tiny QA config on the small demo set's QA splits, fine-tuning ``checkpoint``."""
    config = qa_configs.get_config("tiny")
    prefix = "qa" if qa_type == "open" else "qa_mc"
    config.qa.type = qa_type
    config.data.train_files = os.path.join(root, "records", f"{prefix}_train-*.tfrecord")
    config.data.val_files = os.path.join(root, "records", f"{prefix}_test-*.tfrecord")
    config.data.vocab_file = os.path.join(root, "vocab.txt")
    config.data.ans2label = os.path.join(root, "records", "qa_train_ans2label.json") if qa_type == "open" else ""
    config.demo_data_dir = ""
    config.init.restore = checkpoint
    config.eval_batch_size = 8
    return train_helpers.apply_overrides(config, overrides)


@pytest.fixture(scope="module")
def stage2_checkpoint(tmp_path_factory):
    """A random stage-2 pretraining checkpoint of the tiny model (what the converter writes)."""
    cfg = model_config_from_dict(qa_configs.get_config("tiny").model.to_dict())
    path = str(tmp_path_factory.mktemp("converted") / "stage2")
    variables_io.save_variables(path, init_variables(cfg, jax.random.PRNGKey(5), 2))
    return path


@pytest.mark.slow
def test_open_ended_fine_tune_writes_metrics_predictions_and_best(demo_root, stage2_checkpoint, tmp_path):
    workdir = str(tmp_path / "qa")
    config = _demo_config(demo_root, "open", stage2_checkpoint, total_steps=4, eval_every_steps=4,
                          ckpt_every_steps=4)
    metrics = trainer.train_and_evaluate(config, workdir)
    # 8 test videos x 3 questions; answers the 16 training videos never gave are counted (and wrong).
    with open(os.path.join(demo_root, "records", "qa_train_ans2label.json")) as f:
        vocabulary = json.load(f)
    with open(os.path.join(demo_root, "annotations", "qa_test.jsonl")) as f:
        answers = [json.loads(line)["answer"] for line in f]
    assert metrics["qa_questions"] == 24 == len(answers)
    assert metrics["qa_unknown_answers"] == sum(a not in vocabulary for a in answers)
    assert {"qa_accuracy_colour", "qa_accuracy_shape", "qa_accuracy_direction"} <= set(metrics)
    written = train_helpers.read_metrics(workdir, "eval/")
    assert sorted(written) == [0, 4] and written[4]["eval/qa_accuracy"] == metrics["qa_accuracy"]
    with open(os.path.join(workdir, "predictions", "step_4.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["question_id"] for r in rows] == list(range(24))
    assert 100.0 * np.mean([r["correct"] for r in rows]) == pytest.approx(metrics["qa_accuracy"])
    assert not any(r["correct"] for r in rows if r["answer"] not in vocabulary)
    assert {r["answer_type"] for r in rows} == {"colour", "shape", "direction"}
    assert all(isinstance(r["prediction"], str) and r["question"].startswith(("what", "which")) for r in rows)
    with open(os.path.join(workdir, "best", "best.json")) as f:
        best = json.load(f)
    # Eval mode on the kept best checkpoint reproduces its accuracy.
    eval_metrics = eval_only.evaluate_checkpoint(_demo_config(demo_root, "open", best["path"]), str(tmp_path / "eval"))
    assert eval_metrics["qa_accuracy"] == best["value"]


@pytest.mark.slow
def test_multiple_choice_fine_tune_on_tgif_format_records(demo_root, stage2_checkpoint, tmp_path):
    workdir = str(tmp_path / "mc")
    config = _demo_config(demo_root, "multiple_choice", stage2_checkpoint, total_steps=2, eval_every_steps=2,
                          ckpt_every_steps=2)
    config.model.num_qa_outputs = 0  # resolved to 1
    metrics = trainer.train_and_evaluate(config, workdir)
    assert metrics["qa_questions"] == 8 and 0.0 <= metrics["qa_accuracy"] <= 100.0
    assert not any(k.startswith("qa_accuracy_") for k in metrics)  # TGIF multiple choice has no types
    with open(os.path.join(workdir, "predictions", "step_2.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 8 and all(len(r["question"]) == 5 and r["prediction"] in r["question"] for r in rows)
    assert all(option.startswith("what does the shape do a ") for option in rows[0]["question"])


def test_demo_multiple_choice_recipe_lets_the_option_signal_through():
    """demo_mc: the demo pretraining's [CLS] barely differs between options (logit differences
    ~1e-5), so the recipe has no dropout (0.1 dropout put ~1e-3 of noise on each option's logit),
    an Adam eps below the cross-modal gradients (~5e-7) and the video encoder frozen; the
    open-ended demo keeps the shared recipe."""
    mc, open_ended = qa_configs.get_config("demo_mc"), qa_configs.get_config("demo")
    assert mc.model.hidden_dropout_prob == mc.model.attention_probs_dropout_prob == 0.0
    assert mc.optimizer.eps <= 1e-8 and mc.optimizer.frozen == r"^video/"
    assert sorted(mc.optimizer.groups) == ["transformer"] and mc.data.inference_n_clips == 8
    assert open_ended.model.hidden_dropout_prob == 0.1 and open_ended.optimizer.eps == 1e-6
    assert open_ended.data.inference_n_clips == 2
    assert sorted(open_ended.optimizer.groups) == ["align", "cnn", "transformer"] and not open_ended.optimizer.frozen
    params = abstract_variables(model_config_from_dict(dict(mc.model.to_dict(), num_qa_outputs=1)), 2)["params"]
    labels = make_optimizer(mc.optimizer, params, 10).labels
    assert {label for path, label in labels.items() if path.startswith("video/")} == {"frozen"}
    assert labels["heads/qa_classifier/out/kernel"] == "transformer"
