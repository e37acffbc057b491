"""Vector indexes for search: one interface over exact and approximate FAISS, sqlite-vec, Feast.

Every index holds L2-normalised float32 vectors, a string id per vector and per-item
attributes to filter on (label values and predictions as strings or bools, the batch
name, the created_at time). Scores are inner products, i.e. cosine similarities.

- `FaissIndex` covers the exact index (`IndexFlatIP`) and the approximate ones that
  `faiss.index_factory` builds (HNSW, IVF-PQ, optionally with a refine stage). Rows are
  numbered 0..n-1 in insertion order and those numbers are FAISS's ids, so a filter is
  a bitmap over rows given to FAISS as `IDSelectorBitmap` inside the search: FAISS only
  ranks matching items, and a filtered query returns k results whenever k items match.
- `SqliteVecIndex` keeps the vectors in a sqlite-vec `vec0` table with the attributes as
  metadata columns, filtered inside sqlite-vec's (exhaustive) KNN query.
- `FeastVectorIndex` (serving/feast_vector_index.py) writes them to a Feast feature view
  on Milvus and searches with Feast's `retrieve_online_documents_v2`.
- `build_index` chooses: exact below `exact_below` items, approximate above (an "auto"
  exact index switches itself to the approximate one when `add` takes it over).

An index is saved to a folder (FAISS's own `write_index`, Parquet for ids and attributes,
JSON for settings; nothing pickled) so the publish step can store one per model version.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMAT_VERSION = 1
META_FILE = "index.json"
FAISS_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
SQLITE_FILE = "index.sqlite"

BATCH = "batch"
CREATED_AT = "created_at"
# created_at is kept as integer microseconds since the epoch (UTC); an item without one
# gets this value, which no time range includes.
_NO_TIME = np.iinfo(np.int64).min
_NORM_TOLERANCE = 1e-3

AttrValue = str | bool | datetime | None
Attributes = Mapping[str, Sequence[AttrValue]] | Sequence[Mapping[str, AttrValue]]

# Defaults chosen with benchmarks/search.py (1M x 128 on 2 cores): see benchmarks/README.md.
DEFAULT_APPROXIMATE = "HNSW32,Flat"
DEFAULT_EF_SEARCH = 128
DEFAULT_EF_CONSTRUCTION = 40
DEFAULT_NPROBE = 32
DEFAULT_EXACT_BELOW = 100_000
# A filter matching at most this fraction of the items is answered by an exact scan of
# the matching items only: cheaper than walking a graph where most nodes are filtered
# out, and exact.
DEFAULT_FILTER_SCAN_BELOW = 0.05
_TRAIN_MIN = 100_000
_TRAIN_PER_LIST = 64


# ---- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class IndexConfig:
    """Which index to build, as one string: ``backend[:factory][;key=value...]``.

    backend: ``exact`` (IndexFlatIP), ``faiss`` (the `factory` string), ``auto`` (exact
    below `exact_below` items, `factory` above), ``sqlite-vec``. Keys: ``efSearch``,
    ``efConstruction`` (HNSW), ``nprobe`` (IVF), ``k_factor`` (refine), ``exact_below``,
    ``filter_scan_below``. Examples: ``auto:HNSW32,Flat;efSearch=128``,
    ``faiss:IVF1024,PQ32;nprobe=32``, ``exact``, ``sqlite-vec``, ``feast`` (Feast's
    online document retrieval on Milvus: serving/feast_vector_index.py).
    """

    backend: str = "auto"
    factory: str = DEFAULT_APPROXIMATE
    ef_search: int = DEFAULT_EF_SEARCH
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    nprobe: int = DEFAULT_NPROBE
    k_factor: float = 4.0
    exact_below: int = DEFAULT_EXACT_BELOW
    filter_scan_below: float = DEFAULT_FILTER_SCAN_BELOW

    _KEYS: ClassVar[dict[str, str]] = {
        "efSearch": "ef_search",
        "efConstruction": "ef_construction",
        "nprobe": "nprobe",
        "k_factor": "k_factor",
        "exact_below": "exact_below",
        "filter_scan_below": "filter_scan_below",
    }
    BACKENDS: ClassVar[tuple[str, ...]] = ("auto", "exact", "faiss", "sqlite-vec", "feast")

    @classmethod
    def parse(cls, text: str | IndexConfig) -> IndexConfig:
        if isinstance(text, IndexConfig):
            return text
        head, *options = [part.strip() for part in str(text).split(";")]
        backend, _, factory = head.partition(":")
        backend = backend.strip().lower()
        if backend not in cls.BACKENDS:
            raise ValueError(
                f"index config {text!r}: unknown backend {backend!r} "
                f"(expected one of {', '.join(cls.BACKENDS)})"
            )
        values: dict[str, Any] = {"backend": backend}
        if factory.strip():
            values["factory"] = factory.strip()
        for option in options:
            if not option:
                continue
            key, sep, value = option.partition("=")
            name = cls._KEYS.get(key.strip())
            if not sep or name is None:
                raise ValueError(
                    f"index config {text!r}: bad option {option!r} "
                    f"(expected key=value with key in {', '.join(cls._KEYS)})"
                )
            try:
                values[name] = (
                    float(value) if name in ("k_factor", "filter_scan_below") else int(value)
                )
            except ValueError:
                raise ValueError(f"index config {text!r}: {key} must be a number") from None
        return cls(**values)

    def __str__(self) -> str:
        defaults = IndexConfig()
        parts = [
            self.backend
            if self.backend in ("exact", "sqlite-vec", "feast")
            else f"{self.backend}:{self.factory}"
        ]
        for key, name in self._KEYS.items():
            value = getattr(self, name)
            if value != getattr(defaults, name):
                parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        return ";".join(parts)


# ---- filters ---------------------------------------------------------------------------


def _to_micros(value: datetime | str) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise ValueError(f"expected a datetime or ISO 8601 string, got {value!r}")
    if value.tzinfo is None:  # naive times are taken as UTC, like the dataset contract's "Z"
        value = value.replace(tzinfo=UTC)
    return round(value.timestamp() * 1_000_000)


@dataclass(frozen=True)
class Filter:
    """Items whose attributes match: every named attribute equals one of its values, and
    created_at lies in [created_from, created_to). The batch is the attribute ``batch``.

    ``Filter(equals={"damaged": [True], "batch": ["2026-11"]}, created_from="2026-11-01")``
    """

    equals: Mapping[str, Collection[str | bool]] = field(default_factory=dict)
    created_from: datetime | str | None = None
    created_to: datetime | str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Filter:
        """From JSON: ``{"damaged": true, "sentiment": ["negative"], "batch": "b1",
        "created_at": {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}}``."""
        equals: dict[str, list[str | bool]] = {}
        created_from = created_to = None
        for key, value in data.items():
            if key == CREATED_AT:
                if not isinstance(value, Mapping) or not set(value) <= {"from", "to"}:
                    raise ValueError('filter "created_at" must be {"from": time, "to": time}')
                created_from, created_to = value.get("from"), value.get("to")
            elif isinstance(value, str | bool):
                equals[key] = [value]
            elif (
                isinstance(value, list) and value and all(isinstance(v, str | bool) for v in value)
            ):
                equals[key] = list(value)
            else:
                raise ValueError(
                    f"filter {key!r}: expected a string, a bool or a non-empty list of them"
                )
        return cls(equals=equals, created_from=created_from, created_to=created_to)

    def time_range(self) -> tuple[int | None, int | None]:
        lo = None if self.created_from is None else _to_micros(self.created_from)
        hi = None if self.created_to is None else _to_micros(self.created_to)
        return lo, hi

    def is_empty(self) -> bool:
        return not self.equals and self.created_from is None and self.created_to is None


# ---- attributes ------------------------------------------------------------------------


def _columns(attributes: Attributes | None, n: int) -> dict[str, list[AttrValue]]:
    """Columnar attributes of n items (accepts columns or one mapping per item)."""
    if attributes is None:
        return {}
    if isinstance(attributes, Mapping):
        columns = {str(k): list(v) for k, v in attributes.items()}
    else:
        if len(attributes) != n:
            raise ValueError(f"attributes: {len(attributes)} rows for {n} vectors")
        names: dict[str, None] = {}
        for row in attributes:
            names.update(dict.fromkeys(row))
        columns = {str(k): [row.get(k) for row in attributes] for k in names}
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"attribute {name!r}: {len(values)} values for {n} vectors")
        # numpy/pandas scalars (np.str_, np.bool_) count as the Python values they hold
        columns[name] = [
            bool(v) if isinstance(v, np.bool_) else str(v) if isinstance(v, str) else v
            for v in values
        ]
    return columns


class _Attributes:
    """Per-item attributes as arrays, to turn a Filter into a row mask quickly.

    String and bool columns are dictionary-encoded (codes, -1 = missing): a filter is a
    lookup of the wanted values' codes, then one `np.isin` per attribute.
    """

    def __init__(self) -> None:
        self.n = 0
        self.kinds: dict[str, str] = {}  # name -> "str" | "bool"
        self.codes: dict[str, np.ndarray] = {}
        self.values: dict[str, list[str | bool]] = {}
        self.lookup: dict[str, dict[str | bool, int]] = {}
        self.created = np.empty(0, dtype=np.int64)

    def append(self, columns: Mapping[str, Sequence[AttrValue]], n: int) -> None:
        created = columns.get(CREATED_AT)
        times = np.full(n, _NO_TIME, dtype=np.int64)
        if created is not None:
            for i, value in enumerate(created):
                if value is not None:
                    times[i] = _to_micros(value)  # type: ignore[arg-type]
        for name, values in columns.items():
            if name == CREATED_AT:
                continue
            kind = self._kind(name, values)
            if name not in self.kinds:
                self.kinds[name] = kind
                self.codes[name] = np.full(self.n, -1, dtype=np.int32)
                self.values[name] = []
                self.lookup[name] = {}
            lookup, known = self.lookup[name], self.values[name]
            new = np.empty(n, dtype=np.int32)
            for i, value in enumerate(values):
                if value is None:
                    new[i] = -1
                    continue
                code = lookup.get(value)
                if code is None:
                    code = lookup[value] = len(known)
                    known.append(value)
                new[i] = code
            self.codes[name] = np.concatenate([self.codes[name], new])
        for name in self.kinds:  # columns this batch lacks: missing for its items
            if name not in columns:
                self.codes[name] = np.concatenate([self.codes[name], np.full(n, -1, np.int32)])
        self.created = np.concatenate([self.created, times])
        self.n += n

    def _kind(self, name: str, values: Sequence[AttrValue]) -> str:
        kinds = {type(v) for v in values if v is not None}
        if kinds - {str, bool}:
            bad = next(v for v in values if v is not None and type(v) not in (str, bool))
            raise ValueError(f"attribute {name!r}: values must be strings or bools, got {bad!r}")
        if len(kinds) > 1:
            raise ValueError(f"attribute {name!r}: mixes strings and bools")
        kind = "bool" if kinds == {bool} else "str"
        known = self.kinds.get(name)
        if known is not None and kinds and kind != known:
            raise ValueError(f"attribute {name!r} holds {known} values, got {kind} values")
        return known or kind

    def mask(self, flt: Filter) -> np.ndarray:
        keep = np.ones(self.n, dtype=bool)
        for name, wanted in equals_lists(flt):
            if name not in self.kinds:
                raise ValueError(
                    f"filter: unknown attribute {name!r} "
                    f"(known: {', '.join(sorted([*self.kinds, CREATED_AT])) or 'none'})"
                )
            kind = bool if self.kinds[name] == "bool" else str
            for value in wanted:
                if type(value) is not kind:
                    raise ValueError(
                        f"filter {name!r}: {value!r} is not a {kind.__name__} "
                        f"(the attribute holds {self.kinds[name]} values)"
                    )
            codes = [self.lookup[name][v] for v in wanted if v in self.lookup[name]]
            keep &= np.isin(self.codes[name], np.asarray(codes, dtype=np.int32))
        lo, hi = flt.time_range()
        if lo is not None:
            keep &= self.created >= lo
        if hi is not None:
            keep &= self.created < hi
        if lo is not None or hi is not None:
            keep &= self.created != _NO_TIME
        return keep

    def table(self, ids: list[str]) -> pa.Table:
        columns: dict[str, pa.Array] = {"id": pa.array(ids, pa.string())}
        for name, kind in self.kinds.items():
            dictionary = pa.array(self.values[name], pa.bool_() if kind == "bool" else pa.string())
            codes = pa.array(self.codes[name], mask=self.codes[name] < 0)
            columns[name] = pa.DictionaryArray.from_arrays(codes, dictionary).dictionary_decode()
        created = pa.array(self.created, mask=self.created == _NO_TIME)
        columns[CREATED_AT] = created.cast(pa.timestamp("us", tz="UTC"))
        return pa.table(columns)

    @classmethod
    def from_table(cls, table: pa.Table) -> tuple[list[str], _Attributes]:
        ids = table.column("id").to_pylist()
        attrs = cls()
        columns = {
            name: table.column(name).to_pylist()
            for name in table.column_names
            if name not in ("id", CREATED_AT)
        }
        attrs.append(columns, len(ids))
        if CREATED_AT in table.column_names:
            micros = pc.fill_null(table.column(CREATED_AT).cast(pa.int64()), int(_NO_TIME))
            attrs.created = micros.to_numpy().astype(np.int64)
        return ids, attrs


# ---- results and the interface ---------------------------------------------------------


@dataclass
class SearchResult:
    """Per query: the ids and scores of its hits, best first (fewer than k only when
    fewer than k items match). `rows` are the index's row numbers (-1 = no hit)."""

    ids: list[list[str]]
    scores: list[list[float]]
    rows: np.ndarray


