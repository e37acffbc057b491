"""Metric functions on plain arrays: retrieval recall@k, zero-shot and classification scores."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score


def retrieval_recall(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    query_ids: list[str],
    candidate_ids: list[str],
    ks: list[int],
) -> dict[int, float]:
    """CLIP_benchmark recall@k: a query hits when any candidate with its id is in its top k.

    `queries` [Nq, D] and `candidates` [Nc, D] are L2-normalised embeddings.
    """
    if len(queries) == 0 or len(candidates) == 0:
        return {k: float("nan") for k in ks}
    similarity = queries.float() @ candidates.float().T
    order = similarity.argsort(dim=1, descending=True)
    cand = np.asarray(candidate_ids, dtype=object)
    positives = cand[order.cpu().numpy()] == np.asarray(query_ids, dtype=object)[:, None]
    return {k: float(positives[:, :k].any(axis=1).mean()) for k in ks}


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy and macro-F1 over the items whose label is known (y_true >= 0)."""
    known = y_true >= 0
    if not known.any():
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0}
    t, p = y_true[known], y_pred[known]
    return {
        "accuracy": float((t == p).mean()),
        "macro_f1": float(
            f1_score(t, p, labels=list(range(n_classes)), average="macro", zero_division=0)
        ),
        "n": int(known.sum()),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    known = y_true >= 0
    return confusion_matrix(y_true[known], y_pred[known], labels=list(range(n_classes)))


def zero_shot_predictions(embeddings: torch.Tensor, class_embeddings: torch.Tensor) -> np.ndarray:
    """Index of the most similar class prompt embedding for each item."""
    return (embeddings.float() @ class_embeddings.float().T).argmax(dim=1).cpu().numpy()
