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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.vector_index import BATCH, CREATED_AT, FaissIndex, Filter

IDS_FILE = "catalogue.json"
FUSED = "fused"  # the target of the items' fused embeddings
PREDICTED = "predicted_"  # attribute prefix of a prediction: predicted_<label>


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
    names = dict.fromkeys(k for item in items for k in item.attributes())
    columns: dict[str, list[Any]] = {}
    for name in names:
        values = [item.attributes().get(name) for item in items]
        if name != CREATED_AT and {v for v in values if v is not None} <= {"true", "false"}:
            values = [None if v is None else v == "true" for v in values]
        columns[name] = values
    return columns


@dataclass
class Catalogue:
    """Per target: the ids of items having it and their vectors (row-aligned)."""

    ids: dict[str, list[str]]
    vectors: dict[str, np.ndarray]  # target -> N_t x D float32, L2-normalised
    items: dict[str, CatalogueItem]  # id -> what results show, filters ask
    model_version: str = ""

    def __post_init__(self) -> None:
        self.indexes: dict[str, FaissIndex] = {}
        for target, vectors in self.vectors.items():
            if not len(vectors):
                continue
            index = FaissIndex(vectors.shape[1], "exact")
            ids = self.ids[target]
            items = [self.items.get(i, CatalogueItem()) for i in ids]
            index.add(vectors, ids, attribute_columns(items))
            self.indexes[target] = index

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
    ) -> list[dict[str, Any]]:
        """The k items of `target` closest to the weighted query, among those matching
        the filter, each with the similarity to every query modality."""
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
        # The index takes unit vectors: rank by the direction, then scale the scores back
        # by the length, so a score stays sum_m w_m cos(q_m, item).
        length = float(np.linalg.norm(combined)) or 1.0
        found = index.search((combined / length).astype(np.float32)[None, :], k, flt)
        rows = {item_id: n for n, item_id in enumerate(self.ids[target])}
        results = []
        for item_id, score in zip(found.ids[0], found.scores[0], strict=True):
            vector = self.vectors[target][rows[item_id]]
            item = self.items.get(item_id, CatalogueItem())
            results.append(
                {
                    "id": item_id,
                    "score": round(float(score) * length, 6),
                    "similarities": {
                        m: round(float(np.dot(q, vector)), 6) for m, q in queries.items()
                    },
                    "weights": {m: round(w, 6) for m, w in share.items()},
                    "text": item.text,
                    "labels": item.labels,
                    "predicted": item.predicted,
                    "batch": item.batch,
                    "created_at": item.created_at,
                }
            )
        return results

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for target, vectors in self.vectors.items():
            np.save(folder / f"{target}.npy", vectors.astype(np.float32))
        meta = {
            "ids": self.ids,
            "items": {i: vars(item) for i, item in self.items.items()},
            "model_version": self.model_version,
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
        return cls(meta["ids"], vectors, items, meta.get("model_version", ""))
