"""`tfds.load` over clip-record shards through the hdvila_clips builder."""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

import data_pipelines.tfds_builder  # noqa: F401  (registers hdvila_clips)
from hdvila_jax.data.records import parse_clip_record
from hdvila_jax.data.tfrecord_source import TFRecordDataSource
from tests import data_helpers as h


def test_tfds_load_reads_the_records(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        h.write_video(str(videos / f"v{i}.mp4"), seed=i)
    h.write_jsonl(str(tmp_path / "ann.jsonl"), [{"clip_id": f"v{i}", "text": f"video {i}"} for i in range(3)])
    h.build(str(videos), str(tmp_path / "ann.jsonl"), str(tmp_path / "records"), num_shards=1)
    dataset = tfds.load("hdvila_clips", split="train", data_dir=str(tmp_path / "tfds"),
                        download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                            manual_dir=str(tmp_path / "records"))})
    examples = {ex["clip_id"].decode(): ex for ex in tfds.as_numpy(dataset)}
    assert sorted(examples) == ["v0", "v1", "v2"]
    source = TFRecordDataSource([str(tmp_path / "records" / "train-00000-of-00001.tfrecord")])
    record = parse_clip_record(source[1])
    example = examples[record.clip_id]
    assert example["texts"].tolist() == [t.encode() for t in record.texts]
    np.testing.assert_array_equal(example["middle_frames"], record.middle_frames)
    np.testing.assert_array_equal(example["neighbour_slots"], record.neighbour_slots)
    np.testing.assert_array_equal(example["hr_frames"][2], h.decode_jpeg(record.hr_jpeg[2]))
    assert example["lr_images"].shape == (len(record.lr_jpeg), 16, 24, 3)
