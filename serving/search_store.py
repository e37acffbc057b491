"""Search catalogues in object storage: one per published model version.

The publish step builds it from the vectors it has just written to the feature store
(`feature_repo.publish.published_vectors`), with each item's text, labels, predictions,
batch and time, and publishes it atomically under

    s3://<lake>/search/<dataset>/v<version>/    catalogue.json, <target>.npy, <target>/

(`<target>/` is a saved vector index: exact below `Settings.search_index`'s size
threshold, approximate above, with its recall@10 against exact measured at build and
kept in the commit marker). A served archive names this prefix (`search_uri` in
archive.json) and every worker loads it at start: the catalogue is not in the archive,
so neither the archive nor a deploy carries it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dualmedia import modalities
from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri
from serving.catalogue import Catalogue, CatalogueItem


def search_prefix(settings: Settings, dataset: str, version: str) -> S3Uri:
    return S3Uri(settings.lake_bucket, f"search/{dataset}/v{version}")


def publish_catalogue(store: ObjectStore, catalogue: Catalogue, prefix: S3Uri) -> dict[str, Any]:
    """Publish a catalogue under `prefix`, atomically (readers see all of it or nothing)."""
    with tempfile.TemporaryDirectory(prefix="dualmedia-search-") as tmp:
        catalogue.save(Path(tmp))
        store.publish_dir(Path(tmp), prefix, metadata={"targets": catalogue.report()})
    return published_catalogue(store, prefix, reused=False)


def published_catalogue(store: ObjectStore, prefix: S3Uri, reused: bool = True) -> dict[str, Any]:
    """Where a published catalogue is and what it holds per target (from its marker)."""
    marker = store.committed_manifest(prefix)
    return {"uri": str(prefix), "reused": reused, "targets": marker["metadata"]["targets"]}


def load_catalogue(store: ObjectStore, uri: str) -> Catalogue:
    """The catalogue published under `uri` (refused if it was never fully published)."""
    prefix = S3Uri.parse(uri)
    store.committed_manifest(prefix)
    with tempfile.TemporaryDirectory(prefix="dualmedia-search-") as tmp:
        store.download_dir(prefix, Path(tmp))
        return Catalogue.load(Path(tmp))


def batch_prefix(search_uri: str | S3Uri, batch: str) -> S3Uri:
    """Where a batch published after the version's catalogue goes (serving picks it up)."""
    uri = search_uri if isinstance(search_uri, S3Uri) else S3Uri.parse(search_uri)
    return uri.join("batches", batch)


def new_batches(store: ObjectStore, search_uri: str, known: set[str]) -> list[str]:
    """Batches published to a catalogue that are not in `known` (committed ones only)."""
    base = S3Uri.parse(search_uri).join("batches")
    return [
        b for b in sorted(store.list_prefixes(base))
        if b not in known and store.is_committed(base.join(b))
    ]  # fmt: skip


def build_search_catalogue(
    settings: Settings, model: Any, snapshot: Any, version: str
) -> dict[str, Any]:
    """The publish step's search catalogue of a model version, built and published."""
    from feature_repo.publish import published_vectors

    dataset = model.spec.name
    published = published_vectors(settings, dataset, version)
    items = catalogue_items(
        snapshot.iter_tables(), snapshot.spec, published["predicted"], model.modalities
    )
    prefix = search_prefix(settings, dataset, version)
    store = ObjectStore(settings)
    if store.is_committed(prefix):  # published already: the same vectors, kept
        return published_catalogue(store, prefix)
    catalogue = Catalogue(
        published["ids"], published["vectors"], items, version, settings.search_index
    )
    return publish_catalogue(store, catalogue, prefix)


def catalogue_items(
    tables: Iterable[Any],
    spec: Any,
    predicted: dict[str, dict[str, str]],
    model_modalities: list[str],
) -> dict[str, CatalogueItem]:
    """What search results show about each published item (its text, when the model has
    an inline modality) and what filters ask (labels, predictions, batch, time), from
    records tables (a snapshot's, or a batch's)."""
    from dualmedia.snapshot import label_column

    shown = next((m.name for m in modalities.specs(model_modalities) if m.inline), None)
    columns = ["id", "batch", "created_at", *(label_column(n) for n in spec.labels)]
    columns += [shown] if shown else []
    items: dict[str, CatalogueItem] = {}
    for table in tables:
        for row in table.select(columns).to_pylist():
            if row["id"] not in predicted:
                continue
            labels = {
                name: label.classes[row[label_column(name)]]
                for name, label in spec.labels.items()
                if row[label_column(name)] is not None and row[label_column(name)] >= 0
            }
            items[row["id"]] = CatalogueItem(
                text=row[shown] if shown else None,
                labels=labels,
                predicted=predicted[row["id"]],
                batch=row["batch"],
                created_at=row["created_at"],
            )
    return items
