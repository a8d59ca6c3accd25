"""Damaged training data: a record with flipped bytes, a shard cut short, a shard that cannot be
read. The reader skips, logs the shard and offset, counts, and the rest of the stream is intact;
evaluation stops with an error that names the shard and offset."""
from __future__ import annotations

import glob
import logging
import os
import shutil

import ml_collections
import numpy as np
import pytest

from data_pipelines import make_demo
from hdvila_jax.data.config import get_data_config
from hdvila_jax.data.pipeline import make_eval_iterator, make_train_iterator
from hdvila_jax.data.records import parse_clip_record
from hdvila_jax.data.tfrecord_source import CorruptRecordError, TFRecordDataSource, masked_crc32c, record_offsets
from tests.data_helpers import flip_byte

NUM_TRAIN = 12


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo.main(["--output", str(root), "--num_train", str(NUM_TRAIN), "--num_val", "4",
                    "--frame_size", "64", "96", "--duration", "2", "--workers", "1"])
    return root


@pytest.fixture
def root(pristine, tmp_path):
    """A private copy of the demo records, free to damage."""
    copy = tmp_path / "demo"
    shutil.copytree(pristine, copy)
    return copy


def _config(root, batch_size=NUM_TRAIN, **overrides) -> ml_collections.ConfigDict:
    data = get_data_config("tiny", root=str(root))
    data.update(overrides)
    return ml_collections.ConfigDict({"batch_size": batch_size, "data": data,
                                      "model": {"crop_size": (48, 64), "num_frames": 7}})


def _shards(root, split="train"):
    return sorted(glob.glob(str(root / "records" / f"{split}-*.tfrecord")))


def _video_indices(path):
    return {parse_clip_record(data).video_index for data in TFRecordDataSource([path])}


def _epoch(root, **overrides):
    """One epoch of the training stream as one batch of whatever is readable: (video indices, records
    skipped, shards skipped). The batch is the size of the readable part, so no epoch boundary mixes in."""
    iterator = make_train_iterator(_config(root, **overrides), 0, 1)
    batch = next(iterator)
    return sorted(batch["video_index"].tolist()), int(batch["skipped_records"].sum()), \
        int(batch["skipped_shards"].sum())


def test_crc_matches_the_writer(pristine):
    path = _shards(pristine)[0]
    offset = record_offsets(path)[0]
    with open(path, "rb") as f:
        f.seek(offset)
        header = f.read(12)
    assert int.from_bytes(header[8:], "little") == masked_crc32c(header[:8])


def test_flipped_bytes_skip_one_record_and_name_its_shard_and_offset(root, caplog):
    path = _shards(root)[1]
    offset = record_offsets(path)[1]
    damaged_index = parse_clip_record(TFRecordDataSource([path])[1]).video_index
    flip_byte(path, offset + 12 + 40)  # inside the payload
    with pytest.raises(CorruptRecordError, match=f"{os.path.basename(path)} at byte {offset}: data CRC mismatch"):
        TFRecordDataSource([path])[1]

    caplog.set_level(logging.WARNING)
    indices, records, shards = _epoch(root, batch_size=NUM_TRAIN - 1)
    assert indices == sorted(set(range(NUM_TRAIN)) - {damaged_index})
    assert (records, shards) == (1, 0)
    assert f"{path} at byte {offset}: data CRC mismatch" in caplog.text


def test_a_flipped_length_header_is_caught(root):
    path = _shards(root)[0]
    offset = record_offsets(path)[0]
    flip_byte(path, offset + 2)
    indices, records, _ = _epoch(root, batch_size=NUM_TRAIN - 1)
    assert len(indices) == NUM_TRAIN - 1 and records == 1


def test_a_shard_cut_short_loses_only_its_tail(root, caplog):
    path = _shards(root)[2]
    offsets = record_offsets(path)
    lost = len(offsets) - 1
    kept = _video_indices(path)
    os.truncate(path, offsets[1] + 20)  # the second record is cut in its payload
    caplog.set_level(logging.WARNING)
    indices, records, shards = _epoch(root, batch_size=NUM_TRAIN - lost)
    assert len(indices) == NUM_TRAIN - lost and (records, shards) == (lost, 0)
    assert f"{path} at byte {offsets[1]}: file ends inside the record (truncated)" in caplog.text
    assert len(kept - set(indices)) == lost

    os.remove(path + ".json")  # without the sidecar the scan stops at the cut: one shard-level skip
    indices, records, shards = _epoch(root, batch_size=NUM_TRAIN - lost)
    assert len(indices) == NUM_TRAIN - lost and (records, shards) == (0, 1)


def test_an_unreadable_shard_is_skipped_whole(root, caplog):
    path = _shards(root)[3]
    lost = _video_indices(path)
    os.remove(path)
    os.remove(path + ".json")
    os.symlink(str(root / "gone.tfrecord"), path)  # still listed, cannot be opened (a lost remote file)
    caplog.set_level(logging.WARNING)
    indices, records, shards = _epoch(root, batch_size=NUM_TRAIN - len(lost))
    assert set(indices) == set(range(NUM_TRAIN)) - lost and (records, shards) == (0, 1)
    assert f"{path} at byte 0: unreadable shard" in caplog.text


def test_no_readable_shard_is_an_error(root):
    for path in _shards(root):
        os.truncate(path, 5)
        os.remove(path + ".json")
    with pytest.raises(CorruptRecordError, match="no readable record"):
        make_train_iterator(_config(root), 0, 1)


def test_evaluation_stops_on_a_damaged_record_naming_it(root):
    path = _shards(root, "val")[0]
    offset = record_offsets(path)[0]
    flip_byte(path, offset + 12 + 40)
    with pytest.raises(CorruptRecordError, match=f"{os.path.basename(path)} at byte {offset}"):
        list(make_eval_iterator(_config(root, batch_size=2), 0, 1))


def test_damage_leaves_the_resumed_stream_exact(root):
    path = _shards(root)[0]
    flip_byte(path, record_offsets(path)[0] + 12 + 40)
    config = _config(root, batch_size=3)
    iterator = make_train_iterator(config, 0, 1)
    next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(6)]  # crosses epochs, each skipping the damaged record
    resumed = make_train_iterator(config, 0, 1)
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(6)]):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key], err_msg=key)
    assert sum(int(b["skipped_records"].sum()) for b in expected) >= 1
