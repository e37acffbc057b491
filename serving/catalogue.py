"""The search catalogue: item ids, their texts and embeddings per modality, FAISS indexes.

The vectors are the ones the publish step writes to the feature store, so search
results and Feast never disagree. Inner product on L2-normalised vectors is cosine
similarity, so an exact `IndexFlatIP` is the right index at catalogue sizes here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

IDS_FILE = "catalogue.json"


@dataclass
class Catalogue:
    """Per modality: the ids of items having it and their vectors (row-aligned)."""

    ids: dict[str, list[str]]
    vectors: dict[str, np.ndarray]  # modality -> N_m x D float32, L2-normalised
    texts: dict[str, str]  # id -> review text (to show search results)
    model_version: str = ""

    def __post_init__(self) -> None:
        self.indexes: dict[str, faiss.Index] = {}
        for modality, vectors in self.vectors.items():
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
            self.indexes[modality] = index

    @property
    def modalities(self) -> list[str]:
        return [m for m, v in self.vectors.items() if len(v)]

    def search(self, query: np.ndarray, modality: str, k: int) -> list[dict[str, object]]:
        """The k items of `modality` closest to each query vector (cosine)."""
        index = self.indexes[modality]
        k = min(k, index.ntotal)
        scores, rows = index.search(np.ascontiguousarray(query[None, :], dtype=np.float32), k)
        ids = self.ids[modality]
        return [
            {"id": ids[r], "score": round(float(s), 6), "text": self.texts.get(ids[r])}
            for s, r in zip(scores[0], rows[0], strict=True)
            if r >= 0
        ]

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for modality, vectors in self.vectors.items():
            np.save(folder / f"{modality}.npy", vectors.astype(np.float32))
            faiss.write_index(self.indexes[modality], str(folder / f"{modality}.faiss"))
        meta = {"ids": self.ids, "texts": self.texts, "model_version": self.model_version}
        (folder / IDS_FILE).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> Catalogue:
        folder = Path(folder)
        meta = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
        vectors = {m: np.load(folder / f"{m}.npy", allow_pickle=False) for m in meta["ids"]}
        return cls(meta["ids"], vectors, meta["texts"], meta.get("model_version", ""))
