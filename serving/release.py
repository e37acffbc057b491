"""From a registered model version to a served one: build its archive, deploy it.

The archive is built from the registry (weights + model.json of the version); it names
the search catalogue the publish step put in object storage for that version
(serving/search_store.py), which every worker loads, so serving and the feature store
hold the same vectors.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri
from serving.archive import archive_name, build_archive
from serving.search_store import search_prefix


def archive_uri(settings: Settings, name: str, version: str) -> S3Uri:
    return S3Uri(settings.lake_bucket, f"archives/{archive_name(name, version)}.mar")


def build_release(name: str, version: str, settings: Settings) -> dict[str, Any]:
    """Build `<name>-v<version>.mar` and keep it in object storage (idempotent)."""
    from dualmedia.snapshot import Snapshot
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
    snapshot = Snapshot(store, tags[TAG_SNAPSHOT_URI])
    search = search_prefix(settings, dataset, version)
    if not store.is_committed(search):
        raise ValueError(f"{name} v{version}: publish it first (no search catalogue at {search})")
    info = {
        "dataset": dataset,
        "registered_model": name,
        "run_id": tags.get(TAG_RUN),
        "snapshot_id": tags.get(TAG_SNAPSHOT),
        "reliability": unimodal_reliability(model, snapshot.validation_arrays()),
        "search_uri": str(search),
    }
    with tempfile.TemporaryDirectory(prefix="dualmedia-release-") as tmp:
        files = download_model_files(name, version, settings, Path(tmp) / "model")
        prompts = model.encoder.prompt_modality
        tokenizer = model.encoder.trunk(prompts).tokenizer if prompts else None
        path = build_archive(files, info, Path(tmp) / "out", name, version, tokenizer=tokenizer)
        store.upload_file(path, target)
    return {"archive_uri": str(target), "reused": False, "version": version, **info}


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
