"""Command line of text-to-video search.

    python -m hdvila_jax.search index --config=configs/stage1.py:demo --checkpoint=DIR \
        --records='demo_data/records/train-*.tfrecord' --out=IDX [--batch_size=N]
    python -m hdvila_jax.search query --index=IDX "a red square moves left" ["a blue circle ..."] \
        [--top=5] [--png=hits.png] [--checkpoint=DIR]

``index`` encodes every video of the records with the model restored from the checkpoint (a
run's checkpoints dir, a step dir or converted variables) and writes the index directory;
``query`` ranks the indexed videos for each query text by exact inner product. Several
hosts: pass --coordinator_address/--num_processes/--process_id to ``index`` on every host.
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from hdvila_jax import multihost
from hdvila_jax.search.build import build_index
from hdvila_jax.search.index import SearchError, load_index
from hdvila_jax.search.query import search_text
from hdvila_jax.search.render import render_results
from hdvila_jax.train.config_checks import TrainConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "index: trainer config file[:variant].", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "index: the model checkpoint; query: overrides the index's.")
_RECORDS = flags.DEFINE_string("records", None, "index: glob of the clip-record TFRecords to index.")
_OUT = flags.DEFINE_string("out", None, "index: the index directory to write.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "index: global batch (default config.eval_batch_size).")
_INDEX = flags.DEFINE_string("index", None, "query: the index directory to search.")
_TOP = flags.DEFINE_integer("top", 5, "query: hits per query.")
_PNG = flags.DEFINE_string("png", None, "query: also draw the hits into this PNG.")


def _require(value, flag: str, command: str):
    if value is None or value == "":
        raise app.UsageError(f"{command} needs --{flag}")
    return value


def run_index(args: list[str]) -> None:
    if args:
        raise app.UsageError(f"index takes no positional arguments, got {args}")
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
    index = load_index(_require(_INDEX.value, "index", "query"))
    results = search_text(index, queries, _TOP.value, checkpoint=_CHECKPOINT.value)
    for query, hits in zip(queries, results):
        print(f'query: "{query}"')
        print(f"{'rank':>4}  {'id':<16} {'score':>7}  caption")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.id:<16} {hit.score:>7.4f}  {hit.caption}")
    if _PNG.value:
        width, height = render_results(_PNG.value, queries, results, index)
        print(f"wrote {_PNG.value} ({width}x{height})")


def main(argv: list[str]) -> None:
    commands = dict(index=run_index, query=run_query)
    if len(argv) < 2 or argv[1] not in commands:
        raise app.UsageError(f"the first argument must be a command: {' or '.join(commands)}")
    try:
        commands[argv[1]](argv[2:])
    except (SearchError, TrainConfigError) as err:
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    app.run(main)
