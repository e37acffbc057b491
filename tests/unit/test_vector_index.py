"""serving.vector_index: filters inside the search, growth without rebuild, save/load,
approximate recall against exact (a quality assertion; no timings are asserted)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import faiss
import numpy as np
import pytest

from serving.vector_index import (
    FaissIndex,
    Filter,
    IndexConfig,
    build_index,
    exact_top_k,
    load_index,
    recall_against_exact,
    sqlite_vec_available,
)

DIM = 64
N = 4000
START = datetime(2026, 11, 1, tzinfo=UTC)

SQLITE_VEC = pytest.param(
    "sqlite-vec",
    marks=pytest.mark.skipif(
        sqlite_vec_available() is not None, reason=f"sqlite-vec: {sqlite_vec_available()}"
    ),
)
# Every backend must give the same filter semantics; the approximate ones are small here.
BACKENDS = [
    "exact",
    "faiss:HNSW16,Flat;efSearch=64",
    "faiss:IVF32,PQ32x4,RFlat;nprobe=8",
    SQLITE_VEC,
    "feast",
]


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    # These tests check results, not speed; one thread avoids OpenMP spin-waits when the
    # machine's cores are shared with other work.
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Vectors with structure, as embeddings have (clusters in a low-rank subspace)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).standard_normal((16, dim))
    centres = np.random.default_rng(98).standard_normal((40, 16))
    latent = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, 16))
    return unit(latent @ basis + 0.1 * rng.standard_normal((n, dim)))


def attributes(n: int, offset: int = 0) -> dict[str, list]:
    rows = range(offset, offset + n)
    return {
        "damaged": [i % 5 == 0 for i in rows],
        "sentiment": [
            None if i % 11 == 0 else ["negative", "neutral", "positive"][i % 3] for i in rows
        ],
        "batch": [f"batch-{i // 1000}" for i in rows],
        "created_at": [START + timedelta(hours=i) for i in rows],
    }


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str], dict[str, list], np.ndarray]:
    vectors = clustered(N, seed=1)
    queries = clustered(40, seed=2)
    return vectors, [f"item-{i}" for i in range(N)], attributes(N), queries


def expected_rows(attrs: dict[str, list], flt: Filter) -> np.ndarray:
    """The filter evaluated the plain way, item by item."""
    lo, hi = flt.created_from, flt.created_to
    keep = []
    for i in range(len(attrs["batch"])):
        ok = all(attrs[name][i] in set(values) for name, values in flt.equals.items())
        t = attrs["created_at"][i]
        ok = ok and (lo is None or t >= lo) and (hi is None or t < hi)
        keep.append(ok)
    return np.flatnonzero(keep)


FILTERS = [
    Filter(equals={"damaged": [True]}),
    Filter(equals={"sentiment": ["negative", "neutral"], "batch": ["batch-1"]}),
    Filter(equals={"batch": ["batch-3"]}, created_from=START + timedelta(hours=3100)),
    # Selective: 7 items match, fewer than k
    Filter(created_from=START + timedelta(hours=200), created_to=START + timedelta(hours=235)),
    Filter(
        equals={"damaged": [True], "sentiment": ["positive"]},
        created_to=START + timedelta(hours=900),
    ),
]


@pytest.mark.parametrize("config", BACKENDS)
def test_filters_return_exactly_matching_items_and_k_of_them(data, config: str) -> None:
    vectors, ids, attrs, queries = data
    index = build_index(vectors, ids, attrs, config)
    k = 10
    for flt in FILTERS:
        rows = expected_rows(attrs, flt)
        allowed = {ids[r] for r in rows}
        result = index.search(queries, k, flt)
        for hits, scores in zip(result.ids, result.scores, strict=True):
            assert set(hits) <= allowed, (config, flt)
            assert len(hits) == min(k, len(rows)), (config, flt, len(hits), len(rows))
            assert len(set(hits)) == len(hits)
            assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("config", BACKENDS)
def test_filter_matching_nothing_and_bad_filters(data, config: str) -> None:
    vectors, ids, attrs, queries = data
    index = build_index(vectors[:500], ids[:500], {k: v[:500] for k, v in attrs.items()}, config)
    assert index.search(queries, 5, {"batch": "no-such-batch"}).ids == [[]] * len(queries)
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        index.search(queries, 5, {"colour": "red"})
    with pytest.raises(ValueError, match=r"'damaged'.*not a bool"):
        index.search(queries, 5, {"damaged": "yes"})


def test_filter_from_json() -> None:
    flt = Filter.from_dict(
        {
            "damaged": True,
            "sentiment": ["negative", "neutral"],
            "created_at": {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
        }
    )
    assert flt.equals == {"damaged": [True], "sentiment": ["negative", "neutral"]}
    assert flt.time_range()[1] - flt.time_range()[0] == 30 * 86400 * 1_000_000
    with pytest.raises(ValueError, match="created_at"):
        Filter.from_dict({"created_at": "2026-11-01"})


@pytest.mark.parametrize("config", ["exact", SQLITE_VEC, "feast"])
def test_exact_search_equals_brute_force_numpy(data, config: str) -> None:
    vectors, ids, attrs, queries = data
    index = build_index(vectors, ids, attrs, config)
    assert index.is_exact
    flt = Filter(equals={"damaged": [False]})
    for f in (None, flt):
        mask = None if f is None else index.matching_rows(f)
        scores, rows = exact_top_k(vectors, queries, 10, mask)
        result = index.search(queries, 10, f)
        assert [[ids[r] for r in row] for row in rows] == result.ids
        np.testing.assert_allclose(np.array(result.scores), scores, atol=1e-5)


def test_exact_top_k_matches_full_sort() -> None:
    vectors, queries = clustered(3000, seed=5), clustered(5, seed=6)
    _scores, rows = exact_top_k(vectors, queries, 7)
    full = np.argsort(-(queries @ vectors.T), axis=1)[:, :7]
    np.testing.assert_array_equal(rows, full)


@pytest.mark.parametrize("config", BACKENDS)
def test_added_items_are_found_without_rebuild(data, config: str) -> None:
    vectors, ids, attrs, queries = data
    first = 3000
    index = build_index(
        vectors[:first], ids[:first], {k: v[:first] for k, v in attrs.items()}, config
    )
    # 250 of the new items are searched for (one query per call is Feast's API).
    probe = slice(first, first + 250)
    before = index.search(vectors[probe], 1).ids
    assert all(hit[0] not in ids[first:] for hit in before)
    # A new batch arrives, with an attribute value the index has not seen yet.
    new_attrs = attributes(N - first, offset=first)
    new_attrs["batch"] = ["batch-new"] * (N - first)
    index.add(vectors[first:], ids[first:], new_attrs)
    assert len(index) == N
    # Each new item is found by its own vector (top 1 for exact search; within the top
    # 10 for the approximate ones, whose coarse codes may rank a near-duplicate first).
    found = index.search(vectors[probe], 10).ids
    assert all(own in hits for own, hits in zip(ids[probe], found, strict=True))
    if index.is_exact:
        assert [hit[0] for hit in found] == ids[probe]
    only_new = index.search(queries, 10, {"batch": "batch-new"}).ids
    assert all(len(h) == 10 and set(h) <= set(ids[first:]) for h in only_new)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(vectors[:1], ids[:1], {k: v[:1] for k, v in attrs.items()})


def test_auto_switches_to_approximate_above_threshold(data) -> None:
    vectors, ids, attrs, _ = data
    config = "auto:HNSW16,Flat;exact_below=3500"
    small = build_index(vectors[:3000], ids[:3000], {k: v[:3000] for k, v in attrs.items()}, config)
    assert small.is_exact
    small.add(vectors[3000:], ids[3000:], {k: v[3000:] for k, v in attrs.items()})
    assert not small.is_exact
    assert [h[0] for h in small.search(vectors[:50], 1).ids] == ids[:50]
    big = build_index(vectors, ids, attrs, config)
    assert not big.is_exact and big.build_recall is not None
    assert big.build_recall["recall@10"] >= 0.9


@pytest.mark.parametrize("config", BACKENDS)
def test_save_load_round_trip(data, config: str, tmp_path: Path) -> None:
    vectors, ids, attrs, queries = data
    index = build_index(vectors, ids, attrs, config)
    flt = Filter(equals={"sentiment": ["positive"]}, created_from=START + timedelta(hours=500))
    before = index.search(queries, 10, flt)
    folder = index.save(tmp_path / "v1" / "text")
    assert not list(folder.glob("*.pkl"))
    loaded = load_index(folder)
    assert type(loaded) is type(index) and loaded.is_exact == index.is_exact
    assert loaded.ids == ids and str(loaded.config) == str(index.config)
    after = loaded.search(queries, 10, flt)
    assert after.ids == before.ids
    np.testing.assert_allclose(np.array(after.scores), np.array(before.scores), atol=1e-6)
    # The loaded index keeps growing, and a second save replaces the folder whole.
    extra = clustered(3, seed=9)
    loaded.add(extra, ["x1", "x2", "x3"], {"damaged": [True] * 3, "batch": ["late"] * 3})
    assert loaded.search(extra, 1).ids == [["x1"], ["x2"], ["x3"]]
    loaded.save(folder)
    assert len(load_index(folder)) == N + 3
    assert sorted(p.name for p in folder.parent.iterdir()) == ["text"]


def test_load_rejects_a_folder_that_is_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a saved vector index"):
        load_index(tmp_path)


@pytest.mark.parametrize(
    "config", ["faiss:HNSW32,Flat;efSearch=64", "faiss:IVF32,PQ32x4,RFlat;nprobe=8"]
)
def test_approximate_recall_at_10_on_a_seeded_set(data, config: str) -> None:
    vectors, ids, attrs, queries = data
    index = build_index(vectors, ids, attrs, config)
    assert not index.is_exact
    exact = build_index(vectors, ids, attrs, "exact")
    recall = recall_against_exact(index, exact, queries, k=10)
    assert recall >= 0.9, recall
    # The same figure from the raw vectors, and under a filter.
    assert recall_against_exact(index, vectors, queries, k=10) == pytest.approx(recall)
    flt = Filter(equals={"sentiment": ["neutral"]})
    assert recall_against_exact(index, exact, queries, k=10, filter=flt) >= 0.9


def test_bad_input_is_named() -> None:
    vectors = clustered(20, seed=3)
    with pytest.raises(ValueError, match="L2-normalised"):
        build_index(vectors * 2, [str(i) for i in range(20)])
    index = build_index(vectors, [str(i) for i in range(20)], config="exact")
    with pytest.raises(ValueError, match="dimension 3, the index has 64"):
        index.search(np.ones((1, 3), np.float32) / np.sqrt(3), 2)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.search(vectors[:1], 0)
    with pytest.raises(ValueError, match="unknown backend"):
        IndexConfig.parse("annoy:x")
    with pytest.raises(ValueError, match="needs at least 64 vectors"):
        build_index(vectors, [str(i) for i in range(20)], config="faiss:IVF64,Flat")
    assert len(index.search(vectors[:1], 50).ids[0]) == 20


def test_config_string_round_trip() -> None:
    for text in ["exact", "sqlite-vec", "auto:HNSW32,Flat", "faiss:IVF1024,PQ32;nprobe=16"]:
        assert str(IndexConfig.parse(text)) == text
    config = IndexConfig.parse("auto:HNSW48,Flat;efSearch=200;exact_below=5000")
    assert (config.factory, config.ef_search, config.exact_below) == ("HNSW48,Flat", 200, 5000)
    assert isinstance(FaissIndex(8, config).index, object)
