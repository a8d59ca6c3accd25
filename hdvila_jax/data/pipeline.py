"""The input pipeline: clip-record TFRecords -> per-process batches for the trainer.

    make_train_iterator(config, process_index, process_count) -> grain DatasetIterator
    make_eval_iterator(config, process_index, process_count, batch_size=None) -> DatasetIterator

`config.data` is a config of hdvila_jax/data/config.py; the crop (H, W) and the frames per clip
are the model's, `config.model.crop_size` and `config.model.num_frames`; `config.batch_size` is
the global batch, each process gets `batch_size // process_count` examples per batch. A batch is
a dict of numpy arrays:

    img_middle      uint8 [B, clips, H, W, 3]        HR middle frames, RGB, NHWC
    img_other       uint8 [B, clips, 6, H/4, W/4, 3]  LR neighbours: 3 before, then 3 after
    text_input_ids  int32 [B, L]                      [CLS] ... [SEP] [PAD]...; MLM-masked
                                                      when data.mlm_probability > 0
    text_input_mask int32 [B, L]
    mlm_labels      int32 [B, L]                      only when data.mlm_probability > 0:
                                                      original id at targets, -100 elsewhere
    video_index     int32 [B]                         stable id of the clip in its split
    valid           bool  [B]                         evaluation only: False on padding
    skipped_records int32 [B]                         training only: damaged records skipped
    skipped_shards  int32 [B]                         just before each example (unreadable
                                                      shards or shard tails); see skip_corrupt.py

for open-ended QA records (built with `--format msrvtt_qa|tgif_frameqa`, which store `answer_text`):

    qa_label           int32 [B]        index of the answer in data.ans2label, -1 outside it
                                        (an error in training)

and, only for multiple-choice records (`--format msrvtt_mc|tgif_mc`, which store `answer`):

    mc_text_input_ids  int32 [B, N, L]  every option ([CLS] ... [SEP], never MLM-masked)
    mc_text_input_mask int32 [B, N, L]
    mc_answer          int32 [B]        index of the correct option

(`text_input_ids` then holds option 0 in evaluation, like any record's first text). With
clips = data.train_n_clips (training) or data.inference_n_clips (evaluation). In training,
each example (HR and LR frames of all its clips) is flipped horizontally with probability
data.flip_prob, drawn from the example's generator; evaluation never flips.

Records are indexed once and read by random access through grain (`TFRecordDataSource`).
Process p takes records p, p + P, p + 2P, ... (disjoint and complete). Training shuffles
that shard with a fresh permutation each epoch and repeats forever; clip sampling, crop,
caption choice and MLM masking draw from a generator seeded by (seed, process, position in
the stream), so the stream is a pure function of the seed and the iterator's state is small:
`it.get_state()` returns a JSON-able dict and `it.set_state(state)` resumes exactly there
(orbax can also save it with grain's checkpoint handler). With data.num_workers > 0 the
examples are decoded and batched in that many worker processes (grain's mp_prefetch, each
with data.num_parallel_calls threads; batches come back through shared memory): worker w
makes batches from stream positions w, w + W, ..., so the stream is as deterministic but
differs with the number of workers, and a resume needs the same number. A damaged
record or unreadable shard is skipped, logged with its shard and byte offset, and counted
(`skipped_*`); in evaluation it is an error naming the shard and offset. Evaluation visits
every record of the split exactly once over all processes, pads every process to the same
number of full batches (`valid` marks real examples), and uses even clip spacing, a centre
crop and fixed masking seeded by (seed, video_index).
"""
from __future__ import annotations

import math

import grain
import ml_collections
import numpy as np
from absl import flags

from hdvila_jax import storage
from hdvila_jax.data import sampling
from hdvila_jax.data.answers import load_ans2label
from hdvila_jax.data.frames import decode_clip_frames
from hdvila_jax.data.records import parse_clip_record
from hdvila_jax.data.skip_corrupt import SkipCorrupt
from hdvila_jax.data.text import ThreadLocalTokenizer, mask_tokens
from hdvila_jax.data.tfrecord_source import CorruptRecord, TFRecordDataSource


