"""Online k-NN: how good a pretraining run's features are, measured every few epochs while it trains.

The network the evaluation scores is the one ``sslkit probe knn`` would load from the run's checkpoint:
the EMA teacher where there is one (BYOL's target, DINO's teacher), else the only backbone (MAE's encoder).
"""

from __future__ import annotations


import torch.nn.functional as F
from torch import nn

from sslkit.data.folders import ImageFolder
from sslkit.data.views import eval_transform
from sslkit.engine.evaluation import EvalContext, Evaluation
from sslkit.evaluate.features import extract_features
from sslkit.evaluate.knn import knn_classify

TEMPERATURE = 0.07


def online_knn(method: nn.Module, memory_dir: str, query_dir: str, img_size: int, every: int, k: int,
               workers: int) -> Evaluation:
    """The k-NN accuracy of ``method``'s teacher (or only) backbone, on the trainer's device and in the run's
    precision."""
    transform = eval_transform(img_size)
    memory = ImageFolder(memory_dir, transform, labelled=True)
    queries = ImageFolder(query_dir, transform, labelled=True)
    query_labels = queries.labels_in(memory)
    prefixes = method.backbones
    backbone = method.get_submodule(prefixes.get("teacher") or next(iter(prefixes.values())))

    def score(context: EvalContext) -> dict[str, float]:
        device = context.device
        extract = dict(batch_size=256, workers=workers, device=device, amp_dtype=context.amp_dtype,
                       show_progress=False, freeze=False, shard=True)
        memory_features, memory_labels = extract_features(backbone, memory, label="k-NN memory", **extract)
        query_features, _ = extract_features(backbone, queries, label="k-NN queries", **extract)
        result = knn_classify(F.normalize(memory_features, dim=1), memory_labels, F.normalize(query_features, dim=1),
                              query_labels, [k], TEMPERATURE, len(memory.classes), device)[k]
        return {"knn_top1": result["top1"], "knn_top5": result["top5"]}

    return Evaluation(score, every=every, sharded=True)
