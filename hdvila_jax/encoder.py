"""Embedding your own texts and video files with a trained HD-VILA model.

    from hdvila_jax import Encoder
    encoder = Encoder.from_checkpoint("runs/demo_stage1/checkpoints")   # config.json of the run
    texts = encoder.encode_texts(["a red circle moves left"])           # [1, D], L2-normalised
    videos = encoder.encode_videos(["a.mp4", "b.mov"], clip_seconds=10)
    videos[0].embeddings, videos[0].starts, videos[0].ends              # [clips, D], seconds

A video (or each ``clip_seconds`` window of it) is read exactly as ``data_pipelines.build_tfrecords
--geometry resize`` stores a clip and as evaluation reads its record back (``hdvila_jax.video.clips``):
the same frames, resize, JPEG round trip, even spread of ``data.inference_n_clips`` clips and centre
crop, so its embedding is the one retrieval evaluation computes for that clip's record. Batches are
padded to a fixed size that splits over the mesh of the local devices (variables sharded as the
trainer's evaluation shards them); compute runs in the config's ``model.dtype``. Checkpoints, run
configs, build.json files and video files may be local or ``gs://`` (a bucket video is read through
ranged reads, never downloaded whole: ``hdvila_jax.video.decode``).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from typing import Callable, Iterable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from hdvila_jax import config_files, sharding, storage, variables_io
from hdvila_jax.data.records import ClipRecord
from hdvila_jax.data.text import ThreadLocalTokenizer
from hdvila_jax.inference import encode_batches, make_encode_fn, padded_batches
from hdvila_jax.models import HDVILA, ModelConfig, model_config_from_dict
from hdvila_jax.video.clips import FrameOptions, clip_pixels, clip_windows, frames_clip, read_clip
from hdvila_jax.video.decode import VideoError, probe_video

RUN_CONFIG = "config.json"
Video = str | np.ndarray  # a file path (local or gs://), or decoded uint8 RGB frames [T, H, W, 3]


class EncoderError(ValueError):
    """Bad input to the Encoder: the message names the file, argument or config key."""


@dataclasses.dataclass
class EncodedVideo:
    """The clips of one input: ``embeddings[i]`` covers ``[starts[i], ends[i])`` seconds of ``source``.
    ``error`` says why a skipped input has no clips; ``skipped`` lists windows that failed."""

    source: str
    embeddings: np.ndarray  # float32 [clips, D]
    starts: np.ndarray  # float64 [clips]
    ends: np.ndarray  # float64 [clips]
    duration: float = 0.0
    error: str | None = None
    skipped: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class VideoClips:
    """What reading one input gave: its clip records and windows (or why it has none)."""

    source: str
    records: list[ClipRecord]
    windows: list[tuple[float, float]]
    duration: float = 0.0
    error: str | None = None
    skipped: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)


def find_run_config(checkpoint: str) -> str | None:
    """The ``config.json`` of the run a checkpoint belongs to, looked for in the checkpoint path and
    up to three folders above it (a run dir, its ``checkpoints/``, a step dir, its ``variables``);
    local or ``gs://``."""
    path = storage.absolute(checkpoint)
    for _ in range(4):
        if storage.isfile(storage.join(path, RUN_CONFIG)):
            return storage.join(path, RUN_CONFIG)
        path = storage.dirname(path)
    return None


def resolve_config(config: ml_collections.ConfigDict | str | None, checkpoint: str) -> ml_collections.ConfigDict:
    """``config`` (a ConfigDict, copied), a config file spec (``"configs/stage1.py:demo"``, a .json)
    or, when None, the run config found next to ``checkpoint``."""
    if isinstance(config, ml_collections.ConfigDict):
        return config.copy_and_resolve_references()
    if config:
        try:
            return config_files.load_config(config)
        except config_files.ConfigFileError as e:
            raise EncoderError(f"config={config!r}: {e}") from e
    found = find_run_config(checkpoint)
    if found is None:
        raise EncoderError(f"no {RUN_CONFIG} at or above checkpoint {checkpoint!r} (converted weights have none): "
                           "pass config=, e.g. 'configs/stage1.py:demo'")
    return config_files.load_config(found)