def _check_vectors(vectors: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise ValueError(f"{what}: expected an N x D array, got shape {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(f"{what}: dimension {vectors.shape[1]}, the index has {dim}")
    if len(vectors):
        if not np.isfinite(vectors).all():
            raise ValueError(f"{what}: contains NaN or infinite values")
        norms = np.linalg.norm(vectors, axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(norms[worst] - 1.0) > _NORM_TOLERANCE:
            # Inner product is cosine only on unit vectors; an unnormalised vector would
            # silently rank by length.
            raise ValueError(
                f"{what}: row {worst} has norm {norms[worst]:.4f}; vectors must be L2-normalised"
            )
    return vectors


def _as_filter(flt: Filter | Mapping[str, Any] | None) -> Filter | None:
    if flt is None:
        return None
    if not isinstance(flt, Filter):
        flt = Filter.from_dict(flt)
    return None if flt.is_empty() else flt


class VectorIndex(ABC):
    """What every index offers; see the module docstring."""

    kind: str
    dim: int
    config: IndexConfig

    def __init__(self, dim: int, config: IndexConfig) -> None:
        self.dim = dim
        self.config = config
        self._ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self.attributes = _Attributes()
        self.build_recall: dict[str, float] | None = None

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def contains(self, ids: Iterable[str]) -> np.ndarray:
        return np.array([i in self._row_of for i in ids], dtype=bool)

    def matching_rows(self, flt: Filter | Mapping[str, Any] | None) -> np.ndarray | None:
        """The row mask of a filter (None: no filter)."""
        flt = _as_filter(flt)
        return None if flt is None else self.attributes.mask(flt)

    def add(
        self, vectors: np.ndarray, ids: Sequence[str], attributes: Attributes | None = None
    ) -> None:
        """Add new items; they are searchable as soon as this returns (no rebuild)."""
        vectors = _check_vectors(vectors, self.dim, "add")
        ids = [str(i) for i in ids]
        if len(ids) != len(vectors):
            raise ValueError(f"add: {len(ids)} ids for {len(vectors)} vectors")
        if len(set(ids)) != len(ids):
            raise ValueError("add: duplicate ids in one call")
        present = [i for i in ids if i in self._row_of]
        if present:
            raise ValueError(
                f"add: {len(present)} ids are already in the index (first: {present[0]!r}); "
                "an item is added once"
            )
        columns = _columns(attributes, len(ids))
        # Validate attribute types before anything is added, so a failing add leaves the
        # index as it was.
        probe = _Attributes()
        probe.kinds = dict(self.attributes.kinds)
        for name, values in columns.items():
            if name != CREATED_AT:
                probe._kind(name, values)
        if CREATED_AT in columns:
            [_to_micros(v) for v in columns[CREATED_AT] if v is not None]  # type: ignore[arg-type]
        self._add_vectors(vectors, ids, columns)
        start = len(self._ids)
        self._ids.extend(ids)
        self._row_of.update((i, start + n) for n, i in enumerate(ids))
        self.attributes.append(columns, len(ids))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filter: Filter | Mapping[str, Any] | None = None,
    ) -> SearchResult:
        """The k best items per query (cosine), among the items the filter matches."""
        queries = _check_vectors(queries, self.dim, "search")
        if k < 1:
            raise ValueError(f"search: k must be at least 1, got {k}")
        flt = _as_filter(filter)
        mask = None if flt is None else self.attributes.mask(flt)
        k = min(k, len(self) if mask is None else int(mask.sum()))
        if k == 0:
            empty = np.full((len(queries), 0), -1, dtype=np.int64)
            return SearchResult([[] for _ in queries], [[] for _ in queries], empty)
        scores, rows = self._search(queries, k, mask, flt)
        ids, out_scores = [], []
        for score_row, row_row in zip(scores, rows, strict=True):
            keep = row_row >= 0
            ids.append([self._ids[r] for r in row_row[keep]])
            out_scores.append([float(s) for s in score_row[keep]])
        return SearchResult(ids, out_scores, rows)

    @abstractmethod
    def _add_vectors(
        self, vectors: np.ndarray, ids: list[str], columns: Mapping[str, Sequence[AttrValue]]
    ) -> None: ...

    @abstractmethod
    def _search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, flt: Filter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows (queries x k, -1 = none); k <= the number of matching items."""

    @abstractmethod
    def _write(self, folder: Path) -> dict[str, Any]: ...

    @property
    def is_exact(self) -> bool:
        return False

    def size_bytes(self) -> int:
        """Bytes the index's own structure takes (vectors, graph, codes)."""
        return 0

    def save(self, folder: str | Path) -> Path:
        """Write the index to `folder` (replaced whole: written aside, then renamed)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            extra = self._write(tmp)
            pq.write_table(self.attributes.table(self._ids), tmp / ITEMS_FILE)
            meta = {
                "format": FORMAT_VERSION,
                "kind": self.kind,
                "dim": self.dim,
                "count": len(self),
                "config": str(self.config),
                "build_recall": self.build_recall,
                **extra,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            old = None
            if folder.exists():
                old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
                folder.rename(old)
            tmp.rename(folder)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    def _restore_items(self, folder: Path, count: int) -> None:
        ids, attrs = _Attributes.from_table(pq.read_table(folder / ITEMS_FILE))
        if len(ids) != count:
            raise ValueError(f"{folder}: {ITEMS_FILE} has {len(ids)} items, the index {count}")
        self._ids = ids
        self._row_of = {i: n for n, i in enumerate(ids)}
        self.attributes = attrs


# ---- FAISS -----------------------------------------------------------------------------


def _structure_bytes(index: faiss.Index) -> int:
    """Bytes of an index's vectors, codes, graph and lists (counted, not serialised: a
    serialised copy of a 1M-item index would double its memory)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return index.ntotal * index.d * 4
    if isinstance(index, faiss.IndexRefine):
        return _structure_bytes(index.base_index) + _structure_bytes(index.refine_index)
    if isinstance(index, faiss.IndexHNSW):
        hnsw = index.hnsw
        graph = hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        return graph + _structure_bytes(index.storage)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        lists = ivf.invlists.compute_ntotal() * (ivf.code_size + 8)  # codes + int64 ids
        return lists + _structure_bytes(ivf.quantizer)
    if hasattr(index, "code_size"):
        return index.ntotal * index.code_size
    return 0


def _selector(mask: np.ndarray) -> faiss.IDSelectorBitmap:
    # Bit i of the bitmap = row i matches (FAISS reads the bytes little-endian).
    return faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))


