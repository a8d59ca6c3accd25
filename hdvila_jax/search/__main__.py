"""Command line of text-to-video search.

    python -m hdvila_jax.search index --checkpoint=DIR --videos=FOLDER_OR_GLOB --out=IDX \
        [--config=configs/stage1.py:demo] [--clip_seconds=13.4] [--stride_seconds=S] [--batch_size=N]
    python -m hdvila_jax.search index --config=configs/stage1.py:demo --checkpoint=DIR \
        --records='demo_data/records/train-*.tfrecord' --out=IDX [--batch_size=N]
    python -m hdvila_jax.search query --index=IDX "a red square moves left" ["a blue circle ..."] \
        [--top=5] [--json] [--png=hits.png] [--checkpoint=DIR]

``index --videos`` cuts every video file (a folder: all video files below it; or a glob) into clips
of --clip_seconds every --stride_seconds (0: one clip per file), encodes them with the model restored
from the checkpoint (a run's checkpoints dir, a step dir or converted variables; its config is the
run's config.json unless --config is given) and writes the index directory; it ends with
``N videos, M clips indexed, K skipped`` and names each skipped file and why. Rerunning it resumes
(finished files are not encoded again). ``index --records`` encodes every video of clip records
(several hosts: pass --coordinator_address/--num_processes/--process_id on every host).
``query`` ranks the indexed clips for each query text by exact inner product; --json prints, per
query, its hits as ``{"path", "start", "end", "score", "rank"}`` (seconds). Every path (checkpoint,
videos, records, index, PNG) may be a ``gs://`` one.
"""

import json
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from hdvila_jax import cli_errors, multihost
from hdvila_jax.encoder import Encoder, EncoderError
from hdvila_jax.search.build import build_index
from hdvila_jax.search.index import SearchError, load_index
from hdvila_jax.search.query import search_text
from hdvila_jax.search.render import render_results
from hdvila_jax.search.videos import DEFAULT_CLIP_SECONDS, build_video_index
from hdvila_jax.tasks.base import TrainConfigError
from hdvila_jax.video.clips import FrameOptions

_CONFIG = config_flags.DEFINE_config_file("config", None, "index: trainer config file[:variant] (--videos: default "
                                          "the checkpoint run's config.json).", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "index: the model checkpoint (local or gs://); query: "
                                  "overrides the index's.")
_RECORDS = flags.DEFINE_string("records", None, "index: glob of the clip-record TFRecords to index "
                               "(local or gs://).")
_VIDEOS = flags.DEFINE_string("videos", None, "index: a folder of video files (all below it) or a glob of "
                              "them, local or gs://.")
_CLIP_SECONDS = flags.DEFINE_float("clip_seconds", DEFAULT_CLIP_SECONDS,
                                   "index --videos: clip length in seconds (HD-VILA-100M's mean); 0: whole files.")
_STRIDE_SECONDS = flags.DEFINE_float("stride_seconds", None, "index --videos: seconds between clip starts "
                                     "(default --clip_seconds).")
_FRAME_SIZE = flags.DEFINE_list("frame_size", None, "index --videos: H,W of the stored frames the crop is taken "
                                "from (default: the paper's margins around the config's crop).")
_SAMPLE_RATE = flags.DEFINE_integer("sample_rate", FrameOptions.sample_rate,
                                    "index --videos: frame stride between a clip's frames, as the records' builder.")
