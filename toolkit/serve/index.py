"""Exact top-k cosine search over the catalog, four times less memory traffic than a full scan.

A full scan reads the whole float32 catalog (60,000 x 1024 = 245 MB) for every batch of queries:
on this machine that is memory-bound at 10-25 ms, too slow for a 25 ms p99 under load. This index
gives the same answer as the full scan (toolkit.recommend.search) by filter and refine:

1. Rotate the space by the eigenvectors of the catalog's second moment (an orthogonal rotation
   keeps every dot product). The first `head` rotated dimensions carry most of the energy
   (96.7% at 256 of 1024 dims for Exp6's embeddings).
2. Scan only the head: h = q_head . c_head (a quarter of the bytes). By Cauchy-Schwarz the rest
   of the dot product lies within +-|q_tail| |c_tail|, so every item has a lower and an upper
   bound on its true score.
3. The k-th largest lower bound is a score the true top k all reach; only items whose upper bound
   reaches it can be in the top k. Those candidates (a few hundred at the median) are rescored
   exactly against the original float32 vectors, and the top k taken with the same tie order as
   the full scan (higher similarity, then lower catalog index).

The bounds carry a slack far above float32 rounding, so the rotation's rounding can only add
candidates, never drop one. A query unlike the catalog simply gets more candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEAD_DIMS = 256
SLACK = 1e-4  # on scores in [-1, 1]; float32 rounding of the rotated products is ~1e-6


@dataclass
class ExactIndex:
    vectors: np.ndarray  # float32 [M,D], L2-normalised, the original catalog (exact rescoring)
    rotation: np.ndarray  # float32 [D,D], orthogonal
    head: np.ndarray  # float32 [M,H], rotated catalog, first H dims (the scan)
    tail_norms: np.ndarray  # float32 [M], |rotated catalog, dims H..D|

    @classmethod
    def build(cls, vectors: np.ndarray, head_dims: int = HEAD_DIMS) -> ExactIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        moment = (vectors.T @ vectors).astype(np.float64) / max(len(vectors), 1)  # eigh keeps V orthogonal
        eigenvalues, eigenvectors = np.linalg.eigh(moment)
        rotation = np.ascontiguousarray(eigenvectors[:, np.argsort(eigenvalues)[::-1]], dtype=np.float32)
        head_dims = min(head_dims, vectors.shape[1])
        rotated = vectors @ rotation
        return cls(
            vectors,
            rotation,
            np.ascontiguousarray(rotated[:, :head_dims]),
            np.linalg.norm(rotated[:, head_dims:], axis=1).astype(np.float32),
        )

    @property
    def head_energy(self) -> float:
        """Share of the catalog's squared norm in the scanned dims."""
        total = float((self.vectors.astype(np.float64) ** 2).sum())
        return float((self.head.astype(np.float64) ** 2).sum()) / total if total else 1.0

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices [Q,k], similarities [Q,k], candidates rescored per query [Q])."""
        k = min(k, len(self.vectors))
        rotated = np.asarray(queries, np.float32) @ self.rotation
        head_scores = rotated[:, : self.head.shape[1]] @ self.head.T
        tail = np.linalg.norm(rotated[:, self.head.shape[1] :], axis=1)
        indices = np.empty((len(queries), k), np.int64)
        sims = np.empty((len(queries), k), np.float32)
        counts = np.empty(len(queries), np.int64)
        for row in range(len(queries)):
            margin = tail[row] * self.tail_norms + SLACK
            lower = head_scores[row] - margin
            threshold = np.partition(lower, len(lower) - k)[len(lower) - k]
            candidates = np.flatnonzero(head_scores[row] + margin >= threshold)
            exact = self.vectors[candidates] @ np.asarray(queries[row], np.float32)
            order = np.lexsort((candidates, -exact))[:k]
            indices[row], sims[row], counts[row] = candidates[order], exact[order], len(candidates)
        return indices, sims, counts