def list_files(pattern: str, field: str) -> list[str]:
    """The sorted files matching a glob pattern of config field `field` (local or gs://)."""
    if not pattern:
        raise ValueError(f"config.data.{field} is empty; set it to a glob of clip-record shards")
    files = storage.glob(pattern)
    if not files:
        raise FileNotFoundError(f"config.data.{field}={pattern!r} matches no files")
    return files


class ExampleDecoder:
    """Turns (record bytes, valid) into one example's arrays (the per-example work)."""

    def __init__(self, config: ml_collections.ConfigDict, training: bool):
        data = config.data
        self.training = training
        self.n_clips = data.train_n_clips if training else data.inference_n_clips
        self.crop_hw = tuple(int(s) for s in config.model.crop_size)
        self.num_frm = int(config.model.num_frames)
        self.max_txt_len = data.max_txt_len
        self.mlm_probability = data.mlm_probability
        self.flip_prob = data.flip_prob
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"config.data.flip_prob must be in [0, 1], got {self.flip_prob}")
        self.seed = data.seed
        self.tokenizer = ThreadLocalTokenizer(data.vocab_file)
        self.ans2label_file = data.get("ans2label", "")
        self.ans2label = load_ans2label(self.ans2label_file) if self.ans2label_file else None

    def __call__(self, element: tuple[bytes | CorruptRecord, bool],
                 rng: np.random.Generator | None = None) -> dict | CorruptRecord:
        data, valid = element
        if isinstance(data, CorruptRecord):  # only the training source marks damage (see SkipCorrupt)
            return data
        record = parse_clip_record(data)
        if record.num_frm != self.num_frm:
            raise ValueError(f"clip {record.clip_id}: record built with num_frm={record.num_frm}, "
                             f"config.model.num_frames={self.num_frm}")
        frame_hw = (record.frame_height, record.frame_width)
        if self.training:
            candidates = sampling.random_middles(record.num_candidates, self.n_clips, rng)
            offset = sampling.random_crop_offset(frame_hw, self.crop_hw, rng)
            text = record.texts[int(rng.integers(len(record.texts)))]
            flip = self.flip_prob > 0 and rng.random() < self.flip_prob
        else:
            rng = np.random.default_rng([self.seed, record.video_index])
            candidates = sampling.even_middles(record.num_candidates, self.n_clips)
            offset = sampling.centre_crop_offset(frame_hw, self.crop_hw)
            text = record.texts[0]
            flip = False
        img_middle, img_other = decode_clip_frames(record, candidates, offset, self.crop_hw)
        if flip:  # width is the second-to-last axis of [n, H, W, 3] and [n, F-1, h, w, 3]
            img_middle = np.ascontiguousarray(img_middle[..., ::-1, :])
            img_other = np.ascontiguousarray(img_other[..., ::-1, :])
        input_ids, input_mask = self.tokenizer.encode(text, self.max_txt_len)
        example = {
            "img_middle": img_middle,
            "img_other": img_other,
            "text_input_ids": input_ids,
            "text_input_mask": input_mask,
            "video_index": np.int32(record.video_index),
        }
        if self.mlm_probability > 0:
            example["text_input_ids"], example["mlm_labels"] = mask_tokens(
                input_ids, self.tokenizer.special_ids, self.tokenizer.mask_id, self.tokenizer.vocab_size,
                self.mlm_probability, rng)
        if record.answer_text is not None:
            example["qa_label"] = np.int32(self._label(record))
        if record.answer is not None:
            options = [self.tokenizer.encode(option, self.max_txt_len) for option in record.texts]
            example["mc_text_input_ids"] = np.stack([ids for ids, _ in options])
            example["mc_text_input_mask"] = np.stack([mask for _, mask in options])
            example["mc_answer"] = np.int32(record.answer)
        if not self.training:
            example["valid"] = np.bool_(valid)
        return example


    def _label(self, record) -> int:
        """The class index of an open-ended question's answer (-1 outside the vocabulary)."""
        if self.ans2label is None:
            raise ValueError(f"question {record.clip_id}: open-ended QA records need config.data.ans2label "
                             "(the answer vocabulary json)")
        label = self.ans2label.get(record.answer_text, -1)
        if label < 0 and self.training:
            raise ValueError(f"question {record.clip_id}: training answer {record.answer_text!r} is not in "
                             f"config.data.ans2label={self.ans2label_file!r}; build the training records with "
                             "--unknown_answers skip")
        return label


