"""TFDS builder `hdvila_clips` over clip-record shards made by `build_tfrecords`.

The shards are read from `manual_dir` (`train-*.tfrecord` -> split "train", `val-*.tfrecord`
-> split "validation"); JPEG frames are copied as they are, not re-encoded:

    import data_pipelines.tfds_builder  # registers the builder
    ds = tfds.load("hdvila_clips", split="train", data_dir=DATA_DIR,
                   download_and_prepare_kwargs={"download_config":
                       tfds.download.DownloadConfig(manual_dir="demo_data/records")})
"""
from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow_datasets as tfds

from hdvila_jax.data.records import parse_clip_record
from hdvila_jax.data.tfrecord_source import TFRecordDataSource

_SPLIT_PATTERNS = {"train": "train-*.tfrecord", "validation": "val-*.tfrecord"}


class HdvilaClips(tfds.core.GeneratorBasedBuilder):
    """Clips with HR candidate middle frames, LR neighbours and captions."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Clip records of data_pipelines.build_tfrecords."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Build clip-record shards with `python -m data_pipelines.build_tfrecords` (or "
        "`python -m data_pipelines.make_demo`) and pass their directory as manual_dir.")

    def _info(self) -> tfds.core.DatasetInfo:
        image = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "clip_id": tfds.features.Text(),
                "video_id": tfds.features.Text(),
                "video_index": np.int64,
                "texts": tfds.features.Sequence(tfds.features.Text()),
                "num_frames": np.int64,
                "fps": np.float32,
                "sample_rate": np.int64,
                "middle_frames": tfds.features.Sequence(np.int64),
                "hr_frames": tfds.features.Sequence(image),
                "lr_frames": tfds.features.Sequence(np.int64),
                "lr_images": tfds.features.Sequence(image),
                "neighbour_slots": tfds.features.Tensor(shape=(None, 6), dtype=np.int64),
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        splits = {}
        for split, pattern in _SPLIT_PATTERNS.items():
            files = sorted(glob.glob(os.path.join(dl_manager.manual_dir, pattern)))
            if files:
                splits[split] = self._generate_examples(files)
        if not splits:
            raise FileNotFoundError(f"{dl_manager.manual_dir}: no {' or '.join(_SPLIT_PATTERNS.values())} shards")
        return splits

    def _generate_examples(self, files: list[str]):
        source = TFRecordDataSource(files)
        for index in range(len(source)):
            record = parse_clip_record(source[index])
            yield record.clip_id, {
                "clip_id": record.clip_id,
                "video_id": record.video_id,
                "video_index": record.video_index,
                "texts": record.texts,
                "num_frames": record.num_frames,
                "fps": record.fps,
                "sample_rate": record.sample_rate,
                "middle_frames": record.middle_frames,
                "hr_frames": record.hr_jpeg,
                "lr_frames": record.lr_frames,
                "lr_images": record.lr_jpeg,
                "neighbour_slots": record.neighbour_slots,
            }