def restore_stage1_variables(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: jax.sharding.Mesh,
                             checkpoint: str, flag: str = "checkpoint") -> tuple[dict, str]:
    """``{'params', 'batch_stats'}`` of the stage-1 dual encoder from ``checkpoint`` (a run's
    checkpoints dir, a step dir or converted variables, of stage 1 or 2: the stage-1 part is taken)
    in their shardings over ``mesh``, and the directory they came from. Errors name ``--flag``."""
    if not checkpoint:
        raise EncoderError(f"--{flag} is empty: pass a checkpoints dir, a step dir or converted variables")
    if not storage.isdir(checkpoint):
        raise EncoderError(f"--{flag}={checkpoint!r} does not exist")
    target = variables_io.sharded_variable_shapes(config, model_cfg, mesh, stage=1)
    try:
        restored = variables_io.restore_variables(checkpoint, target, f"--{flag}")
    except variables_io.CheckpointError as err:
        raise EncoderError(str(err)) from err
    return restored.variables, restored.directory


def _resolve_vocab(config: ml_collections.ConfigDict, config_path: str | None) -> str:
    """``config.data.vocab_file`` where it exists; else, with the run's ``config_path``, that path
    relative to the run directory, or the vocab the run itself names (a config file given with a
    checkpoint trained on a vocab elsewhere, e.g. in a bucket); else as given."""
    vocab = config.data.vocab_file
    if storage.exists(vocab) or not config_path:
        return vocab
    candidates = [] if storage.is_remote(vocab) or os.path.isabs(vocab) else [
        storage.join(storage.dirname(config_path), vocab)]
    run_vocab = json.loads(storage.read_text(config_path)).get("data", {}).get("vocab_file")
    candidates += [run_vocab] if isinstance(run_vocab, str) and run_vocab else []
    return next((c for c in candidates if storage.exists(c)), vocab)


def _model_differences(config: ml_collections.ConfigDict, run_config: str | None) -> str:
    """The model fields where ``config`` differs from the run's ``config.json`` (``run_config``), as
    ``model.hidden_size 32 vs 64 (the run's)``; "" without a run config or a difference."""
    if run_config is None:
        return ""
    run_model = json.loads(storage.read_text(run_config)).get("model", {})
    mine = config.model.to_dict()
    keys = sorted(k for k in mine.keys() & run_model.keys() if mine[k] != run_model[k] and
                  not (isinstance(mine[k], (list, tuple)) and list(mine[k]) == run_model[k]))
    return ", ".join(f"model.{k} {mine[k]!r} vs {run_model[k]!r} (the run's)" for k in keys)


