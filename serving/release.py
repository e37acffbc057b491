"""From a registered model version to a served one: build its archive, deploy it.

The archive is built from the registry (weights + model.json of the version) and the
vectors the publish step wrote for that version (the search catalogue), so serving
and the feature store hold the same vectors.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from dualmedia import modalities
from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri
from serving.archive import archive_name, build_archive
from serving.catalogue import Catalogue, CatalogueItem


def archive_uri(settings: Settings, name: str, version: str) -> S3Uri:
    return S3Uri(settings.lake_bucket, f"archives/{archive_name(name, version)}.mar")


def build_release(name: str, version: str, settings: Settings) -> dict[str, Any]:
    """Build `<name>-v<version>.mar` and keep it in object storage (idempotent)."""
    from dualmedia.snapshot import Snapshot
    from feature_repo.publish import published_vectors
    from training.models.scoring import unimodal_reliability
    from training.registry import (
        TAG_RUN,
        TAG_SNAPSHOT,
        TAG_SNAPSHOT_URI,
        download_model_files,
        load_registered_model,
    )

    store = ObjectStore(settings)
    target = archive_uri(settings, name, version)
    if store.exists(target):
        return {"archive_uri": str(target), "reused": True, "version": version}
    model, tags = load_registered_model(name, version, settings)
    dataset = model.spec.name
    published = published_vectors(settings, dataset, version)
    snapshot = Snapshot(store, tags[TAG_SNAPSHOT_URI])
    items = catalogue_items(snapshot, published["predicted"], model.modalities)
    catalogue = Catalogue(published["ids"], published["vectors"], items, version)
    info = {
        "dataset": dataset,
        "registered_model": name,
        "run_id": tags.get(TAG_RUN),
        "snapshot_id": tags.get(TAG_SNAPSHOT),
        "reliability": unimodal_reliability(model, snapshot.validation_arrays()),
    }
    with tempfile.TemporaryDirectory(prefix="dualmedia-release-") as tmp:
        files = download_model_files(name, version, settings, Path(tmp) / "model")
        prompts = model.encoder.prompt_modality
        tokenizer = model.encoder.trunk(prompts).tokenizer if prompts else None
        path = build_archive(
            files, catalogue, info, Path(tmp) / "out", name, version, tokenizer=tokenizer
        )
        store.upload_file(path, target)
    return {"archive_uri": str(target), "reused": False, "version": version, **info}


def catalogue_items(
    snapshot: Any, predicted: dict[str, dict[str, str]], model_modalities: list[str]
) -> dict[str, CatalogueItem]:
    """What search results show about each published item (its text, when the model has
    an inline modality) and what filters ask (labels, predictions, batch, time)."""
    from dualmedia.snapshot import label_column

    spec = snapshot.spec
    shown = next((m.name for m in modalities.specs(model_modalities) if m.inline), None)
    columns = ["id", "batch", "created_at", *(label_column(n) for n in spec.labels)]
    columns += [shown] if shown else []
    items: dict[str, CatalogueItem] = {}
    for table in snapshot.iter_tables(columns=columns):
        for row in table.to_pylist():
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


def deploy_release(name: str, version: str, settings: Settings) -> dict[str, Any]:
    """Fetch the version's archive and deploy it (smoke-tested before it is default)."""
    from serving.deploy import deploy

    store = ObjectStore(settings)
    with tempfile.TemporaryDirectory(prefix="dualmedia-deploy-") as tmp:
        local = Path(tmp) / f"{archive_name(name, version)}.mar"
        store.download_file(archive_uri(settings, name, version), local)
        return deploy(local, version, settings)


def describe_archive(path: Path) -> dict[str, Any]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("archive.json"))
