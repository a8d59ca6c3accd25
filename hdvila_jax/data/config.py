"""Default `data` sub-configs of the input pipeline (see hdvila_jax/data/pipeline.py).

Fields:
  train_files, val_files: glob patterns of clip-record TFRecord shards.
  vocab_file: BERT WordPiece vocab.txt, or a directory holding one.
  max_txt_len: tokens per text incl. [CLS]/[SEP] (docs/fidelity.md §1: 50 pretraining/retrieval).
  train_n_clips, inference_n_clips: clips per example in training / evaluation.
  mlm_probability: 0 for stage 1 (no `mlm_labels`); 0.15 for stage 2 (docs/fidelity.md §5).
  ans2label: open-ended video QA only: the answer vocabulary json (answer -> class index) that
    maps each record's answer to its label (-1 = outside the vocabulary, scored wrong).
  flip_prob: probability of flipping a training example horizontally (all its frames); 0 in
    pretraining, 1/3 downstream (docs/fidelity.md §11.5). Evaluation never flips.
  num_parallel_calls: threads decoding examples (TF's eager JPEG decoding barely gains from a
    second thread on this 2-core machine; see data_pipelines/README.md).
  prefetch_buffer_size: examples decoded ahead (per process or worker).
  num_workers: training only: worker processes decoding and batching examples (grain
    mp_prefetch); 0 decodes in the training process. The stream depends on it: resume with the
    same value.
  per_worker_buffer_size: batches each worker keeps ready.
  seed: shuffling, clip/crop sampling and masking are pure functions of (seed, index).
Shuffling is a full permutation per epoch (grain), so there is no shuffle buffer.
The crop and the frames per clip are the model's: ``config.model.crop_size`` ((H, W) of the HR
crop, LR crops are (H/4, W/4); must fit the stored frames) and ``config.model.num_frames`` (the
records must have been built with as many frames per clip).
"""
from __future__ import annotations

import os

import ml_collections

DEMO_ROOT = "demo_data"


def _base() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        train_files="",
        val_files="",
        vocab_file="",
        max_txt_len=50,
        train_n_clips=2,
        inference_n_clips=4,
        mlm_probability=0.0,
        flip_prob=0.0,
        ans2label="",
        num_parallel_calls=2,
        prefetch_buffer_size=32,
        num_workers=0,
        per_worker_buffer_size=2,
        seed=0,
    ))


def get_data_config(variant: str = "paper", root: str | None = None) -> ml_collections.ConfigDict:
    """The data config of a variant: "paper" (HD-VILA-100M records under `root`), "demo" (the
    bundled demo set written by `python -m data_pipelines.make_demo --output root`) or "tiny"
    (demo records with single clips, for quick trainer tests)."""
    config = _base()
    if variant == "paper":
        root = root or "data/hdvila100m"
        config.train_files = os.path.join(root, "records", "train-*.tfrecord")
        config.val_files = os.path.join(root, "records", "val-*.tfrecord")
        config.vocab_file = os.path.join(root, "vocab.txt")
        return config
    if variant not in ("demo", "tiny"):
        raise ValueError(f"unknown data config variant {variant!r}; known: paper, demo, tiny")
    root = root or DEMO_ROOT
    config.train_files = os.path.join(root, "records", "train-*.tfrecord")
    config.val_files = os.path.join(root, "records", "val-*.tfrecord")
    config.vocab_file = os.path.join(root, "vocab.txt")
    config.max_txt_len = 12
    config.num_parallel_calls = 2
    config.prefetch_buffer_size = 16
    if variant == "demo":
        config.train_n_clips = 2
        config.inference_n_clips = 4
    else:
        config.train_n_clips = 1
        config.inference_n_clips = 2
    return config