class Encoder:
    """Text and video embeddings ``[N, D]`` (L2-normalised) of a trained model's stage-1 towers."""

    def __init__(self, config: ml_collections.ConfigDict, variables: dict, mesh: jax.sharding.Mesh,
                 frame_options: FrameOptions | None = None, batch_size: int | None = None, origin: str = "",
                 workers: int | None = None):
        self.config = config
        self.model_cfg = model_config_from_dict(config.model.to_dict())
        self.mesh = mesh
        self.variables = variables
        self.origin = origin
        self.crop_hw = tuple(int(s) for s in config.model.crop_size)
        self.n_clips = int(config.data.inference_n_clips)
        num_frames = self.model_cfg.num_frames
        self.frame_options = (frame_options or FrameOptions.for_crop(self.crop_hw, num_frames)).validate()
        if self.frame_options.num_frm != num_frames:
            raise EncoderError(f"frame options num_frm={self.frame_options.num_frm} differs from "
                               f"config.model.num_frames={num_frames}")
        shards = sharding.data_parallel_size(mesh)
        batch_size = int(config.get("eval_batch_size", shards) if batch_size is None else batch_size)
        self.batch_size = max(shards, -(-batch_size // shards) * shards)  # rounded up to split over the mesh
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.tokenizer = ThreadLocalTokenizer(config.data.vocab_file)
        model = HDVILA(self.model_cfg)
        self._encoders = {tower: make_encode_fn(model, (tower,)) for tower in ("text", "video")}

    @classmethod
    def from_checkpoint(cls, checkpoint: str, config: ml_collections.ConfigDict | str | None = None, *,
                        frame_options: FrameOptions | str | dict | None = None, batch_size: int | None = None,
                        workers: int | None = None, mesh: dict | None = None) -> "Encoder":
        """The model of ``config`` (a ConfigDict, ``"configs/stage1.py:variant"``, a config.json; default:
        the run's config.json beside ``checkpoint``) restored from ``checkpoint`` (a run's checkpoints
        dir, a step dir or converted variables) onto the local devices. ``frame_options``: how clips are
        stored (a FrameOptions, the ``<split>_build.json`` of records to match, or a dict of fields
        changed from the default: frames with the paper's margins around ``model.crop_size``). ``mesh``: axes sizes (default ``config.mesh``)."""
        if checkpoint and not storage.exists(checkpoint):
            raise EncoderError(f"checkpoint {checkpoint!r} does not exist")
        config_path = find_run_config(checkpoint)
        explicit = config is not None
        config = resolve_config(config, checkpoint)
        for key in ("model", "data", "mesh"):
            if key not in config:
                raise EncoderError(f"the config lacks '{key}': pass a trainer config (configs/*.py[:variant])")
        config.data.vocab_file = storage.absolute(_resolve_vocab(config, config_path))
        if isinstance(frame_options, str):
            try:
                frame_options = FrameOptions.from_build_json(frame_options)
            except (OSError, ValueError) as e:
                raise EncoderError(f"frame_options={frame_options!r}: {e}") from e
        if isinstance(frame_options, dict):
            try:
                frame_options = FrameOptions.for_crop(tuple(config.model.crop_size), int(config.model.num_frames),
                                                      **frame_options)
            except (TypeError, ValueError) as e:
                raise EncoderError(f"frame_options={frame_options!r}: {e}") from e
        model_cfg = model_config_from_dict(config.model.to_dict())
        device_mesh = sharding.make_mesh(mesh or config.mesh, devices=jax.local_devices())
        try:
            variables, origin = restore_stage1_variables(config, model_cfg, device_mesh, checkpoint)
        except EncoderError as err:
            differences = _model_differences(config, config_path) if explicit else ""
            if not differences:
                raise
            raise EncoderError(f"the config does not match this checkpoint ({differences}): {err}") from err
        return cls(config, variables, device_mesh, frame_options, batch_size, origin, workers)

    @property
    def dim(self) -> int:
        """Width D of the embeddings."""
        return int(self.model_cfg.hidden_size)

    def _encode(self, tower: str, arrays: dict[str, np.ndarray], count: int, desc: str = "",
                progress: bool = False) -> np.ndarray:
        """The ``[count, D]`` features of ``tower`` ("text" or "video") for ``arrays``, in fixed-size
        batches padded to split over the mesh."""
        batches = tqdm(padded_batches(arrays, count, self.batch_size), total=-(-count // self.batch_size),
                       desc=desc, unit="batch", disable=not progress)
        features = encode_batches(self._encoders[tower], self.variables, batches, self.mesh, tuple(arrays))
        return np.asarray(features[f"{tower}_features"], np.float32)

    def encode_texts(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Normalised text embeddings float32 ``[len(texts), D]`` (``data.max_txt_len`` tokens). A bare
        string is refused (it would be one text per character): pass ``[text]``."""
        if isinstance(texts, str):
            raise EncoderError(f"encode_texts takes a list of strings, not one string: pass [{texts[:40]!r}]")
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise EncoderError("encode_texts takes a list of strings")
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids, mask = (np.stack(x) for x in zip(*(self.tokenizer.encode(t, self.config.data.max_txt_len)
                                                for t in texts)))
        return self._encode("text", dict(text_input_ids=ids, text_input_mask=mask), len(texts), "texts",
                            progress)

    def embed_records(self, records: Sequence[ClipRecord]) -> np.ndarray:
        """Normalised video embeddings ``[len(records), D]`` of in-memory (or parsed) clip records, each
        cropped and spread like evaluation reads it."""
        if not records:
            return np.zeros((0, self.dim), np.float32)
        pixels = [clip_pixels(record, self.crop_hw) for record in records]
        middle, other = np.stack([p[0] for p in pixels]), np.stack([p[1] for p in pixels])
        return self._encode("video", dict(img_middle=middle, img_other=other), len(records))

    def read_video(self, video: Video, clip_seconds: float | None = None, stride_seconds: float | None = None,
                   fps: float = 0.0, name: str | None = None) -> VideoClips:
        """The clip records of one input (its error instead when it cannot be read). A file is cut into
        ``clip_seconds`` windows every ``stride_seconds`` (``hdvila_jax.video.clips.clip_windows``; None:
        the whole file is one clip); decoded frames are one clip, ``fps`` only dates it."""
        if isinstance(video, np.ndarray):
            source = name or "array"
            try:
                record = frames_clip(video, self.frame_options, self.n_clips, source, fps)
            except VideoError as e:
                return VideoClips(source, [], [], error=str(e))
            end = len(video) / fps if fps else 0.0
            return VideoClips(source, [record], [(0.0, end)], duration=end)
        source = str(video)
        try:
            info = probe_video(source)
        except VideoError as e:
            return VideoClips(source, [], [], error=str(e))
        records, windows, skipped = [], [], []
        whole = clip_seconds is None
        for start, end in clip_windows(info.start_time, info.end_time, clip_seconds, stride_seconds):
            try:
                records.append(read_clip(source, None if whole else (start, end), self.frame_options, self.n_clips))
                windows.append((start, end))
            except VideoError as e:
                skipped.append((start, end, str(e)))
        duration = info.end_time - info.start_time
        if not records:
            reason = skipped[0][2] if skipped else "no clips"
            return VideoClips(source, [], [], duration=duration, error=reason, skipped=skipped)
        return VideoClips(source, records, windows, duration=duration, skipped=skipped)

    def read_videos(self, videos: Iterable[Video], clip_seconds: float | None = None,
                    stride_seconds: float | None = None, fps: float = 0.0) -> Iterator[VideoClips]:
        """``read_video`` of each input in order, ``workers`` inputs decoded at a time in threads."""
        clip_seconds = clip_seconds or None  # 0: whole files, as on the command line
        read: Callable[[Video], VideoClips] = lambda v: self.read_video(v, clip_seconds, stride_seconds, fps)
        videos = iter(videos)
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            pending = [pool.submit(read, v) for v in _take(videos, 2 * self.workers)]
            while pending:
                done = pending.pop(0).result()
                pending.extend(pool.submit(read, v) for v in _take(videos, 1))
                yield done

    def encode_videos(self, videos: Sequence[Video], clip_seconds: float | None = None,
                      stride_seconds: float | None = None, fps: float = 0.0, skip_errors: bool = False,
                      progress: bool = True) -> list[EncodedVideo]:
        """One EncodedVideo per input (a file path or decoded frames ``[T, H, W, 3]`` with ``fps``): the
        embeddings of its clips with their start and end seconds. A file that cannot be used (unreadable,
        no video stream, too short for one clip) raises EncoderError naming it, or with
        ``skip_errors`` comes back with no clips and ``error`` set. ``clip_seconds`` None or 0: one clip
        per file. A bare path or a single frames array is refused: pass ``[video]``."""
        if isinstance(videos, (str, os.PathLike)) or (isinstance(videos, np.ndarray) and videos.ndim == 4):
            raise EncoderError("encode_videos takes a list of videos (file paths or frame arrays), not one: "
                               "pass [video]")
        results: list[EncodedVideo] = []
        pending: list[tuple[int, ClipRecord]] = []

        def flush(limit: int) -> None:
            while len(pending) >= limit and pending:
                chunk = pending[:self.batch_size]
                del pending[:self.batch_size]
                for (row, _), embedding in zip(chunk, self.embed_records([r for _, r in chunk])):
                    results[row].embeddings = np.concatenate([results[row].embeddings, embedding[None]])

        videos = list(videos)
        for clips in tqdm(self.read_videos(videos, clip_seconds, stride_seconds, fps), total=len(videos),
                          desc="videos", unit="video", disable=not progress):
            if clips.error is not None and not skip_errors:
                raise EncoderError(f"{clips.source}: {clips.error}")
            starts = np.asarray([w[0] for w in clips.windows], np.float64)
            ends = np.asarray([w[1] for w in clips.windows], np.float64)
            results.append(EncodedVideo(clips.source, np.zeros((0, self.dim), np.float32), starts, ends,
                                        clips.duration, clips.error, clips.skipped))
            pending.extend((len(results) - 1, record) for record in clips.records)
            flush(self.batch_size)
        flush(1)
        return results


def _take(iterator: Iterator, count: int) -> list:
    """Up to ``count`` next items of ``iterator``."""
    out = []
    for item in iterator:
        out.append(item)
        if len(out) == count:
            break
    return out
