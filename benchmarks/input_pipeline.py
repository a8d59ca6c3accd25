"""Input pipeline speed: pre-decoded TFRecords vs decoding the MP4 per example (the original).

  python -m benchmarks.input_pipeline [--quick] [--json PATH] [--workdir DIR] [--bucket gs://BUCKET/PREFIX]

Synthesises a few 30 fps videos (720p; 360p with --quick), builds clip records from them,
then measures examples/s and MB/s of
  records:  hdvila_jax.data.pipeline.make_train_iterator (JPEG decode + crop), in N threads of
            the training process, or in N grain worker processes (data.num_workers, 1 thread each);
  original: per example, open the MP4 with PyAV, seek to each sampled clip, decode its 7
            frames at stride 12, random crop, bicubic 1/4 resize of the 6 neighbours
            (the reference dataset's work, in N processes).
With --bucket the records are also uploaded there and read back from the bucket (the same reader:
one ranged GET per record); set STORAGE_EMULATOR_HOST to measure against an emulator.
Both produce 2 clips per example of a 640x1024 HR crop + 6 LR 160x256 frames (a 320x512 crop
with --quick). MB/s counts the bytes read from disk per second (records, or MP4 bytes of the
decoded span for the original) and the uint8 pixels produced per second.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time

import av
import ml_collections
import numpy as np

from data_pipelines import build_tfrecords
from data_pipelines.synthetic_videos import COLOURS, DIRECTIONS, SHAPES, MovingShape, write_moving_shape_video

NUM_FRM, RATE, N_CLIPS = 7, 12, 2


def _settings(quick: bool) -> dict:
    if quick:
        return dict(frame=(360, 640), crop=(320, 512), videos=2, seconds=4.0, batch=2, measure_s=5.0)
    return dict(frame=(720, 1280), crop=(640, 1024), videos=4, seconds=10.0, batch=4, measure_s=20.0)


def make_videos(workdir: str, s: dict) -> list[str]:
    """Writes the benchmark MP4s (libx264, 30 fps, a keyframe every 2 s) unless present."""
    paths = []
    os.makedirs(os.path.join(workdir, "videos"), exist_ok=True)
    with open(os.path.join(workdir, "ann.jsonl"), "w") as f:
        for i in range(s["videos"]):
            content = MovingShape(list(COLOURS)[i % len(COLOURS)], SHAPES[i % len(SHAPES)],
                                  list(DIRECTIONS)[i % len(DIRECTIONS)])
            path = os.path.join(workdir, "videos", f"v{i}.mp4")
            if not os.path.exists(path):
                write_moving_shape_video(path, content, int(30 * s["seconds"]), *s["frame"], fps=30, seed=i,
                                         gop_size=60)
            paths.append(path)
            f.write(json.dumps({"clip_id": f"v{i}", "text": content.caption}) + "\n")
    with open(os.path.join(workdir, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "moves",
                           *COLOURS, *SHAPES, *DIRECTIONS]) + "\n")
    return paths


def build_records(workdir: str, s: dict) -> dict:
    """Builds the records afresh (so the build time is measured too)."""
    shutil.rmtree(os.path.join(workdir, "records"), ignore_errors=True)
    return build_tfrecords.build(build_tfrecords.parse_args([
        "--videos", os.path.join(workdir, "videos"), "--annotations", os.path.join(workdir, "ann.jsonl"),
        "--output", os.path.join(workdir, "records"), "--num_shards", "1", "--workers", "2",
        "--frame_size", str(s["frame"][0]), str(s["frame"][1]), "--sample_rate", str(RATE)]))


def upload_records(workdir: str, bucket: str) -> str:
    """Copy the records and their sidecars to ``bucket``; returns the glob of the uploaded shards."""
    from hdvila_jax import storage
    for local in storage.glob(os.path.join(workdir, "records", "*")):
        storage.copy(local, storage.join(bucket, "records", os.path.basename(local)))
    return storage.join(bucket, "records", "train-*.tfrecord")


def measure_records(workdir: str, s: dict, threads: int, workers: int, bytes_per_record: float,
                    train_files: str = "") -> dict:
    """The training reader with ``threads`` decoding threads in each of ``workers`` processes (0: in
    this one), reading ``train_files`` (default: the local records)."""
    from hdvila_jax.data.config import get_data_config
    from hdvila_jax.data.pipeline import make_train_iterator
    data = get_data_config("paper", root=workdir)
    data.train_files = train_files or os.path.join(workdir, "records", "train-*.tfrecord")
    data.num_parallel_calls = threads
    data.num_workers = workers
    data.prefetch_buffer_size = 2 * threads * s["batch"]
    config = ml_collections.ConfigDict({"batch_size": s["batch"], "data": data,
                                        "model": {"crop_size": s["crop"], "num_frames": NUM_FRM}})
    iterator = make_train_iterator(config, 0, 1)
    for _ in range(2 if workers else 1):  # warm-up: threads or worker processes, tokenizer, first reads
        next(iterator)
    count, pixels, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < s["measure_s"]:
        batch = next(iterator)
        count += s["batch"]
        pixels += batch["img_middle"].nbytes + batch["img_other"].nbytes
    elapsed = time.perf_counter() - start
    iterator.close()
    path = f"records, {workers} processes" if workers else f"records, {threads} threads"
    path = f"bucket {path}" if train_files else path
    return dict(path=path, workers=max(threads, workers), examples_per_s=count / elapsed,
                read_mb_per_s=count * bytes_per_record / elapsed / 1e6, pixel_mb_per_s=pixels / elapsed / 1e6)


def _decode_example(args: tuple[str, int, tuple[int, int], tuple[int, int], int]) -> tuple[int, int]:
    """The reference's per-example work; returns (bytes of MP4 spanned, pixel bytes produced)."""
    import tensorflow as tf
    path, num_frames, frame_hw, crop_hw, seed = args
    rng = np.random.default_rng(seed)
    half = (NUM_FRM - 1) // 2
    middles = np.sort(rng.choice(np.arange(half * RATE, num_frames - half * RATE), N_CLIPS, replace=False))
    wanted = sorted({int(m + k * RATE) for m in middles for k in range(-half, half + 1)})
    frames, read_bytes = {}, 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        for m in middles:
            first, last = int(m - half * RATE), int(m + half * RATE)
            container.seek(int(first / rate / stream.time_base), stream=stream, backward=True)
            reached_last = False
            for packet in container.demux(stream):
                read_bytes += packet.size
                for frame in packet.decode():
                    index = int(round(frame.pts * stream.time_base * rate))
                    if index in wanted and first <= index <= last:
                        frames[index] = frame.to_ndarray(format="rgb24")
                    reached_last = reached_last or index >= last
                if reached_last:
                    break
    y = int(rng.integers(0, frame_hw[0] - crop_hw[0] + 1))
    x = int(rng.integers(0, frame_hw[1] - crop_hw[1] + 1))
    pixels = 0
    for m in middles:
        clip = np.stack([frames[int(m + k * RATE)][y:y + crop_hw[0], x:x + crop_hw[1]]
                         for k in range(-half, half + 1)])
        others = np.delete(clip, half, axis=0)
        lr = tf.image.resize(others, (crop_hw[0] // 4, crop_hw[1] // 4), method="bicubic")
        lr = tf.cast(tf.clip_by_value(tf.round(lr), 0, 255), tf.uint8).numpy()
        pixels += clip[half].nbytes + lr.nbytes
    return read_bytes, pixels


def measure_original(paths: list[str], s: dict, workers: int) -> dict:
    num_frames = {p: sum(1 for _ in av.open(p).demux(video=0)) - 1 for p in paths}
    jobs = ((paths[i % len(paths)], num_frames[paths[i % len(paths)]], s["frame"], s["crop"], i)
            for i in range(10 ** 9))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.imap(_decode_example, jobs, chunksize=1)
        next(results)  # warm-up
        count, read, pixels, start = 0, 0, 0, time.perf_counter()
        while time.perf_counter() - start < s["measure_s"]:
            r, p = next(results)
            count, read, pixels = count + 1, read + r, pixels + p
        elapsed = time.perf_counter() - start
        pool.terminate()
    return dict(path="original (PyAV per example)", workers=workers, examples_per_s=count / elapsed,
                read_mb_per_s=read / elapsed / 1e6, pixel_mb_per_s=pixels / elapsed / 1e6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small videos and short runs (CI)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--workdir", default="/tmp/hdvila_input_benchmark")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="threads / processes to try")
    parser.add_argument("--bucket", default="", help="also read the records from here (gs://BUCKET/PREFIX)")
    args = parser.parse_args(argv)
    s = _settings(args.quick)
    workdir = os.path.join(args.workdir, "quick" if args.quick else "paper")
    start = time.time()
    paths = make_videos(workdir, s)
    print(f"videos ready in {time.time() - start:.0f}s")
    start = time.time()
    report = build_records(workdir, s)
    build_s = time.time() - start
    remote = upload_records(workdir, args.bucket) if args.bucket else ""
    rows = []
    for workers in args.workers:
        rows.append(measure_records(workdir, s, workers, 0, report["bytes_per_record"]))
        rows.append(measure_records(workdir, s, 1, workers, report["bytes_per_record"]))
        if remote:
            rows.append(measure_records(workdir, s, workers, 0, report["bytes_per_record"], remote))
            rows.append(measure_records(workdir, s, 1, workers, report["bytes_per_record"], remote))
        rows.append(measure_original(paths, s, workers))
    header = f"{'path':<37}{'workers':>8}{'examples/s':>12}{'read MB/s':>11}{'pixel MB/s':>12}"
    print(f"\nframes {s['frame'][0]}x{s['frame'][1]}, crop {s['crop'][0]}x{s['crop'][1]} + 6 LR, "
          f"{N_CLIPS} clips/example, {os.cpu_count()} CPUs; record {report['bytes_per_record'] / 1e6:.2f} MB/clip; "
          f"build {report['records']} clips in {build_s:.0f}s (2 workers, incl. start-up)")
    print(header)
    for r in rows:
        print(f"{r['path']:<37}{r['workers']:>8}{r['examples_per_s']:>12.2f}{r['read_mb_per_s']:>11.1f}"
              f"{r['pixel_mb_per_s']:>12.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(settings={k: v for k, v in s.items()}, cpus=os.cpu_count(),
                           bytes_per_record=report["bytes_per_record"], build_s=build_s, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
