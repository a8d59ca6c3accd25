"""Text-to-video search with a trained HD-VILA model.

    python -m hdvila_jax.search index --config=configs/stage1.py:demo --checkpoint=runs/demo/checkpoints \
        --records='demo_data/records/train-*.tfrecord' --out=runs/demo_index
    python -m hdvila_jax.search query --index=runs/demo_index "a red square moves left" --top=5 --png=hits.png

Python: ``build_index(config, checkpoint, records, out)``, ``load_index(path)``,
``search_text(index, texts, top)`` (or ``search(index, query_embeddings, top)``).

Ranking is exact (brute-force inner product, O(N * D) per query). Beyond a few million videos
switch to approximate nearest-neighbour search over ``embeddings.npy``: ScaNN, or FAISS
IVF-PQ / HNSW (on GPU for large indexes), optionally sharding the index over devices.
"""
from hdvila_jax.search.build import build_index
from hdvila_jax.search.index import Index, SearchError, load_index, save_index
from hdvila_jax.search.query import Hit, TextEncoder, search, search_text, top_k
from hdvila_jax.search.render import render_results

__all__ = ["Hit", "Index", "SearchError", "TextEncoder", "build_index", "load_index", "render_results",
           "save_index", "search", "search_text", "top_k"]
