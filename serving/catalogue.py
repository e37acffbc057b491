"""The search catalogue: per target (each modality, and `fused`) the published vectors in
a vector index, and per item what a result shows and a filter asks about.

The vectors are the ones the publish step writes to the feature store, so search
results and Feast never disagree. A query may give several modalities, each with a
weight: its vectors are combined as sum_m w_m q_m (weights summing to 1), so an item's
score, the inner product with that sum, is exactly sum_m w_m cos(q_m, item): the
per-modality similarities a result lists add up to its score. Filters (label values,
predictions, batch, time) are applied inside the index search (serving/vector_index.py),
so a filtered query returns k results whenever k items match.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.vector_index import (
    BATCH,
    CREATED_AT,
    Filter,
    VectorIndex,
    build_index,
    load_index,
)

IDS_FILE = "catalogue.json"
FUSED = "fused"  # the target of the items' fused embeddings
PREDICTED = "predicted_"  # attribute prefix of a prediction: predicted_<label>
RERANK_DEPTH = 50  # candidates a re-ranked search looks at (at least k)


class UnknownFilter(ValueError):
    """A filter naming an attribute the catalogue's items do not have."""


@dataclass
class CatalogueItem:
    """What a search result shows about an item, and what filters ask about."""

    text: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # label -> class (when known)
    predicted: dict[str, str] = field(default_factory=dict)  # label -> predicted class
    batch: str | None = None
    created_at: str | None = None

    def attributes(self) -> dict[str, str | None]:
        """Filterable values, as strings (`attribute_columns` types them)."""
        values = {BATCH: self.batch, CREATED_AT: self.created_at}
        values |= dict(self.labels)
        values |= {f"{PREDICTED}{name}": c for name, c in self.predicted.items()}
        return values


def attribute_columns(items: list[CatalogueItem]) -> dict[str, list[Any]]:
    """The items' attributes as columns; a yes/no label (classes "true" and "false") is a
    bool, so that a filter says `"damaged": true`."""
    rows = [item.attributes() for item in items]  # built once per item, not per column
    names = dict.fromkeys(k for row in rows for k in row)
    columns: dict[str, list[Any]] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if name != CREATED_AT and {v for v in values if v is not None} <= {"true", "false"}:
            values = [None if v is None else v == "true" for v in values]
        columns[name] = values
    return columns


