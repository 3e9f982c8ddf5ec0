"""Weighted k-NN classification of frozen features, DINO's protocol (Caron et al. 2021, eval_knn.py; Wu et al. 2018).

Features are L2-normalised; each query's k most cosine-similar training samples vote for their class with
weight ``exp(similarity / T)``. Queries are processed in chunks so the similarity matrix stays small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslkit.evaluate.features import FrozenFeatures
from sslkit.evaluate.settings import KNNConfig


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    ks: list[int],
    temperature: float,
    num_classes: int,
    device: torch.device = torch.device("cpu"),
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """For each k in ``ks``, each query's classes ranked by the weighted vote: (queries, min(5, classes)), on the
    CPU."""
    train_features = train_features.to(device)
    train_labels = train_labels.to(device)
    max_k = min(max(ks), len(train_features))
    top_n = min(5, num_classes)
    ranked: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(query_features), chunk_size):
        queries = query_features[start : start + chunk_size].to(device)
        similarity, indices = (queries @ train_features.T).topk(max_k, dim=1)
        neighbour_labels = train_labels[indices]
        weights = (similarity / temperature).exp()
        for k in ks:
            k_used = min(k, max_k)
            votes = torch.zeros(len(queries), num_classes, device=device)
            votes.scatter_add_(1, neighbour_labels[:, :k_used], weights[:, :k_used])
            ranked[k].append(votes.topk(top_n, dim=1).indices)
    return {k: torch.cat(chunks).cpu() for k, chunks in ranked.items()}  # one copy (and sync) per k


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    ks: list[int],
    temperature: float,
    num_classes: int,
    device: torch.device = torch.device("cpu"),
    chunk_size: int = 1024,
) -> dict[int, dict[str, float]]:
    """Top-1 and top-5 accuracy (percent) of the weighted vote for each k in ``ks``."""
    ranked = knn_predict(train_features, train_labels, query_features, ks, temperature, num_classes, device, chunk_size)
    labels = query_labels.cpu()[:, None]
    total = len(query_features)
    return {k: {"top1": 100.0 * (r[:, :1] == labels).sum().item() / total,
                "top5": 100.0 * (r == labels).any(dim=1).sum().item() / total} for k, r in ranked.items()}


def run_knn_probe(options: KNNConfig) -> dict:
    """``probe knn`` with the checked ``options``: the summary, the first k's top-1 / top-5 and every k's."""
    frozen = FrozenFeatures(options, default_blocks=1)
    train_set, val_set, val_labels = frozen.labelled_sets()
    train_features, train_labels = frozen.features(train_set, "train")
    val_features, _ = frozen.features(val_set, "val")
    results = knn_classify(F.normalize(train_features, dim=1), train_labels, F.normalize(val_features, dim=1),
                           val_labels, options.k, options.temperature, len(train_set.classes), frozen.device)
    first = results[options.k[0]]
    return {
        **frozen.summary(train_set, val_set),
        "temperature": options.temperature,
        "top1": first["top1"],
        "top5": first["top5"],
        "k": {str(k): v for k, v in results.items()},
    }