class FaissIndex(VectorIndex):
    """Exact (`IndexFlatIP`) or approximate (`index_factory`) FAISS index."""

    kind = "faiss"

    def __init__(self, dim: int, config: IndexConfig | str = "exact") -> None:
        config = IndexConfig.parse(config)
        super().__init__(dim, config)
        self.index = self._new_index(exact=config.backend in ("exact", "auto"))

    def _new_index(self, exact: bool) -> faiss.Index:
        if exact:
            return faiss.IndexFlatIP(self.dim)
        index = faiss.index_factory(self.dim, self.config.factory, faiss.METRIC_INNER_PRODUCT)
        hnsw = self._hnsw(index)
        if hnsw is not None:
            hnsw.hnsw.efConstruction = self.config.ef_construction
        ivf = self._ivf(index)
        if ivf is not None and hasattr(ivf, "do_polysemous_training"):
            # index_factory turns on polysemous training for IVF-PQ: it only serves
            # Hamming pre-filtering, which this index never uses, and takes minutes.
            ivf.do_polysemous_training = False
        return index

    @staticmethod
    def _hnsw(index: faiss.Index) -> Any:
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        return index if isinstance(index, faiss.IndexHNSW) else None

    @staticmethod
    def _ivf(index: faiss.Index) -> Any:
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        if "IVF" not in type(index).__name__:
            return None
        return faiss.downcast_index(faiss.extract_index_ivf(index))

    @property
    def is_exact(self) -> bool:
        return isinstance(self.index, faiss.IndexFlat)

    def size_bytes(self) -> int:
        return _structure_bytes(self.index)

    def train(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained:
            ivf = self._ivf(self.index)
            if ivf is not None and len(vectors) < ivf.nlist:
                raise ValueError(
                    f"index {self.config.factory!r} needs at least {ivf.nlist} vectors to "
                    f"train its {ivf.nlist} lists, got {len(vectors)}"
                )
            # k-means needs a sample, not every item: FAISS itself samples 256 points per
            # list; 64 per list (at least 100k) trains 1M items in a fraction of the time.
            lists = ivf.nlist if ivf is not None else 1
            size = max(_TRAIN_MIN, _TRAIN_PER_LIST * lists)
            if len(vectors) > size:
                rows = np.random.default_rng(0).choice(len(vectors), size, replace=False)
                vectors = vectors[np.sort(rows)]
            self.index.train(vectors)

    def _add_vectors(
        self, vectors: np.ndarray, ids: list[str], columns: Mapping[str, Sequence[AttrValue]]
    ) -> None:
        self.train(vectors)
        self.index.add(vectors)
        if (
            self.config.backend == "auto"
            and self.is_exact
            and self.index.ntotal >= self.config.exact_below
        ):
            self._become_approximate()

    def _become_approximate(self) -> None:
        # An auto index that grew past the threshold: build the approximate index from the
        # exact one's vectors (FAISS row order is kept, so ids and attributes still line up).
        vectors = self.index.reconstruct_n(0, self.index.ntotal)
        index = self._new_index(exact=False)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        self.index = index

    def _params(self, mask: np.ndarray | None, k: int, exhaustive: bool) -> Any:
        sel = None if mask is None else _selector(mask)
        # A filter keeps `selectivity` of the items; widening the candidate list by its
        # inverse keeps about as many matching candidates as an unfiltered search has.
        selectivity = 1.0 if mask is None else max(float(mask.mean()), 1e-9)
        widen = min(1.0 / selectivity, 1.0 / max(self.config.filter_scan_below, 1e-3))

        def inner(index: Any) -> Any:
            index = faiss.downcast_index(index)
            if isinstance(index, faiss.IndexRefine):
                # At small k, k * k_factor candidates is too few for coarse codes to hold
                # the true best; re-scoring 64 is cheap.
                return faiss.IndexRefineSearchParameters(
                    k_factor=max(self.config.k_factor, 64 / k),
                    base_index_params=inner(index.base_index),
                )
            if isinstance(index, faiss.IndexHNSW):
                ef = max(self.config.ef_search, k)
                return faiss.SearchParametersHNSW(efSearch=math.ceil(ef * widen), sel=sel)
            ivf = self._ivf(index)
            if ivf is not None:
                nprobe = (
                    ivf.nlist
                    if exhaustive
                    else min(ivf.nlist, math.ceil(self.config.nprobe * widen))
                )
                return faiss.SearchParametersIVF(nprobe=int(nprobe), sel=sel)
            return None if sel is None else faiss.SearchParameters(sel=sel)

        params = inner(self.index)
        return params, sel

    def _scan(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every (matching) item considered: exact for flat storage, all lists for IVF."""
        index = faiss.downcast_index(self.index)
        if isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.refine_index)
        elif isinstance(index, faiss.IndexHNSW):
            index = faiss.downcast_index(index.storage)
        sel = None if mask is None else _selector(mask)
        if self._ivf(index) is not None:
            params = faiss.SearchParametersIVF(nprobe=self._ivf(index).nlist, sel=sel)
        else:
            params = None if sel is None else faiss.SearchParameters(sel=sel)
        return index.search(queries, k, params=params)

    def _search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, flt: Filter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        matching = len(self) if mask is None else int(mask.sum())
        if self.is_exact or (
            mask is not None and matching <= self.config.filter_scan_below * len(self)
        ):
            return self._scan(queries, k, mask)
        params, _sel = self._params(mask, k, exhaustive=False)
        scores, rows = self.index.search(queries, k, params=params)
        # A graph walk or the probed lists can hold fewer than k matching items; those
        # queries are answered again by a scan, so k matching items always come back.
        short = (rows < 0).any(axis=1)
        if short.any():
            s2, r2 = self._scan(queries[short], k, mask)
            scores[short], rows[short] = s2, r2
        return scores, rows

    def _write(self, folder: Path) -> dict[str, Any]:
        faiss.write_index(self.index, str(folder / FAISS_FILE))
        return {"exact": self.is_exact}

    @classmethod
    def _read(cls, folder: Path, meta: Mapping[str, Any], mmap: bool) -> FaissIndex:
        obj = cls.__new__(cls)
        VectorIndex.__init__(obj, int(meta["dim"]), IndexConfig.parse(meta["config"]))
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        obj.index = faiss.read_index(str(folder / FAISS_FILE), flags)
        if obj.index.ntotal != meta["count"] or obj.index.d != obj.dim:
            raise ValueError(f"{folder}: {FAISS_FILE} does not match {META_FILE}")
        obj._restore_items(folder, obj.index.ntotal)
        obj.build_recall = meta.get("build_recall")
        return obj


# ---- sqlite-vec ------------------------------------------------------------------------


def sqlite_vec_available() -> str | None:
    """None when the sqlite-vec backend can run here, else why not."""
    try:
        _connect(":memory:").close()
    except Exception as exc:  # any failure means the backend is unavailable, and says why
        return str(exc)
    return None


def _connect(path: str) -> Any:
    # Python's own sqlite3 may be built without extension loading (this platform's
    # pyenv 3.11 is), so prefer pysqlite3, which bundles a recent SQLite that can.
    try:
        import pysqlite3.dbapi2 as sqlite3
    except ImportError:
        import sqlite3
    try:
        import sqlite_vec
    except ImportError:
        raise RuntimeError("the sqlite-vec backend needs the sqlite-vec package") from None
    conn = sqlite3.connect(path, check_same_thread=False)
    if not hasattr(conn, "enable_load_extension"):
        raise RuntimeError(
            "this Python's sqlite3 cannot load extensions; install pysqlite3-binary "
            "for the sqlite-vec backend"
        )
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    return conn


# ---- helpers of the backends whose attribute columns are fixed at creation ------------


def fixed_attribute_kinds(columns: Mapping[str, Sequence[AttrValue]]) -> dict[str, str]:
    """Each attribute's kind ("str" or "bool"; created_at apart), to create columns with."""
    probe = _Attributes()
    return {n: probe._kind(n, v) for n, v in columns.items() if n != CREATED_AT}


def check_declared(
    columns: Mapping[str, Sequence[AttrValue]], declared: Collection[str], store: str
) -> None:
    unknown = set(columns) - set(declared) - {CREATED_AT}
    if unknown:
        raise ValueError(
            f"add: attributes {sorted(unknown)} were not declared when the {store} was created"
        )


def equals_lists(flt: Filter) -> Iterable[tuple[str, list[str | bool]]]:
    """The filter's attribute conditions, each as the list of values it accepts."""
    for name, wanted in flt.equals.items():
        yield name, [wanted] if isinstance(wanted, str | bool) else list(wanted)


# vec0 metadata columns cannot hold NULL: a missing value is stored as these.
_SQL_MISSING_TEXT = "\x1fmissing"
_SQL_MISSING_INT = -1
SQLITE_VEC_MAX_K = 4096  # sqlite-vec's limit on k in one KNN query


class SqliteVecIndex(VectorIndex):
    """Vectors in a sqlite-vec `vec0` table; attributes as its metadata columns, so the
    filter is part of the KNN query. sqlite-vec's KNN is an exact scan.

    The attribute names are fixed when the table is created (vec0 cannot add columns):
    they come from the first `add`, or from `attribute_kinds`.
    """

    kind = "sqlite-vec"

    def __init__(
        self,
        dim: int,
        path: str | Path | None = None,
        attribute_kinds: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(dim, IndexConfig(backend="sqlite-vec"))
        self.path = str(path) if path is not None else ":memory:"
        self.conn = _connect(self.path)
        self.columns: dict[str, str] | None = None  # attribute -> vec0 column
        self.kinds: dict[str, str] = {}
        if attribute_kinds is not None:
            self._create(dict(attribute_kinds))

    @property
    def is_exact(self) -> bool:
        return True

    def size_bytes(self) -> int:
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * self.conn.execute("PRAGMA page_size").fetchone()[0])

    def _create(self, kinds: dict[str, str]) -> None:
        # Column names are generated (a0, a1, ...): attribute names need not be SQL names.
        self.columns = {name: f"a{n}" for n, name in enumerate(kinds)}
        defs = [
            f"{self.columns[name]} {'integer' if kind == 'bool' else 'text'}"
            for name, kind in kinds.items()
        ]
        self.conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS items USING vec0("
            f"row integer primary key, embedding float[{self.dim}] distance_metric=cosine, "
            + ", ".join([*defs, "created_at integer"])
            + ")"
        )
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key text primary key, value text)")
        self.conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('attributes', ?)", (json.dumps(kinds),)
        )
        self.kinds = kinds

    def _add_vectors(
        self, vectors: np.ndarray, ids: list[str], columns: Mapping[str, Sequence[AttrValue]]
    ) -> None:
        if self.columns is None:
            self._create(fixed_attribute_kinds(columns))
        assert self.columns is not None
        check_declared(columns, self.columns, "sqlite-vec table (vec0 cannot add columns)")
        start = len(self)
        names = list(self.columns)
        created = columns.get(CREATED_AT)
        rows = []
        for n in range(len(ids)):
            values: list[Any] = []
            for name in names:
                value = columns[name][n] if name in columns else None
                if self.kinds[name] == "bool":
                    values.append(_SQL_MISSING_INT if value is None else int(bool(value)))
                else:
                    values.append(_SQL_MISSING_TEXT if value is None else value)
            time = created[n] if created is not None else None
            rows.append(
                (
                    start + n,
                    vectors[n].tobytes(),
                    *values,
                    _NO_TIME if time is None else _to_micros(time),  # type: ignore[arg-type]
                )
            )
        cols = ", ".join(["row", "embedding", *[self.columns[n] for n in names], "created_at"])
        marks = ", ".join("?" * (len(names) + 3))
        with self.conn:
            self.conn.executemany(f"INSERT INTO items({cols}) VALUES ({marks})", rows)

    def _where(self, flt: Filter | None) -> tuple[str, list[Any]]:
        if flt is None or flt.is_empty():
            return "", []
        assert self.columns is not None
        parts, params = [], []
        for name, wanted in equals_lists(flt):
            values = [int(v) if isinstance(v, bool) else v for v in wanted]
            parts.append(f"{self.columns[name]} IN ({', '.join('?' * len(values))})")
            params.extend(values)
        lo, hi = flt.time_range()
        if lo is not None:
            parts.append("created_at >= ?")
            params.append(lo)
        if hi is not None:
            parts.append("created_at < ?")
            params.append(hi)
        if lo is not None or hi is not None:
            parts.append("created_at != ?")
            params.append(int(_NO_TIME))
        return " AND " + " AND ".join(parts), params

    def _search(
        self, queries: np.ndarray, k: int, mask: np.ndarray | None, flt: Filter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if k > SQLITE_VEC_MAX_K:
            raise ValueError(f"search: sqlite-vec returns at most {SQLITE_VEC_MAX_K} items")
        where, params = self._where(flt)
        sql = f"SELECT row, distance FROM items WHERE embedding MATCH ? AND k = ?{where}"
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for q, query in enumerate(queries):
            hits = self.conn.execute(sql, [query.tobytes(), k, *params]).fetchall()
            for j, (row, distance) in enumerate(hits):
                rows[q, j] = row
                scores[q, j] = 1.0 - distance  # cosine distance -> cosine similarity
        return scores, rows

    def _write(self, folder: Path) -> dict[str, Any]:
        # SQLite's backup API copies a consistent snapshot, even of an in-memory database.
        dest = _connect(str(folder / SQLITE_FILE))
        try:
            self.conn.backup(dest)
        finally:
            dest.close()
        return {"attributes": self.kinds if self.columns is not None else None}

    @classmethod
    def _read(cls, folder: Path, meta: Mapping[str, Any], mmap: bool) -> SqliteVecIndex:
        obj = cls.__new__(cls)
        VectorIndex.__init__(obj, int(meta["dim"]), IndexConfig(backend="sqlite-vec"))
        # Work on a copy in memory: the saved folder stays as it was saved.
        obj.path = ":memory:"
        obj.conn = _connect(":memory:")
        src = _connect(str(folder / SQLITE_FILE))
        try:
            src.backup(obj.conn)
        finally:
            src.close()
        kinds = meta.get("attributes")
        obj.columns = None if kinds is None else {name: f"a{n}" for n, name in enumerate(kinds)}
        obj.kinds = kinds or {}
        obj._restore_items(folder, int(meta["count"]))
        obj.build_recall = meta.get("build_recall")
        return obj


# ---- building, loading, recall ---------------------------------------------------------


def build_index(
    vectors: np.ndarray,
    ids: Sequence[str],
    attributes: Attributes | None = None,
    config: IndexConfig | str = "auto",
    recall_queries: int = 256,
    seed: int = 0,
) -> VectorIndex:
    """Build the index `config` names over the items. An approximate result carries its
    recall@10 against exact search (`build_recall`), measured on `recall_queries`
    queries made from the items (the normalised mean of two random items each)."""
    config = IndexConfig.parse(config)
    vectors = _check_vectors(vectors, None, "build")
    dim = vectors.shape[1] if vectors.size else 0
    if config.backend == "sqlite-vec":
        index: VectorIndex = SqliteVecIndex(dim)
    elif config.backend == "feast":
        from serving.feast_vector_index import FeastVectorIndex  # needs Feast's Milvus store

        index = FeastVectorIndex(dim)
    elif config.backend == "auto" and len(vectors) < config.exact_below:
        index = FaissIndex(dim, config)  # exact now; becomes approximate if it grows
    elif config.backend == "auto":
        index = FaissIndex(dim, replace(config, backend="faiss"))
        index.config = config  # keep "auto" so a save/load round trip keeps the choice
    else:
        index = FaissIndex(dim, config)
    index.add(vectors, ids, attributes)
    if not index.is_exact and recall_queries > 0 and len(vectors) > 10:
        rng = np.random.default_rng(seed)
        pairs = rng.integers(0, len(vectors), size=(recall_queries, 2))
        queries = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        index.build_recall = {
            "recall@10": recall_against_exact(index, vectors, queries, k=10),
            "queries": float(recall_queries),
        }
    return index


def load_index(folder: str | Path, mmap: bool = False) -> VectorIndex:
    """Load an index saved with `save` (mmap: FAISS maps the file instead of reading it)."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{folder}: no {META_FILE} (not a saved vector index)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{folder}: index format {meta.get('format')}, expected {FORMAT_VERSION}")
    from serving.feast_vector_index import FeastVectorIndex

    readers = {
        FaissIndex.kind: FaissIndex._read,
        SqliteVecIndex.kind: SqliteVecIndex._read,
        FeastVectorIndex.kind: FeastVectorIndex._read,
    }
    if meta.get("kind") not in readers:
        raise ValueError(f"{folder}: unknown index kind {meta.get('kind')!r}")
    return readers[meta["kind"]](folder, meta, mmap)


def exact_top_k(
    vectors: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top k by inner product (numpy, in chunks): scores and rows."""
    vectors = np.asarray(vectors, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    rows_all = np.arange(len(vectors)) if mask is None else np.flatnonzero(mask)
    k = min(k, len(rows_all))
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_r = np.full((len(queries), 0), -1, dtype=np.int64)
    for start in range(0, len(rows_all), 131072):
        chunk = rows_all[start : start + 131072]
        scores = queries @ vectors[chunk].T
        take = min(k, len(chunk))
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        best_r = np.concatenate([best_r, chunk[part]], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_r, keep, 1)
    return best_s, best_r


def recall_against_exact(
    index: VectorIndex,
    exact: VectorIndex | np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    filter: Filter | Mapping[str, Any] | None = None,
) -> float:
    """Mean over queries of |index's top k ∩ exact top k| / |exact top k|.

    `exact` is either an exact index over the same ids, or the vectors row-aligned with
    `index.ids` (searched by brute force here)."""
    got = index.search(queries, k, filter)
    if isinstance(exact, VectorIndex):
        truth = exact.search(queries, k, filter).ids
    else:
        _, rows = exact_top_k(exact, queries, k, index.matching_rows(filter))
        truth = [[index.ids[r] for r in row] for row in rows]
    hits = [
        len(set(g) & set(t)) / len(t) if t else 1.0 for g, t in zip(got.ids, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


def faiss_threads(threads: int) -> None:
    """FAISS's OpenMP thread count for this process (serving sets it per worker)."""
    faiss.omp_set_num_threads(max(1, threads))


__all__ = [
    "FaissIndex",
    "Filter",
    "IndexConfig",
    "SearchResult",
    "SqliteVecIndex",
    "VectorIndex",
    "build_index",
    "exact_top_k",
    "faiss_threads",
    "load_index",
    "recall_against_exact",
    "sqlite_vec_available",
]
