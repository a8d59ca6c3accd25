"""Text-to-video search with a trained HD-VILA model.

    python -m hdvila_jax.search index --checkpoint=runs/demo_stage1/checkpoints --videos=my_videos/ --out=my_index
    python -m hdvila_jax.search query --index=my_index "a dog catches a frisbee" --top=5 --json
    python -m hdvila_jax.search index --config=configs/stage1.py:demo --checkpoint=runs/demo/checkpoints \
        --records='demo_data/records/train-*.tfrecord' --out=runs/demo_index
    python -m hdvila_jax.search query --index=runs/demo_index "a red square moves left" --top=5 --png=hits.png

Python: ``build_index(config, checkpoint, records, out)``, ``build_video_index(encoder, videos, out)``
(an ``hdvila_jax.Encoder``), ``load_index(path)``,
``search_text(index, texts, top)`` (or ``search(index, query_embeddings, top)``).

Ranking is exact (brute-force inner product, O(N * D) per query). Beyond a few million videos
switch to approximate nearest-neighbour search over ``embeddings.npy``: ScaNN, or FAISS
IVF-PQ / HNSW (on GPU for large indexes), optionally sharding the index over devices.
"""
from hdvila_jax.search.build import build_index
from hdvila_jax.search.index import Index, SearchError, load_index, save_index
from hdvila_jax.search.query import Hit, search, search_text, text_encoder, top_k
from hdvila_jax.search.render import render_results
from hdvila_jax.search.video_files import list_videos
from hdvila_jax.search.videos import IndexSummary, build_video_index

__all__ = ["Hit", "Index", "IndexSummary", "SearchError", "build_index", "build_video_index", "list_videos",
           "load_index", "render_results", "save_index", "search", "search_text", "text_encoder", "top_k"]
