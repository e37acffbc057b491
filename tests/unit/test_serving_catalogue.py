"""The search catalogue: weighted multimodal queries, explanations, filters inside the index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.catalogue import Catalogue, UnknownFilter
from tests.integration.serving_helpers import random_catalogue


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    v = rng.normal(size=dim)
    return v / np.linalg.norm(v)


def test_a_weighted_query_ranks_by_the_weighted_similarities_and_explains_them() -> None:
    catalogue = random_catalogue(16, n=60)
    rng = np.random.default_rng(1)
    queries = {"text": _unit(rng, 16), "image": _unit(rng, 16)}
    results = catalogue.search(queries, {"text": 1.0, "image": 3.0}, "image", 60)
    expected = 0.25 * catalogue.vectors["image"] @ queries["text"]
    expected += 0.75 * catalogue.vectors["image"] @ queries["image"]
    order = [catalogue.ids["image"][n] for n in np.argsort(-expected)]
    assert [r["id"] for r in results] == order
    for r in results:
        assert r["weights"] == {"text": 0.25, "image": 0.75}
        explained = sum(r["weights"][m] * r["similarities"][m] for m in queries)
        assert explained == pytest.approx(r["score"], abs=1e-5)


# The feast backend: the same catalogue searched through Feast's Milvus online store.
@pytest.mark.parametrize("index_config", ["exact", "feast"])
def test_filters_return_exactly_the_matching_items_and_k_of_them(index_config: str) -> None:
    catalogue = random_catalogue(16, n=60, index_config=index_config)
    query = {"text": _unit(np.random.default_rng(2), 16)}
    flt = {
        "damaged": True,
        "sentiment": ["negative", "neutral"],
        "batch": ["batch-0001", "batch-0002"],
    }
    matching = {
        i for i, item in catalogue.items.items()
        if item.labels["damaged"] == "true" and item.labels["sentiment"] != "positive"
        and item.batch in ("batch-0001", "batch-0002")
    }  # fmt: skip
    found = catalogue.search(query, {"text": 1.0}, "fused", 60, flt)
    assert {r["id"] for r in found} == matching
    assert len(catalogue.search(query, {"text": 1.0}, "fused", 3, flt)) == 3
    predicted = catalogue.search(
        query, {"text": 1.0}, "text", 60, {"predicted_sentiment": "neutral"}
    )
    assert {r["predicted"]["sentiment"] for r in predicted} == {"neutral"} and len(predicted) == 20
    november_2 = {"from": "2026-11-02T00:00:00Z", "to": "2026-11-03T00:00:00Z"}
    in_time = catalogue.search(query, {"text": 1.0}, "text", 60, {"created_at": november_2})
    assert {r["batch"] for r in in_time} == {"batch-0001"} and len(in_time) == 10
    with pytest.raises(UnknownFilter, match="unknown attribute 'colour'"):
        catalogue.search(query, {"text": 1.0}, "text", 5, {"colour": "red"})


def test_the_catalogue_survives_save_and_load_and_reads_an_older_archive(tmp_path: Path) -> None:
    catalogue = random_catalogue(8, n=12)
    catalogue.save(tmp_path / "new")
    again = Catalogue.load(tmp_path / "new")
    assert again.targets == ["text", "image", "audio", "fused"]
    assert again.items == catalogue.items
    # An archive built before items had labels kept {"ids", "texts"}: still served.
    meta = json.loads((tmp_path / "new" / "catalogue.json").read_text())
    old = {"ids": meta["ids"], "texts": {i: f"old {i}" for i in meta["ids"]["text"]}}
    (tmp_path / "new" / "catalogue.json").write_text(json.dumps(old))
    loaded = Catalogue.load(tmp_path / "new")
    top = loaded.search({"text": catalogue.vectors["text"][0]}, {"text": 1.0}, "text", 1)
    assert top[0]["id"] == catalogue.ids["text"][0] and top[0]["text"].startswith("old ")


def test_above_its_threshold_the_index_is_approximate_and_its_recall_is_measured(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"i{n}" for n in range(600)]
    catalogue = Catalogue({"text": ids}, {"text": vectors}, {}, "1", "auto;exact_below=500")
    report = catalogue.report()["text"]
    assert report["items"] == 600 and report["exact"] is False
    assert report["build_recall"]["recall@10"] >= 0.9
    catalogue.save(tmp_path / "c")
    again = Catalogue.load(tmp_path / "c")
    assert again.report() == catalogue.report()  # the built index is loaded, not rebuilt
    query = {"text": vectors[7]}
    assert again.search(query, {"text": 1.0}, "text", 1)[0]["id"] == "i7"


def test_re_ranking_moves_items_whose_other_modalities_disagree_and_explains_it() -> None:
    rng = np.random.default_rng(4)
    query = _unit(rng, 16)
    # Two items whose photos match the query equally; only item "b"'s review agrees.
    other = _unit(rng, 16)
    images = np.stack([0.9 * query + 0.1 * other, 0.9 * query + 0.1 * other])
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts = np.stack([-query, query]).astype(np.float32)
    catalogue = Catalogue({"image": ["a", "b"], "text": ["a", "b"]},
                          {"image": images.astype(np.float32), "text": texts}, {})  # fmt: skip
    plain = catalogue.search({"text": query}, {"text": 1.0}, "image", 2)
    assert plain[0]["score"] == pytest.approx(plain[1]["score"])
    ranked = catalogue.search({"text": query}, {"text": 1.0}, "image", 2, rerank=0.4)
    assert [r["id"] for r in ranked] == ["b", "a"]
    for r in ranked:
        parts = r["rerank"]["contributions"]
        assert parts["retrieval"] + parts["agreement"] == pytest.approx(r["score"], abs=1e-5)
        assert parts["retrieval"] == pytest.approx(0.6 * r["rerank"]["retrieval"], abs=1e-5)
    assert ranked[0]["rerank"]["agreement_by_modality"]["text"] == pytest.approx(1.0, abs=1e-5)
