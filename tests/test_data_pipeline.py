"""The input pipeline on the demo generator's output: shapes, sharding, determinism, resume,
evaluation coverage, and HR/LR crop alignment."""
from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from data_pipelines import make_demo
from data_pipelines.synthetic_videos import write_mp4
from hdvila_jax.data.config import get_data_config
from hdvila_jax.data.pipeline import make_eval_iterator, make_train_iterator
from tests import data_helpers as h

NUM_TRAIN, NUM_VAL = 12, 7


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo.main(["--output", str(root), "--num_train", str(NUM_TRAIN), "--num_val", str(NUM_VAL),
                    "--frame_size", "64", "96", "--duration", "2", "--workers", "1"])
    return root


def _config(root, batch_size=4, crop_size=(48, 64), **overrides) -> ml_collections.ConfigDict:
    data = get_data_config("tiny", root=str(root))
    data.train_n_clips = 2
    data.inference_n_clips = 4
    data.update(overrides)
    return ml_collections.ConfigDict({"batch_size": batch_size, "data": data,
                                      "model": {"crop_size": crop_size, "num_frames": 7}})


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_train_batch_layout(demo_root):
    batch = next(make_train_iterator(_config(demo_root, mlm_probability=0.15), 0, 1))
    shapes = {k: (v.dtype.name, v.shape) for k, v in batch.items()}
    assert shapes == {
        "img_middle": ("uint8", (4, 2, 48, 64, 3)),
        "img_other": ("uint8", (4, 2, 6, 12, 16, 3)),
        "text_input_ids": ("int32", (4, 12)),
        "text_input_mask": ("int32", (4, 12)),
        "mlm_labels": ("int32", (4, 12)),
        "video_index": ("int32", (4,)),
        "skipped_records": ("int32", (4,)),
        "skipped_shards": ("int32", (4,)),
    }
    assert batch["skipped_records"].sum() == batch["skipped_shards"].sum() == 0
    assert batch["img_middle"].std() > 10  # real pictures, not blank
    assert (batch["text_input_ids"][:, 0] == 2).all()  # demo vocab: [CLS] = 2
    lengths = batch["text_input_mask"].sum(1)
    assert ((lengths >= 6) & (lengths <= 7)).all()  # "a red circle moves left" + [CLS] [SEP]


def test_stage1_batches_have_no_mlm_labels(demo_root):
    batch = next(make_train_iterator(_config(demo_root), 0, 1))
    assert "mlm_labels" not in batch and "valid" not in batch