_JSON = flags.DEFINE_bool("json", False, "query: print JSON: a list of {query, hits: [{path, start, end, score, rank, id}]}.")
_OUT = flags.DEFINE_string("out", None, "index: the index directory to write (local or gs://).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "index: global batch (default config.eval_batch_size).")
_INDEX = flags.DEFINE_string("index", None, "query: the index directory to search (local or gs://).")
_TOP = flags.DEFINE_integer("top", 5, "query: hits per query.")
_PNG = flags.DEFINE_string("png", None, "query: also draw the hits into this PNG (local or gs://).")
cli_errors.define_debug_flag()


def _require(value, flag: str, command: str):
    if value is None or value == "":
        raise app.UsageError(f"{command} needs --{flag}")
    return value


def run_video_index() -> None:
    if jax.process_count() > 1:
        raise app.UsageError("index --videos runs in one process (its devices are used); drop the multi-host flags")
    overrides = {"sample_rate": _SAMPLE_RATE.value}
    if _FRAME_SIZE.value:
        if len(_FRAME_SIZE.value) != 2:
            raise app.UsageError(f"--frame_size takes H,W, got {','.join(_FRAME_SIZE.value)}")
        overrides.update(frame_height=int(_FRAME_SIZE.value[0]), frame_width=int(_FRAME_SIZE.value[1]))
    encoder = Encoder.from_checkpoint(_require(_CHECKPOINT.value, "checkpoint", "index"), _CONFIG.value,
                                      batch_size=_BATCH_SIZE.value, frame_options=overrides)
    clip_seconds = _CLIP_SECONDS.value or None
    manifest, summary = build_video_index(encoder, _VIDEOS.value, _require(_OUT.value, "out", "index"), clip_seconds,
                                          _STRIDE_SECONDS.value, manifest=dict(checkpoint=_CHECKPOINT.value))
    if summary.reused:
        print(f"resumed: {summary.reused} files read back from {_OUT.value}/work")
    print(summary.line())
    print(f"index of {manifest['count']} clips (dim {manifest['dim']}) with {manifest['restored_from']} in {_OUT.value}")


def run_index(args: list[str]) -> None:
    if args:
        raise app.UsageError(f"index takes no positional arguments, got {args}")
    if (_VIDEOS.value is None) == (_RECORDS.value is None):
        raise app.UsageError("index needs exactly one of --videos (video files) or --records (clip records)")
    if _VIDEOS.value is not None:
        run_video_index()
        return
    config = _require(_CONFIG.value, "config", "index")
    multihost.initialize_from_flags()
    manifest = build_index(config, _require(_CHECKPOINT.value, "checkpoint", "index"),
                           _require(_RECORDS.value, "records", "index"), _require(_OUT.value, "out", "index"),
                           batch_size=_BATCH_SIZE.value)
    if jax.process_index() == 0:
        print(f"indexed {manifest['count']} videos (dim {manifest['dim']}) with {manifest['restored_from']} "
              f"into {_OUT.value}")


def run_query(queries: list[str]) -> None:
    if not queries:
        raise app.UsageError('query needs at least one query text: query --index=IDX "a red circle moves left"')
    empty = [str(i) for i, query in enumerate(queries, 1) if not query.strip()]
    if empty:
        raise SearchError(f"query {', '.join(empty)} of {len(queries)} is empty: give each query some text")
    index = load_index(_require(_INDEX.value, "index", "query"))
    results = search_text(index, queries, _TOP.value, checkpoint=_CHECKPOINT.value)
    if _JSON.value:
        print(json.dumps([dict(query=query, hits=[hit.to_json() for hit in hits])
                          for query, hits in zip(queries, results)], indent=1))
    for query, hits in zip(queries, results) if not _JSON.value else ():
        print(f'query: "{query}"')
        print(f"{'rank':>4}  {'score':>7}  {'time':>13}  video / clip  caption")
        for hit in hits:
            name = hit.path if hit.start is not None else hit.id
            print(f"{hit.rank:>4}  {hit.score:>7.4f}  {hit.time_range:>13}  {name}  {hit.caption}".rstrip())
    if _PNG.value:
        width, height = render_results(_PNG.value, queries, results, index)
        print(f"wrote {_PNG.value} ({width}x{height})", file=sys.stderr if _JSON.value else sys.stdout)


def main(argv: list[str]) -> None:
    """Run ``index`` or ``query`` (see the module docstring); a user's mistake is one ``error:`` line."""
    commands = dict(index=run_index, query=run_query)
    if len(argv) < 2 or argv[1] not in commands:
        raise app.UsageError(f"the first argument must be a command: {' or '.join(commands)}")
    with cli_errors.user_errors(SearchError, EncoderError, TrainConfigError):
        commands[argv[1]](argv[2:])


if __name__ == "__main__":
    app.run(main)
