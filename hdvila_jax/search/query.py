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

from hdvila_jax.encoder import Encoder
from hdvila_jax.models import model_config_from_dict
from hdvila_jax.encoder import restore_stage1_variables
from hdvila_jax.search.index import Index, SearchError
from hdvila_jax import sharding

# Queries only need the text tower: replicate the variables over all devices.
QUERY_MESH = dict(data=-1, fsdp=1)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One ranked clip: 1-based ``rank``, index ``row``, clip ``id``, ``score``, ``caption``, and the
    video ``path`` with the ``start``/``end`` seconds it covers (None when the index does not know)."""

    rank: int
    row: int
    id: str
    score: float
    caption: str
    path: str = ""
    start: float | None = None
    end: float | None = None

    def to_json(self) -> dict:
        """``{"path", "start", "end", "score", "rank"}`` (and the clip ``id``)."""
        return dict(path=self.path, start=self.start, end=self.end, score=self.score, rank=self.rank, id=self.id)

    @property
    def time_range(self) -> str:
        """``"12.0-25.4 s"``, or "" without times."""
        if self.start is None:
            return ""
        return f"{self.start:.1f}-{self.end:.1f} s" if self.end is not None else f"from {self.start:.1f} s"


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
    return [[Hit(rank=r + 1, row=int(row), id=index.ids[row], score=float(score), caption=index.captions[row],
                 path=index.span(int(row))[0], start=index.span(int(row))[1], end=index.span(int(row))[2])
             for r, (row, score) in enumerate(zip(query_rows, query_scores))]
            for query_rows, query_scores in zip(rows, scores)]


def text_encoder(index: Index, checkpoint: str | None = None) -> Encoder:
    """The text tower of the model ``index`` was built with (or restored from ``checkpoint`` instead),
    its variables replicated on every device."""
    config = ml_collections.ConfigDict(index.manifest["config"])
    model_cfg = model_config_from_dict(config.model.to_dict())
    mesh = sharding.make_mesh(QUERY_MESH)
    variables, origin = restore_stage1_variables(config, model_cfg, mesh, checkpoint or index.manifest["checkpoint"])
    return Encoder(config, variables, mesh, origin=origin)


def search_text(index: Index, texts: Sequence[str], top: int, checkpoint: str | None = None) -> list[list[Hit]]:
    """The ``top`` best videos of ``index`` for each query text."""
    if not texts:
        raise SearchError("no query text given")
    return search(index, text_encoder(index, checkpoint).encode_texts(texts), top)
