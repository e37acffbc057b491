"""Evaluation of a fused model on a snapshot split.

- retrieval recall@k for every ordered modality pair (CLIP_benchmark: a query hits when an
  item with its id is among the top k candidates), and by label (`by_<label>`: a hit is
  any candidate of the query's class), each beside what a random ranking scores;
- zero-shot classification of each categorical label: prompts built from the label schema
  (the dataset's templates x class names, averaged per class) against every other
  modality's embeddings;
- fusion accuracy and macro-F1 per label, then, on the items that have modality m, the
  same with every modality (`with_<m>`), with m removed (`without_<m>`) and with m only
  (`only_<m>`), so the gain of fusion over any single modality is a number on the same
  items (`gain/<label>/over_only_<m>` = with_<m> - only_<m>), plus the unimodal heads;
- confusion matrices and retrieval examples as PNG files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualmedia.contract import CategoricalLabel
from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot, SnapshotArrays
from dualmedia.storage import ObjectStore
from training.config import EvalConfig
from training.metrics import (
    classification_scores,
    confusion,
    retrieval_recall,
    zero_shot_predictions,
)
from training.models.factory import FusedModel
from training.models.scoring import Scores, fuse, score_arrays, zero_shot_prompts
from training.plots import plot_confusion_matrices, plot_retrieval_examples


def _label_scores(
    model: FusedModel,
    arrays: SnapshotArrays,
    predicted: dict[str, np.ndarray],
    rows: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    scores = {}
    for name, classes in model.classes.items():
        truth = arrays.labels[name].copy()
        if rows is not None:
            truth[~rows] = -1  # only score the selected items
        scores[name] = classification_scores(truth, predicted[name], len(classes))
    return scores


def retrieval_metrics(
    model: FusedModel, arrays: SnapshotArrays, scores: Scores, ks: list[int]
) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    emb = {m: torch.from_numpy(v) for m, v in scores.embeddings.items()}
    for a in model.modalities:
        for b in model.modalities:
            if a == b:
                continue
            qa = scores.present[a]
            cb = scores.present[b]
            recall = retrieval_recall(
                emb[a][torch.from_numpy(qa)],
                emb[b][torch.from_numpy(cb)],
                [i for i, keep in zip(arrays.ids, qa, strict=True) if keep],
                [i for i, keep in zip(arrays.ids, cb, strict=True) if keep],
                ks,
            )
            results[f"{a}_to_{b}"] = {f"R@{k}": v for k, v in recall.items()}
            # What a random ranking scores at k=1 (one item per id): the yardstick.
            results[f"{a}_to_{b}"]["chance_R@1"] = 1.0 / max(1, int(cb.sum()))
            for name, label in model.spec.labels.items():
                if isinstance(label, CategoricalLabel):
                    results[f"{a}_to_{b}"][f"by_{name}"] = _label_recall(
                        emb[a], emb[b], arrays.labels[name], len(label.classes), qa, cb, ks
                    )
    return results


def _label_recall(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    classes: np.ndarray,
    n_classes: int,
    query_rows: np.ndarray,
    candidate_rows: np.ndarray,
    ks: list[int],
) -> dict[str, float]:
    """Recall@k where a hit is any candidate of the query's class (queries of unknown
    class left out), and its chance at k=1: sum over classes of P(query) * P(candidate)."""
    q = query_rows & (classes >= 0)
    c = candidate_rows & (classes >= 0)
    if not q.any() or not c.any():
        return {}
    recall = retrieval_recall(
        queries[torch.from_numpy(q)],
        candidates[torch.from_numpy(c)],
        [int(x) for x in classes[q]],
        [int(x) for x in classes[c]],
        ks,
    )
    share_q = np.bincount(classes[q], minlength=n_classes) / q.sum()
    share_c = np.bincount(classes[c], minlength=n_classes) / c.sum()
    return {**{f"R@{k}": v for k, v in recall.items()}, "chance_R@1": float(share_q @ share_c)}


def zero_shot_metrics(
    model: FusedModel, arrays: SnapshotArrays, scores: Scores
) -> dict[str, dict[str, dict[str, float]]]:
    """Each categorical label from text prompts (the templates the model's dataset spec
    stores), per modality other than the prompts' own."""
    prompt_modality = model.encoder.prompt_modality
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, prompts in zero_shot_prompts(model).items():
        label = model.spec.labels[name]
        results[name] = {}
        for m in model.modalities:
            if m == prompt_modality:
                continue
            rows = scores.present[m]
            predicted = zero_shot_predictions(torch.from_numpy(scores.embeddings[m]), prompts)
            truth = np.where(rows, arrays.labels[name], -1)
            results[name][m] = classification_scores(truth, predicted, len(label.classes))
    return results


