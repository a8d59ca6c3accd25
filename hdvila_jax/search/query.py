"""Text-to-video search over an index: encode queries with the text tower, rank exactly.

Ranking is an exact inner product (``jax.lax.top_k`` over ``embeddings @ query``) on the
default device (the accelerator when there is one). It costs O(N * D) per query: fine up to a
few million videos; beyond that use approximate search (ScaNN, or FAISS IVF-PQ / HNSW) over
the same ``embeddings.npy``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hdvila_jax.data.text import ThreadLocalTokenizer
from hdvila_jax.models import HDVILA, model_config_from_dict
from hdvila_jax.search import restore
from hdvila_jax.search.index import Index, SearchError
from hdvila_jax.train import sharding

# Queries only need the text tower: replicate the variables over all devices.
QUERY_MESH = dict(data=-1, fsdp=1)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One ranked video: 1-based ``rank``, index ``row``, clip ``id``, ``score`` and ``caption``."""

    rank: int
    row: int
    id: str
    score: float
    caption: str


@functools.partial(jax.jit, static_argnums=2)
def _top_k(embeddings: jax.Array, queries: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    return jax.lax.top_k(queries @ embeddings.T, k)


def top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: scores and rows ``[Q, min(k, N)]``, best first."""
    embeddings, queries = np.asarray(embeddings, np.float32), np.asarray(queries, np.float32)
    if embeddings.ndim != 2 or queries.ndim != 2 or embeddings.shape[1] != queries.shape[1]:
        raise SearchError(f"embeddings {embeddings.shape} and queries {queries.shape} must be [N, D] and [Q, D]")
    if k < 1:
        raise SearchError(f"--top must be at least 1, got {k}")
    if len(embeddings) == 0:
        raise SearchError("the index is empty")
    scores, rows = _top_k(jnp.asarray(embeddings), jnp.asarray(queries), min(k, len(embeddings)))
    return np.asarray(scores), np.asarray(rows)


def search(index: Index, query_embeddings: np.ndarray, top: int) -> list[list[Hit]]:
    """The ``top`` best videos of ``index`` for each row of ``query_embeddings`` ``[Q, D]``."""
    scores, rows = top_k(index.embeddings, query_embeddings, top)
    return [[Hit(rank=r + 1, row=int(row), id=index.ids[row], score=float(score), caption=index.captions[row])
             for r, (row, score) in enumerate(zip(query_rows, query_scores))]
            for query_rows, query_scores in zip(rows, scores)]


class TextEncoder:
    """The text tower of the model an index was built with: ``encoder(texts) -> [Q, D]``."""

    def __init__(self, config: ml_collections.ConfigDict, checkpoint: str):
        model_cfg = model_config_from_dict(config.model.to_dict())
        mesh = sharding.make_mesh(QUERY_MESH)
        self.variables, self.origin = restore.restore_variables(config, model_cfg, mesh, checkpoint)
        self.tokenizer = ThreadLocalTokenizer(config.data.vocab_file)
        self.max_len = config.data.max_txt_len
        model = HDVILA(model_cfg)
        self._encode = jax.jit(lambda variables, ids, mask: model.apply(
            variables, ids, mask, method=HDVILA.encode_text)[1])

    @classmethod
    def for_index(cls, index: Index, checkpoint: str | None = None) -> "TextEncoder":
        """The encoder of ``index``'s config and checkpoint (or ``checkpoint`` instead)."""
        return cls(ml_collections.ConfigDict(index.manifest["config"]), checkpoint or index.manifest["checkpoint"])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            raise SearchError("no query text given")
        ids, mask = zip(*(self.tokenizer.encode(text, self.max_len) for text in texts))
        return np.asarray(self._encode(self.variables, np.stack(ids), np.stack(mask)))


def search_text(index: Index, texts: Sequence[str], top: int, checkpoint: str | None = None) -> list[list[Hit]]:
    """The ``top`` best videos of ``index`` for each query text."""
    return search(index, TextEncoder.for_index(index, checkpoint)(texts), top)