def test_train_sharding_is_disjoint_and_complete(demo_root):
    seen = []
    for process in range(3):
        iterator = make_train_iterator(_config(demo_root, batch_size=3), process, 3)
        seen.append([int(v) for b in _take(iterator, NUM_TRAIN // 3) for v in b["video_index"]])
    assert sorted(sum(seen, [])) == list(range(NUM_TRAIN))


def test_train_epochs_reshuffle_and_resample(demo_root):
    iterator = make_train_iterator(_config(demo_root, batch_size=NUM_TRAIN), 0, 1)
    first, second = _take(iterator, 2)
    assert sorted(first["video_index"]) == sorted(second["video_index"]) == list(range(NUM_TRAIN))
    assert list(first["video_index"]) != list(second["video_index"])
    order = np.argsort(first["video_index"]), np.argsort(second["video_index"])
    assert not np.array_equal(first["img_middle"][order[0]], second["img_middle"][order[1]])


def test_determinism_given_seed(demo_root):
    config = _config(demo_root, mlm_probability=0.15)
    _assert_same(_take(make_train_iterator(config, 0, 1), 4), _take(make_train_iterator(config, 0, 1), 4))
    other = _take(make_train_iterator(_config(demo_root, mlm_probability=0.15, seed=1), 0, 1), 1)[0]
    same = _take(make_train_iterator(config, 0, 1), 1)[0]
    assert not np.array_equal(other["video_index"], same["video_index"])


def test_restored_state_continues_the_stream(demo_root):
    config = _config(demo_root, mlm_probability=0.15)
    iterator = make_train_iterator(config, 0, 1)
    _take(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _take(iterator, 5)  # crosses the epoch boundary (12 examples, batch 4)
    resumed = make_train_iterator(config, 0, 1)
    resumed.set_state(state)
    _assert_same(_take(resumed, 5), expected)


def test_eval_visits_every_example_once(demo_root):
    config = _config(demo_root, batch_size=4, mlm_probability=0.15)
    seen, batches_per_process = [], []
    for process in range(2):
        batches = list(make_eval_iterator(config, process, 2))
        batches_per_process.append(len(batches))
        for batch in batches:
            assert batch["img_middle"].shape == (2, 4, 48, 64, 3)
            seen += [int(v) for v in batch["video_index"][batch["valid"]]]
    assert batches_per_process == [2, 2]  # 4 and 3 examples, padded to 2 batches of 2
    assert sorted(seen) == list(range(NUM_VAL))
    _assert_same(list(make_eval_iterator(config, 0, 2)), list(make_eval_iterator(config, 0, 2)))


def test_eval_uses_even_clips_and_centre_crop(demo_root):
    config = _config(demo_root, batch_size=NUM_VAL + 1, crop_size=(64, 96))
    batch = next(make_eval_iterator(config, 0, 1))
    assert batch["valid"].tolist() == [True] * NUM_VAL + [False]
    # Clips evenly spread over the video: the moving shape is at four distinct places.
    diffs = np.abs(np.diff(batch["img_middle"][0].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert (diffs > 1).all()


@pytest.fixture(scope="module")
def static_root(tmp_path_factory):
    """A still, strongly patterned scene: every LR neighbour is the 1/4 resize of the HR frame."""
    root = tmp_path_factory.mktemp("static")
    (root / "videos").mkdir()
    yy, xx = np.mgrid[0:128, 0:192].astype(np.float32)
    entries = []
    for i in range(4):
        image = np.stack([128 + 90 * np.sin(xx / (6 + i) + yy / 9), 128 + 90 * np.cos(yy / (7 + i)),
                          128 + 60 * np.sin((xx + yy) / 8)], axis=-1).astype(np.uint8)
        write_mp4(str(root / "videos" / f"s{i}.mp4"), np.repeat(image[None], 30, axis=0), fps=15)
        entries.append({"clip_id": f"s{i}", "text": "a still pattern"})
    h.write_jsonl(str(root / "ann.jsonl"), entries)
    h.build(str(root / "videos"), str(root / "ann.jsonl"), str(root / "records"), frame_hw=(128, 192),
            num_shards=1)
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "still",
                                               "pattern"]) + "\n")
    return root


def test_hr_and_lr_crops_are_aligned(static_root):
    data = get_data_config("tiny", root=str(static_root))
    data.train_files = str(static_root / "records" / "train-*.tfrecord")
    model = {"crop_size": (64, 96), "num_frames": 7}
    config = ml_collections.ConfigDict({"batch_size": 4, "data": data, "model": model})
    offsets_seen = set()
    for batch in _take(make_train_iterator(config, 0, 1), 3):
        for middle, others in zip(batch["img_middle"].reshape(-1, 64, 96, 3),
                                  batch["img_other"].reshape(-1, 6, 16, 24, 3)):
            small = tf.image.resize(middle, (16, 24), method="area").numpy().round().astype(np.uint8)
            for lr in others:
                aligned = h.psnr(small, lr)
                assert aligned > 25, aligned
                assert aligned > h.psnr(small[1:], lr[:-1]) + 6
                assert aligned > h.psnr(small[:, 1:], lr[:, :-1]) + 6
            offsets_seen.add(middle[:2, :2].tobytes())
    assert len(offsets_seen) > 1  # the crops really moved


def test_worker_processes_give_a_deterministic_stream_that_resumes_exactly(demo_root):
    config = _config(demo_root, mlm_probability=0.15, num_workers=2)
    iterator = make_train_iterator(config, 0, 1)
    head = _take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    tail = _take(iterator, 3)
    # Worker w batches stream positions w, w + 2, ...: the 6 batches cover positions 0..23, two epochs.
    seen = np.concatenate([b["video_index"] for b in head + tail])
    assert sorted(seen.tolist()) == sorted(2 * list(range(NUM_TRAIN)))
    in_process = _take(make_train_iterator(_config(demo_root, mlm_probability=0.15), 0, 1), 1)[0]
    assert head[0]["img_middle"].shape == in_process["img_middle"].shape
    again = make_train_iterator(config, 0, 1)
    _assert_same(_take(again, 3), head)
    resumed = make_train_iterator(config, 0, 1)
    resumed.set_state(state)
    _assert_same(_take(resumed, 3), tail)
    for it in (iterator, again, resumed):
        it.close()