def fusion_metrics(model: FusedModel, arrays: SnapshotArrays, scores: Scores) -> dict[str, Any]:
    present = scores.present
    predicted = scores.predicted()
    unimodal = scores.unimodal_predicted()
    result: dict[str, Any] = {
        "fusion": _label_scores(model, arrays, predicted),
        "gate_mean": {
            m: float(scores.gates[present[m], i].mean()) if present[m].any() else math.nan
            for i, m in enumerate(model.modalities)
        },
        "unimodal_heads": {
            m: _label_scores(model, arrays, unimodal[m], present[m]) for m in model.modalities
        },
        "ablation": {},
        "confusion": {
            name: confusion(arrays.labels[name], predicted[name], len(classes))
            for name, classes in model.classes.items()
        },
    }
    nobody = np.zeros_like(present[model.modalities[0]])
    # Each ablation is scored on the items that have the modality: elsewhere "only m" has
    # nothing to go on and "without m" changes nothing, which would flatter fusion.
    for m in model.modalities:
        rows = present[m]
        without = {k: (v if k != m else nobody) for k, v in present.items()}
        only = {k: (v if k == m else nobody) for k, v in present.items()}
        result["ablation"][f"with_{m}"] = _label_scores(model, arrays, predicted, rows)
        result["ablation"][f"without_{m}"] = _label_scores(
            model, arrays, fuse(model, scores.embeddings, without).predicted(), rows
        )
        result["ablation"][f"only_{m}"] = _label_scores(
            model, arrays, fuse(model, scores.embeddings, only).predicted(), rows
        )
    ablation = result["ablation"]
    result["gain"] = {
        name: {
            f"over_only_{m}": ablation[f"with_{m}"][name]["macro_f1"]
            - ablation[f"only_{m}"][name]["macro_f1"]
            for m in model.modalities
        }
        for name in result["fusion"]
    }
    return result


def retrieval_examples_plot(
    model: FusedModel, arrays: SnapshotArrays, scores: Scores, n: int, path: Path
) -> Path | None:
    """Queries of the prompt modality (text) against the first other modality, else the
    first pair in canonical order."""
    mods = model.modalities
    pairs = [(a, b) for a in mods for b in mods if a != b]
    if not pairs:
        return None
    first = model.encoder.prompt_modality
    a, b = next((p for p in pairs if p[0] == first), pairs[0])
    qa = scores.present[a]
    cb = np.flatnonzero(scores.present[b])
    queries = [i for i in np.flatnonzero(qa) if scores.present[b][i]][:n]
    if not queries or len(cb) == 0:
        return None
    sims = scores.embeddings[a][queries] @ scores.embeddings[b][cb].T
    top = np.argsort(-sims, axis=1)[:, :4]
    ranked = [[int(cb[j]) for j in row] for row in top]
    return plot_retrieval_examples(arrays, [int(q) for q in queries], ranked, a, b, path)


def evaluate_arrays(
    model: FusedModel,
    arrays: SnapshotArrays,
    config: EvalConfig | None = None,
    plots_dir: Path | None = None,
) -> dict[str, Any]:
    """Every evaluation of a split; PNG figures go to `plots_dir` when given."""
    config = config or EvalConfig()
    scores = score_arrays(model, arrays)
    result: dict[str, Any] = {
        "n_items": len(arrays),
        "present": {m: int(v.sum()) for m, v in scores.present.items()},
        "retrieval": retrieval_metrics(model, arrays, scores, config.recall_ks),
        "zero_shot": zero_shot_metrics(model, arrays, scores),
    }
    result.update(fusion_metrics(model, arrays, scores))
    matrices = result.pop("confusion")
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        plots = [
            plot_confusion_matrices(matrices, model.classes, plots_dir / "confusion_matrices.png")
        ]
        example = retrieval_examples_plot(
            model, arrays, scores, config.retrieval_examples, plots_dir / "retrieval_examples.png"
        )
        plots += [example] if example else []
        result["plots"] = [str(p) for p in plots]
    return result


def flat_metrics(result: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    """Numeric leaves as MLflow metric names: test/fusion/damaged/macro_f1, ..."""
    flat: dict[str, float] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif (
            isinstance(node, int | float)
            and not isinstance(node, bool)
            and not math.isnan(float(node))
        ):
            flat[path.replace("@", "_at_")] = float(node)

    walk({k: v for k, v in result.items() if k != "plots"}, prefix)
    return flat


def evaluate_model(
    model_uri: str,
    snapshot_uri: str,
    settings: Settings,
    split: str = "test",
    plots_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate a logged model (any MLflow model URI) on a snapshot split; JSON-able.
    Figures are written to `plots_dir` when given."""
    import mlflow

    from training.models.pyfunc import FusedModelPyfunc
    from training.tracking import quiet_mlflow

    quiet_mlflow()
    mlflow.set_tracking_uri(settings.mlflow_uri)
    loaded = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not isinstance(loaded, FusedModelPyfunc):
        raise ValueError(f"{model_uri}: not a dualmedia fused model ({type(loaded).__name__})")
    model = loaded.model
    snapshot = Snapshot(ObjectStore(settings), snapshot_uri)
    if snapshot.media != model.media:
        raise ValueError(
            f"{snapshot_uri}: media were preprocessed with {snapshot.media}, the model expects "
            f"{model.media}; evaluate on a snapshot made with the model's media config"
        )
    missing = set(model.classes) - set(snapshot.spec.labels)
    if missing:
        raise ValueError(f"{snapshot_uri}: has no labels {sorted(missing)} the model predicts")
    arrays = snapshot.arrays(split)
    if len(arrays) == 0:
        raise ValueError(f"{snapshot_uri}: the {split!r} split is empty")
    result = evaluate_arrays(model, arrays, plots_dir=plots_dir)
    return {
        "model_uri": model_uri,
        "snapshot_uri": snapshot_uri,
        "snapshot_id": snapshot.id,
        "split": split,
        "metrics": flat_metrics(result, prefix=split),
        "evaluation": result,
    }