def _per_process_batch(config: ml_collections.ConfigDict, process_count: int, batch_size: int | None) -> int:
    batch_size = config.batch_size if batch_size is None else batch_size
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count {process_count}")
    return batch_size // process_count


def _process_shard(pattern: str, field: str, process_index: int, process_count: int,
                   on_corrupt: str = "raise") -> tuple[grain.MapDataset, int]:
    """This process's records (every process_count-th) and the total number of records."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    source = TFRecordDataSource(list_files(pattern, field), on_corrupt)
    shard = grain.MapDataset.source(source)[process_index::process_count]
    if len(shard) == 0:
        raise ValueError(f"config.data.{field}: {len(source)} records cannot feed {process_count} processes")
    return shard, len(source)


def _read_options(data: ml_collections.ConfigDict) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=data.num_parallel_calls,
                             prefetch_buffer_size=data.prefetch_buffer_size)


def _process_seed(seed: int, process_index: int) -> int:
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def _mark_valid(data: bytes) -> tuple[bytes, bool]:
    return data, True


def make_train_iterator(config: ml_collections.ConfigDict, process_index: int,
                        process_count: int) -> grain.DatasetIterator:
    """An endless, shuffled, resumable iterator of this process's training batches."""
    data = config.data
    batch = _per_process_batch(config, process_count, None)
    seed = _process_seed(data.seed, process_index)
    shard, _ = _process_shard(data.train_files, "train_files", process_index, process_count, on_corrupt="mark")
    dataset = (shard
               .shuffle(seed=seed)
               .repeat(None)
               .map(_mark_valid)
               .random_map(ExampleDecoder(config, training=True), seed=seed)
               .to_iter_dataset(_read_options(data)))
    dataset = SkipCorrupt(dataset).batch(batch, drop_remainder=True)
    if data.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags (defaults outside an absl app)
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers,
                                                                   per_worker_buffer_size=data.per_worker_buffer_size))
    return iter(dataset)


class _PadTo:
    """Index -> (record, True) inside the shard, (first record, False) past its end."""

    def __init__(self, shard: grain.MapDataset):
        self.shard = shard

    def __call__(self, index: int) -> tuple[bytes, bool]:
        if index < len(self.shard):
            return self.shard[index], True
        return self.shard[0], False


def eval_batch_count(total: int, process_count: int, local_batch: int) -> int:
    """Batches of one pass over ``total`` records, each process reading every ``process_count``-th
    record in batches of ``local_batch`` (the last padded)."""
    return math.ceil(math.ceil(total / process_count) / local_batch)


def make_eval_iterator(config: ml_collections.ConfigDict, process_index: int, process_count: int,
                       batch_size: int | None = None) -> grain.DatasetIterator:
    """One pass over the validation records: every record exactly once across processes,
    each process padded to the same number of full batches (see `valid`)."""
    data = config.data
    batch = _per_process_batch(config, process_count, batch_size)
    shard, total = _process_shard(data.val_files, "val_files", process_index, process_count)
    num_batches = eval_batch_count(total, process_count, batch)
    dataset = (grain.MapDataset.range(num_batches * batch)
               .map(_PadTo(shard))
               .map(ExampleDecoder(config, training=False))
               .to_iter_dataset(_read_options(data))
               .batch(batch, drop_remainder=False))
    return iter(dataset)
