"""The `feast` search backend: Feast's online document retrieval on a vector store.

The same `VectorIndex` interface as the FAISS and sqlite-vec backends, so a catalogue,
the benchmark and the tests use it unchanged (`DUALMEDIA_SEARCH_INDEX=feast`). Vectors
are written with `FeatureStore.write_to_online_store` into one feature view whose vector
field is a Feast vector index, and a search is `FeatureStore.retrieve_online_documents_v2`
with the filter translated to Feast's filter model, so the vector store applies it inside
its search (k hits whenever k match).

The online store is Milvus: embedded here (Milvus Lite, a file in the index folder), a
Milvus server in production (`online_store={"type": "milvus", "uri": ...}`). Its index
type is FLAT: an exact scan, like sqlite-vec. (Feast's sqlite online store has vector
retrieval too, but it loads sqlite-vec only on Python 3.10 and copies every vector into
a new table on each query: benchmarks/search.py says why it is not offered.)

Attributes become string fields named a0, a1, ... (Milvus field names are identifiers;
attribute names need not be). Booleans are "true"/"false"; created_at is the time in
microseconds shifted to be non-negative and zero-padded to 20 digits, so that string
order is time order; a missing value is the empty string.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.vector_index import (
    _NO_TIME,
    CREATED_AT,
    AttrValue,
    Filter,
    IndexConfig,
    VectorIndex,
    _to_micros,
    check_declared,
    equals_lists,
    fixed_attribute_kinds,
)

VIEW = "item_vectors"
VECTOR = "vector"
ROW = "row"
# The row again, as a feature: Feast's OnlineResponse reorders the entity column apart
# from the feature columns (feast 0.67), so the row is read beside the distance.
ROW_FEATURE = "item_row"
MILVUS_FOLDER = "milvus"
MILVUS_FILE = "vectors.db"
_WRITE_CHUNK = 10_000
_MISSING = ""


def _release(db_path: str | None, folder: Path | None) -> None:
    if db_path is not None:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(db_path)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _time_key(micros: int) -> str:
    return f"{micros - int(_NO_TIME):020d}"


def _field_value(value: str | bool) -> str:
    """An attribute value as the string field holds it."""
    return ("true" if value else "false") if isinstance(value, bool) else value


class FeastVectorIndex(VectorIndex):
    """Items in a Feast feature view on a vector-capable online store (Milvus)."""

    kind = "feast"

    def __init__(
        self,
        dim: int,
        folder: str | Path | None = None,
        online_store: Mapping[str, Any] | None = None,
        attribute_kinds: Mapping[str, str] | None = None,
        delete_folder: bool = False,
    ) -> None:
        super().__init__(dim, IndexConfig(backend="feast"))
        owned = folder is None or delete_folder
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp("-feast"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.online_store = dict(
            online_store
            or {"type": "milvus", "path": str(self.folder / MILVUS_FOLDER / MILVUS_FILE)}
        )
        (self.folder / MILVUS_FOLDER).mkdir(exist_ok=True)
        # Milvus Lite serves each file from a server in this process until released; a
        # folder of our own is deleted with the index.
        self._finalizer = weakref.finalize(
            self, _release, self.online_store.get("path"), self.folder if owned else None
        )
        self.kinds: dict[str, str] | None = None
        self.fields: dict[str, str] = {}  # attribute -> field name
        self.store: Any = None
        if attribute_kinds is not None:
            self._create(dict(attribute_kinds))

    @property
    def is_exact(self) -> bool:
        return True

    def size_bytes(self) -> int:
        files = (self.folder / MILVUS_FOLDER).rglob("*")
        return sum(p.stat().st_size for p in files if p.is_file())

    def _create(self, kinds: dict[str, str]) -> None:
        # Imported here: only this backend needs Feast's Milvus store (and pymilvus).
        from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
        from feast.repo_config import RepoConfig
        from feast.types import Array, Float32, String

        self.kinds = kinds
        self.fields = {name: f"a{n}" for n, name in enumerate(kinds)}
        config = RepoConfig(
            project="dualmedia_search",
            provider="local",
            registry=str(self.folder / "registry.db"),
            online_store={
                "embedding_dim": self.dim,
                "index_type": "FLAT",
                "metric_type": "COSINE",
                "vector_enabled": True,
                **self.online_store,
            },
            offline_store={"type": "file"},
            entity_key_serialization_version=3,
        )
        with warnings.catch_warnings():  # Feast warns that its Milvus store is in preview
            warnings.simplefilter("ignore")
            logging.getLogger("feast").setLevel(logging.ERROR)
            self.store = FeatureStore(config=config)
        item = Entity(name="search_item", join_keys=[ROW], value_type=ValueType.STRING)
        schema = [
            Field(
                name=VECTOR, dtype=Array(Float32), vector_index=True, vector_search_metric="COSINE"
            ),
            Field(name=ROW_FEATURE, dtype=String),
            *[Field(name=f, dtype=String) for f in self.fields.values()],
            Field(name=CREATED_AT, dtype=String),
        ]
        view = FeatureView(
            name=VIEW,
            entities=[item],
            ttl=timedelta(days=36500),
            schema=schema,
            # Never read: the view is written online only; Feast requires a source.
            source=FileSource(path=str(self.folder / "unused.parquet"), timestamp_field="ts"),
            online=True,
        )
        self.store.apply([item, view])

    def _add_vectors(
        self, vectors: np.ndarray, ids: list[str], columns: Mapping[str, Sequence[AttrValue]]
    ) -> None:
        if self.kinds is None:
            self._create(fixed_attribute_kinds(columns))
        check_declared(columns, self.fields, "Feast view (its schema is fixed)")
        start = len(self)
        frame: dict[str, Any] = {
            ROW: [str(start + n) for n in range(len(ids))],
            ROW_FEATURE: [str(start + n) for n in range(len(ids))],
            VECTOR: list(vectors),
            "ts": datetime.now(UTC),
        }
        for name, field in self.fields.items():
            values = columns.get(name, [None] * len(ids))
            frame[field] = [_MISSING if v is None else _field_value(v) for v in values]
        created = columns.get(CREATED_AT, [None] * len(ids))
        frame[CREATED_AT] = [
            _MISSING if v is None else _time_key(_to_micros(v))  # type: ignore[arg-type]
            for v in created
        ]
        table = pd.DataFrame(frame)
        for begin in range(0, len(table), _WRITE_CHUNK):
            self.store.write_to_online_store(VIEW, table.iloc[begin : begin + _WRITE_CHUNK])
        # Feast leaves the rows in Milvus's growing segments, which a search scans ~10x
        # slower than sealed, indexed ones (measured at 20k items); flush seals them.
        client = self._milvus_client()
        for collection in client.list_collections():
            client.flush(collection)

    def _milvus_client(self) -> Any:
        """The MilvusClient that Feast's online store has opened (it opens it on write)."""
        online_store = self.store._provider.online_store
        return online_store._connect(self.store.config)

    def _feast_filter(self, flt: Filter | None) -> Any:
        from feast.filter_models import ComparisonFilter, CompoundFilter

        if flt is None or flt.is_empty():
            return None
        parts: list[Any] = []
        for name, wanted in equals_lists(flt):
            values = [_field_value(v) for v in wanted]
            parts.append(ComparisonFilter(type="in", key=self.fields[name], value=values))
        lo, hi = flt.time_range()
        if lo is not None:
            parts.append(ComparisonFilter(type="gte", key=CREATED_AT, value=_time_key(lo)))
        if hi is not None:
            parts.append(ComparisonFilter(type="lt", key=CREATED_AT, value=_time_key(hi)))
            parts.append(ComparisonFilter(type="ne", key=CREATED_AT, value=_MISSING))
        return parts[0] if len(parts) == 1 else CompoundFilter(type="and", filters=parts)

    def _search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, flt: Filter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        where = self._feast_filter(flt)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for q, query in enumerate(queries):
            # The vector field must be requested: Feast searches the vector field it returns.
            answer = self.store.retrieve_online_documents_v2(
                features=[f"{VIEW}:{VECTOR}", f"{VIEW}:{ROW_FEATURE}"],
                query=query.tolist(),
                top_k=k,
                distance_metric="COSINE",
                filters=where,
            ).to_dict()
            # Milvus's COSINE "distance" is the similarity.
            hits = sorted(
                zip(answer["distance"], answer[ROW_FEATURE], strict=True), key=lambda hit: -hit[0]
            )[:k]
            for j, (similarity, row) in enumerate(hits):
                rows[q, j] = int(row)
                scores[q, j] = similarity
        return scores, rows

    def _disconnect(self) -> None:
        """Close Feast's Milvus client and stop the embedded server (its files are then
        complete); the next call opens them again."""
        if self.store is not None and self.store._provider.online_store.client is not None:
            self._milvus_client().close()
            self.store._provider.online_store.client = None
        _release(self.online_store.get("path"), None)

    def close(self) -> None:
        """Stop the embedded Milvus and delete the index's own folder (if it made one)."""
        self._disconnect()
        self._finalizer()

    def _write(self, folder: Path) -> dict[str, Any]:
        if "path" not in self.online_store:
            raise ValueError("save: a Feast index on a Milvus server lives there, not in files")
        self._disconnect()
        shutil.copytree(self.folder / MILVUS_FOLDER, folder / MILVUS_FOLDER)
        return {"attributes": self.kinds}

    @classmethod
    def _read(cls, folder: Path, meta: Mapping[str, Any], mmap: bool) -> FeastVectorIndex:
        # Work on a copy: the saved folder stays as it was saved.
        work = Path(tempfile.mkdtemp("-feast"))
        shutil.copytree(folder / MILVUS_FOLDER, work / MILVUS_FOLDER)
        kinds = meta.get("attributes")
        obj = cls(int(meta["dim"]), work, attribute_kinds=kinds, delete_folder=True)
        obj._restore_items(folder, int(meta["count"]))
        obj.build_recall = meta.get("build_recall")
        return obj
