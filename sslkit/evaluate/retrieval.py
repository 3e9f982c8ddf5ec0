"""Nearest-neighbour search by cosine similarity, and the scores of a ranking (AP, micro-AP, recall@k).

The database is streamed in chunks: each chunk is prepared (e.g. whitened and normalised) on the device,
compared with every query by one matrix product, and folded into a running top-k. Memory is bounded by the
chunk sizes, never by the database, and the result is the same whatever the chunk sizes: equal scores rank by
database index, as a stable sort of the whole similarity row would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


@torch.no_grad()
def search(
    queries: torch.Tensor,
    databases: Sequence[torch.Tensor],
    k: int,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device = torch.device("cpu"),
    chunk_size: int = 8192,
    query_chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` database items most similar to each query: scores and indices (Q x k, on the CPU), by score.

    ``queries`` are ready to compare (e.g. L2-normalised); ``databases`` are raw descriptor matrices searched
    as one (indices run over them in order); ``prepare`` maps a chunk of them to comparable vectors.
    """
    total = sum(len(d) for d in databases)
    k = min(k, total)
    queries = queries.to(device)
    scores = torch.full((len(queries), 0), float("-inf"), device=device)
    indices = torch.zeros((len(queries), 0), dtype=torch.long, device=device)
    offset = 0
    for database in databases:
        for start in range(0, len(database), chunk_size):
            chunk = database[start : start + chunk_size].to(device, non_blocking=True)
            chunk = prepare(chunk) if prepare else chunk
            block_scores, block_indices = [], []
            for q in range(0, len(queries), query_chunk):
                top_scores, top_indices = _top_k(queries[q : q + query_chunk] @ chunk.T, k)
                merged = _by_score(torch.cat([scores[q : q + query_chunk], top_scores], dim=1),
                                   torch.cat([indices[q : q + query_chunk], top_indices + offset + start], dim=1))
                block_scores.append(merged[0][:, :k])
                block_indices.append(merged[1][:, :k])
            scores, indices = torch.cat(block_scores), torch.cat(block_indices)
        offset += len(database)
    return scores.float().cpu(), indices.cpu()


def _top_k(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(k, similarity.shape[1])
    values, index = similarity.topk(k, dim=1)
    tied = (similarity >= values[:, -1:]).sum(dim=1) > k
    if tied.any():  # equal scores at the cut: keep the lowest indices, as a stable sort of the row would
        rows = tied.nonzero().squeeze(1)
        row_values, row_index = torch.sort(similarity[rows], dim=1, descending=True, stable=True)
        values[rows], index[rows] = row_values[:, :k], row_index[:, :k]
    return values, index


def _by_score(values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row sorted by score, equal scores by index."""
    by_index = index.argsort(dim=1)
    values, index = values.gather(1, by_index), index.gather(1, by_index)
    by_score = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, by_score), index.gather(1, by_score)


def trapezoid_ap(ranks: Sequence[int], positives: int) -> float:
    """Average precision of one query as the Holidays / Copydays evaluation computes it
    (``score_ap_from_ranks_1``): trapezoids under the precision-recall curve.

    ``ranks``: 0-based positions of the true positives in the result list, in increasing order;
    ``positives``: how many the query has in all (those not retrieved add nothing).
    """
    ap = 0.0
    for found, rank in enumerate(ranks):
        precision_before = 1.0 if rank == 0 else found / rank
        precision_after = (found + 1) / (rank + 1)
        ap += (precision_before + precision_after) / (2 * positives)
    return ap


def positive_ranks(scores: Sequence[float], is_positive: Sequence[bool]) -> list[int]:
    """0-based ranks of the positives in a result list sorted by score. A positive tied with negatives ranks
    after them: ties never earn credit (a model giving every image the same descriptor scores 0)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], is_positive[i], i))
    return [rank for rank, i in enumerate(order) if is_positive[i]]


def ranking_scores(scores: torch.Tensor, indices: torch.Tensor, positives: Sequence[set[int]],
                   recall_at: Sequence[int] = (1, 10)) -> dict:
    """Scores of ranked result lists (Q x k) against each query's set of positive database indices.

    - ``ap``: per query, the trapezoidal AP (None for a query without positives);
    - ``map``: its mean over the queries that have positives;
    - ``micro_ap``: every (query, result) pair of all lists pooled and ranked by score, then the
      non-interpolated AP over all positive pairs: it also rewards scores that are comparable across queries,
      i.e. a threshold that works for all of them (queries without positives count here, as false matches);
    - ``recall@n``: share of the queries with positives that find one in their first n results (in the whole
      list when it is shorter: ask only for the n the lists can answer).
    """
    ap, pairs, found_at = [], [], {n: 0 for n in recall_at}
    for row_scores, row_indices, wanted in zip(scores.tolist(), indices.tolist(), positives):
        hits = [i in wanted for i in row_indices]
        pairs += zip(row_scores, hits)
        if not wanted:
            ap.append(None)
            continue
        ranks = positive_ranks(row_scores, hits)
        ap.append(trapezoid_ap(ranks, len(wanted)))
        for n in found_at:
            found_at[n] += bool(ranks) and ranks[0] < n
    scored = [a for a in ap if a is not None]
    total_positives = sum(len(p) for p in positives)
    pairs.sort(key=lambda pair: (-pair[0], pair[1]))
    micro, found = 0.0, 0
    for rank, (_, hit) in enumerate(pairs):
        if hit:
            found += 1
            micro += found / (rank + 1)
    return {
        "ap": ap,
        "map": sum(scored) / len(scored) if scored else float("nan"),
        "micro_ap": micro / total_positives if total_positives else float("nan"),
        **{f"recall@{n}": count / len(scored) if scored else float("nan") for n, count in found_at.items()},
    }