class Catalogue:
    """Per target: the ids of items having it, their vectors (row-aligned) and a vector
    index over them (`index_config`: serving.vector_index.IndexConfig; "auto" is exact
    below a size threshold and approximate above, with its recall measured at build)."""

    def __init__(
        self,
        ids: dict[str, list[str]],
        vectors: dict[str, np.ndarray],  # target -> N_t x D float32, L2-normalised
        items: dict[str, CatalogueItem],  # id -> what results show, filters ask
        model_version: str = "",
        index_config: str = "exact",
        indexes: dict[str, VectorIndex] | None = None,  # built already (a saved catalogue)
    ) -> None:
        self.ids, self.vectors, self.items = ids, vectors, items
        self.model_version, self.index_config = model_version, index_config
        # A served catalogue grows (extend, from serving's refresh thread) while requests
        # search it: each holds the lock, so a search never sees half a batch.
        self.lock = threading.Lock()
        self.indexes: dict[str, VectorIndex] = dict(indexes or {})
        self.rows = {t: {item_id: n for n, item_id in enumerate(ids[t])} for t in ids}
        for target, target_vectors in vectors.items():
            if target in self.indexes or not len(target_vectors):
                continue
            targets_items = [items.get(i, CatalogueItem()) for i in ids[target]]
            self.indexes[target] = build_index(
                target_vectors, ids[target], attribute_columns(targets_items), index_config
            )

    def report(self) -> dict[str, dict[str, Any]]:
        """Per target: items, whether the index is exact, its recall@10 against exact."""
        return {
            target: {
                "items": len(index),
                "exact": index.is_exact,
                "index": str(index.config),
                "build_recall": index.build_recall,
            }
            for target, index in self.indexes.items()
        }

    def extend(self, other: Catalogue) -> int:
        """Add another catalogue's items (a batch published after this one was built) to
        the live indexes, without a rebuild; items already here are kept as they are.
        Returns how many target rows were added."""
        with self.lock:
            return self._extend(other)

    def _extend(self, other: Catalogue) -> int:
        added = 0
        for target, ids in other.ids.items():
            rows = self.rows.setdefault(target, {})
            new = [n for n, i in enumerate(ids) if i not in rows]
            if not new:
                continue
            new_ids = [ids[n] for n in new]
            vectors = other.vectors[target][new]
            self.items.update({i: other.items.get(i, CatalogueItem()) for i in new_ids})
            columns = attribute_columns([self.items[i] for i in new_ids])
            if target in self.indexes:
                self.indexes[target].add(vectors, new_ids, columns)
                self.vectors[target] = np.concatenate([self.vectors[target], vectors])
            else:
                self.indexes[target] = build_index(vectors, new_ids, columns, self.index_config)
                self.vectors[target] = vectors
            start = len(self.ids.setdefault(target, []))
            self.ids[target].extend(new_ids)
            rows.update((i, start + n) for n, i in enumerate(new_ids))
            added += len(new_ids)
        return added

    @property
    def targets(self) -> list[str]:
        """What a search can rank: the modalities with items, then `fused`."""
        return [t for t in self.indexes if t != FUSED] + ([FUSED] if FUSED in self.indexes else [])

    def filterable(self) -> list[str]:
        names = {k for item in self.items.values() for k in item.attributes()}
        return sorted(names)

    def search(
        self,
        queries: Mapping[str, np.ndarray],
        weights: Mapping[str, float],
        target: str,
        k: int,
        filter: Mapping[str, Any] | None = None,
        rerank: float = 0.0,
        rerank_depth: int = RERANK_DEPTH,
    ) -> list[dict[str, Any]]:
        """The k items of `target` closest to the weighted query, among those matching
        the filter, each with the similarity to every query modality.

        With `rerank` (a weight in [0, 1]) the best `rerank_depth` are ranked again by
        (1 - rerank) x retrieval + rerank x agreement, where agreement is the mean
        cosine between the query and the candidate's *other* modalities (all of them for
        `fused`): an item whose photo matches the words but whose review and voice say
        something else moves down. Each result says how much each part gave."""
        with self.lock:
            return self._search(queries, weights, target, k, filter, rerank, rerank_depth)

    def _search(
        self,
        queries: Mapping[str, np.ndarray],
        weights: Mapping[str, float],
        target: str,
        k: int,
        filter: Mapping[str, Any] | None,
        rerank: float,
        rerank_depth: int,
    ) -> list[dict[str, Any]]:
        index = self.indexes[target]
        total = sum(weights[m] for m in queries)
        share = {m: weights[m] / total for m in queries}
        combined = sum(share[m] * np.asarray(q, dtype=np.float32) for m, q in queries.items())
        flt = None
        if filter:
            flt = Filter.from_dict(filter)
            unknown = sorted(set(flt.equals) - set(index.attributes.kinds))
            if unknown:
                raise UnknownFilter(
                    f"filter: unknown attribute {unknown[0]!r} "
                    f"(known: {', '.join(self.filterable())})"
                )
        # The index takes unit vectors: the direction ranks the same.
        length = float(np.linalg.norm(combined)) or 1.0
        direction = (combined / length).astype(np.float32)
        depth = max(k, rerank_depth) if rerank > 0 else k
        found = index.search(direction[None, :], depth, flt)
        rows = self.rows[target]
        results = []
        for item_id in found.ids[0]:
            vector = self.vectors[target][rows[item_id]]
            item = self.items.get(item_id, CatalogueItem())
            similarities = {m: float(np.dot(q, vector)) for m, q in queries.items()}
            # From the item's own vector: exact even where the index ranks approximately.
            retrieval = sum(share[m] * similarities[m] for m in queries)
            result = {
                "id": item_id,
                "score": round(retrieval, 6),
                "similarities": {m: round(v, 6) for m, v in similarities.items()},
                "weights": {m: round(w, 6) for m, w in share.items()},
                "text": item.text,
                "labels": item.labels,
                "predicted": item.predicted,
                "batch": item.batch,
                "created_at": item.created_at,
            }
            if rerank > 0:
                agreement = self._agreement(item_id, target, direction)
                mean = float(np.mean(list(agreement.values()))) if agreement else retrieval
                parts = {"retrieval": (1 - rerank) * retrieval, "agreement": rerank * mean}
                result["score"] = round(sum(parts.values()), 6)
                result["rerank"] = {
                    "weight": rerank,
                    "retrieval": round(retrieval, 6),
                    "agreement_by_modality": {m: round(v, 6) for m, v in agreement.items()},
                    "contributions": {p: round(v, 6) for p, v in parts.items()},
                }
            results.append(result)
        if rerank > 0:
            results.sort(key=lambda r: -r["score"])
        return results[:k]

    def _agreement(self, item_id: str, target: str, direction: np.ndarray) -> dict[str, float]:
        """Cosine between the query and each of the item's modalities besides `target`."""
        out = {}
        for m, rows in self.rows.items():
            if m in (target, FUSED) or item_id not in rows:
                continue
            out[m] = float(np.dot(direction, self.vectors[m][rows[item_id]]))
        return out

    def save(self, folder: Path) -> None:
        """The vectors (.npy), each target's index (its own folder) and catalogue.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for target, vectors in self.vectors.items():
            np.save(folder / f"{target}.npy", vectors.astype(np.float32))
        for target, index in self.indexes.items():
            index.save(folder / target)
        meta = {
            "ids": self.ids,
            "items": {i: vars(item) for i, item in self.items.items()},
            "model_version": self.model_version,
            "index_config": self.index_config,
        }
        (folder / IDS_FILE).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Catalogue:
        folder = Path(folder)
        meta = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
        vectors = {t: np.load(folder / f"{t}.npy", allow_pickle=False) for t in meta["ids"]}
        if "items" in meta:
            items = {i: CatalogueItem(**v) for i, v in meta["items"].items()}
        else:  # an archive built before items had labels: its texts only
            items = {i: CatalogueItem(text=t) for i, t in meta.get("texts", {}).items()}
        indexes = {t: load_index(folder / t) for t in meta["ids"] if (folder / t).is_dir()}
        return cls(meta["ids"], vectors, items, meta.get("model_version", ""),
                   meta.get("index_config", "exact"), indexes)  # fmt: skip
