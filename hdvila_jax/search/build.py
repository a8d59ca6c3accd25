"""Building an index: encode every video of some clip records with a trained model.

Videos are read by the evaluation pipeline (``data.inference_n_clips`` evenly spaced clips,
centre crop), so a video's embedding is the one retrieval evaluation scores. Batches are
sharded over the mesh's batch axes; with several processes each reads its shard of the
records, features are gathered and padding dropped. Process 0 then reads ids, first
captions and thumbnails from the records and writes the index.
"""
from __future__ import annotations

import io
import math
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image
from tqdm import tqdm

from hdvila_jax import sharding, storage
from hdvila_jax.config_checks import check_config
from hdvila_jax.data import pipeline
from hdvila_jax.data.records import ClipRecord, parse_clip_record
from hdvila_jax.data.tfrecord_source import TFRecordDataSource
from hdvila_jax.encoder import restore_stage1_variables
from hdvila_jax.inference import VIDEO_INPUTS, encode_batches, make_encode_fn
from hdvila_jax.models import HDVILA
from hdvila_jax.search.index import SearchError, save_index

THUMBNAIL_SIZE = (160, 96)  # (width, height) box the thumbnail fits in
THUMBNAIL_QUALITY = 85


def index_config(config: ml_collections.ConfigDict, records: str) -> ml_collections.ConfigDict:
    """A copy of ``config`` whose validation files are ``records`` (captions unmasked)."""
    if not storage.glob(records):
        raise SearchError(f"--records={records!r} matches no files")
    config = config.copy_and_resolve_references()
    config.data.val_files = records
    config.data.mlm_probability = 0.0
    if config.data.vocab_file:
        config.data.vocab_file = storage.absolute(config.data.vocab_file)
    return config


def encode_records(model: HDVILA, variables: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                   batch_size: int, progress: bool = True) -> np.ndarray:
    """Video embeddings ``[N, D]`` of all records of ``config.data.val_files``, in record order."""
    process, processes = jax.process_index(), jax.process_count()
    local = batch_size // processes
    total = len(TFRecordDataSource(pipeline.list_files(config.data.val_files, "val_files")))
    batches = pipeline.make_eval_iterator(config, process, processes, batch_size=batch_size)

    def numbered():
        """Each batch with the record index of its rows: process p reads records p, p + P, ..."""
        for step, batch in enumerate(batches):
            yield dict(batch, record=process + processes * (step * local + np.arange(local, dtype=np.int32)))

    batches_shown = tqdm(numbered(), total=pipeline.eval_batch_count(total, processes, local), desc="encoding videos",
                         unit="batch", disable=not progress or process != 0)
    out = encode_batches(make_encode_fn(model, ("video",)), variables, batches_shown, mesh, VIDEO_INPUTS,
                         carry=("record",))
    rows, features = out["record"], out["video_features"]
    if sorted(rows.tolist()) != list(range(total)):
        raise RuntimeError(f"encoded {len(rows)} rows, expected each of the {total} records once")
    embeddings = np.empty_like(features, dtype=np.float32)
    embeddings[rows] = features
    return embeddings


def thumbnail_jpeg(record: ClipRecord) -> bytes:
    """The middle HR frame of the middle candidate, shrunk into ``THUMBNAIL_SIZE``, as JPEG."""
    image = Image.open(io.BytesIO(record.hr_jpeg[record.num_candidates // 2])).convert("RGB")
    image.thumbnail(THUMBNAIL_SIZE)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


def record_span(record: ClipRecord) -> tuple[str, float, float | None]:
    """(video id, start, end seconds) of a record's clip: its whole source (end unknown without fps)."""
    return record.video_id, 0.0, (record.num_frames / record.fps if record.fps > 0 else None)


def read_metadata(pattern: str, progress: bool = True
                  ) -> tuple[list[str], list[str], list[bytes], list[tuple[str, float, float | None]]]:
    """Clip ids, first captions, JPEG thumbnails and spans of every record, in record order."""
    source = TFRecordDataSource(pipeline.list_files(pattern, "val_files"))
    ids, captions, thumbnails, spans = [], [], [], []
    for i in tqdm(range(len(source)), desc="thumbnails", unit="video", disable=not progress):
        record = parse_clip_record(source[i])
        ids.append(record.clip_id)
        captions.append(record.texts[0])
        thumbnails.append(thumbnail_jpeg(record))
        spans.append(record_span(record))
    return ids, captions, thumbnails, spans


def build_index(config: ml_collections.ConfigDict, checkpoint: str, records: str, out: str,
                batch_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode every video of the ``records`` glob with the model of ``config`` restored from
    ``checkpoint``; write the index to ``out`` (process 0) and return its manifest. Each path is local
    or gs://."""
    config = index_config(config, records)
    model_cfg, _ = check_config(config)
    mesh = sharding.make_mesh(config.mesh)
    batch_size = config.eval_batch_size if batch_size is None else batch_size
    shards = math.lcm(sharding.data_parallel_size(mesh), jax.process_count())
    if batch_size <= 0 or batch_size % shards:
        raise SearchError(f"--batch_size={batch_size} must be a positive multiple of {shards} "
                          "(the batch shards of config.mesh and the process count)")
    variables, origin = restore_stage1_variables(config, model_cfg, mesh, checkpoint)
    embeddings = encode_records(HDVILA(model_cfg), variables, config, mesh, batch_size, progress)
    manifest = dict(source="records", checkpoint=storage.absolute(checkpoint), restored_from=origin,
                    records=storage.absolute(records), count=len(embeddings), dim=int(embeddings.shape[1]),
                    config=config.to_dict())
    if jax.process_index() == 0:
        ids, captions, thumbnails, spans = read_metadata(config.data.val_files, progress)
        manifest = save_index(out, embeddings, ids, captions, thumbnails, manifest, spans)
    multihost_utils.sync_global_devices("search index written")
    return manifest
