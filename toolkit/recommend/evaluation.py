"""How good the recommender is: precision@k and mAP with the test set as queries against the
training catalog, beside raw pixels as a baseline, and queries per second (batched and one at a
time) -> ROOT/NAME/recommend/evaluation-*.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import CLASS_NAMES
from toolkit.core import artifacts, data
from toolkit.recommend.catalog import SEARCH_BATCH, search
from toolkit.recommend.embedding import Progress, normalize
from toolkit.recommend.search import dataset_and_catalog

EVAL_KS = (1, 5, 10)


def retrieval_metrics(catalog: np.ndarray, catalog_labels: np.ndarray, queries: np.ndarray,
                      query_labels: np.ndarray, *, ks=EVAL_KS, batch: int = SEARCH_BATCH,
                      progress: Progress | None = None, what: str = "ranking") -> dict[str, Any]:
    """precision@k, mAP@10 and mAP over the full ranking of the catalog (a neighbour is relevant
    when its class matches the query's), plus the seconds spent in the top-k search alone."""
    kmax = max(ks)
    counts = np.bincount(catalog_labels, minlength=len(CLASS_NAMES))
    hits_at = {k: 0.0 for k in ks}
    ap_sum, ap10_sum, search_seconds = 0.0, 0.0, 0.0
    ranks = np.arange(1, len(catalog) + 1, dtype=np.float64)
    for start in range(0, len(queries), batch):
        q, ql = queries[start:start + batch], query_labels[start:start + batch]
        t0 = time.perf_counter()
        scores = q @ catalog.T
        part = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
        part_scores = np.take_along_axis(scores, part, axis=1)
        top = np.take_along_axis(part, np.lexsort((part, -part_scores), axis=1), axis=1)
        search_seconds += time.perf_counter() - t0
        rel_top = catalog_labels[top] == ql[:, None]
        for k in ks:
            hits_at[k] += rel_top[:, :k].mean(axis=1).sum()
        cum = np.cumsum(rel_top, axis=1)
        denom = np.minimum(kmax, counts[ql])
        ap10_sum += (((cum / ranks[:kmax]) * rel_top).sum(axis=1) / denom).sum()
        # Full ranking: AP = mean over all relevant items of the precision at their rank.
        order = np.argsort(-scores, axis=1, kind="stable")
        rel = catalog_labels[order] == ql[:, None]
        prec = np.cumsum(rel, axis=1) / ranks
        ap_sum += ((prec * rel).sum(axis=1) / counts[ql]).sum()
        if progress:
            progress(what, min(start + batch, len(queries)), len(queries))
    n = len(queries)
    return {f"precision@{k}": hits_at[k] / n for k in ks} | {
        "mAP@10": ap10_sum / n, "mAP": ap_sum / n, "search_seconds": search_seconds}


def evaluate(
    exp: str,
    *,
    backend: str = "keras",
    root: Path | None = None,
    data_dir: Path | None = None,
    catalog_limit: int | None = None,
    query_limit: int | None = None,
    single_queries: int = 200,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Retrieval quality with the test set as queries against the training catalog, beside raw
    pixels (L2-normalised 784-d vectors) as a baseline, and queries per second."""
    spec, dataset, embedder, catalog = dataset_and_catalog(
        exp, backend=backend, root=root, data_dir=data_dir, catalog_limit=catalog_limit, progress=progress)
    nq = len(dataset.y_test) if query_limit is None else min(query_limit, len(dataset.y_test))
    x_q = data.to_model_input(dataset.x_test[:nq])
    y_q = dataset.y_test[:nq].astype(np.int64)
    n_cat = len(catalog.labels)
    t0 = time.perf_counter()
    q_emb = embedder.embed(x_q, progress, "embedding queries")
    embed_seconds = time.perf_counter() - t0
    model_scores = retrieval_metrics(catalog.vectors, catalog.labels, q_emb, y_q, progress=progress,
                                     what="ranking (embeddings)")
    raw_catalog = normalize(dataset.x_train[:n_cat])
    t0 = time.perf_counter()
    raw_q = normalize(dataset.x_test[:nq])
    raw_embed_seconds = time.perf_counter() - t0
    raw_scores = retrieval_metrics(raw_catalog, catalog.labels, raw_q, y_q, progress=progress,
                                   what="ranking (raw pixels)")
    singles = min(single_queries, nq)
    single_embed, single_search = _one_at_a_time(embedder, catalog.vectors, x_q[:singles])
    result = {
        "spec": spec.name, "backend": embedder.backend, "queries": nq, "catalog_images": n_cat,
        "catalog_built": catalog.built, "catalog_seconds": round(catalog.seconds, 2), **DEFINITIONS,
        "rows": [_row(f"{spec.name} penultimate ({embedder.backend})", model_scores, embed_seconds,
                      catalog.vectors.shape[1], nq),
                 _row("raw pixels (baseline)", raw_scores, raw_embed_seconds, 784, nq)],
        "single_queries": singles,
        "single_qps": (singles / (single_embed + single_search) if single_embed + single_search
                       else float("inf")),
        "single_ms": {"embed": 1000 * single_embed / max(singles, 1),
                      "search": 1000 * single_search / max(singles, 1)},
        "model_sha256": embedder.source_sha256,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    arts = artifacts.spec_artifacts(spec.name, root)
    name = f"evaluation-{embedder.backend}.json" if (catalog_limit, query_limit) == (None, None) else \
        f"evaluation-{embedder.backend}-n{n_cat}-q{nq}.json"
    artifacts.write_json(arts.recommend_dir / name, result)
    result["file"] = str(arts.recommend_dir / name)
    return result


DEFINITIONS = {
    "relevance": "a neighbour is relevant when its class equals the query's class",
    "mAP_definition": ("mAP: mean over queries of average precision over the full ranking of "
                       "the catalog (all same-class items relevant); mAP@10: AP over the top 10, "
                       "normalised by min(10, relevant items)"),
    "qps_definition": ("batched_qps: queries / (embedding seconds + exact top-10 search seconds), "
                       f"batches of {SEARCH_BATCH}; single_qps: one query at a time, embed + top-5"),
}


def _one_at_a_time(embedder, catalog: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    """(embedding seconds, search seconds) of queries sent one at a time, as an interactive user
    would send them: embed + exact top-5."""
    single_embed = single_search = 0.0
    for i in range(len(images)):
        t0 = time.perf_counter()
        vector = embedder.embed(images[i:i + 1])
        t1 = time.perf_counter()
        search(catalog, vector, 5)
        single_embed += t1 - t0
        single_search += time.perf_counter() - t1
    return single_embed, single_search


def _row(name: str, scores: dict[str, Any], embed_s: float, dim: int, queries: int) -> dict[str, Any]:
    total = embed_s + scores["search_seconds"]
    return {"embedding": name, "dim": dim, **{k: v for k, v in scores.items() if k != "search_seconds"},
            "batched_qps": queries / total if total else float("inf"),
            "embed_seconds": embed_s, "search_seconds": scores["search_seconds"]}
