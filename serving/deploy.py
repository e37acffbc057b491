"""Deploy and roll back a model version on TorchServe, one step at a time, safely.

Deploying version v of an archive:
  1. make the archive reachable (copy into the local model store, or a presigned URL),
  2. register it under each endpoint name (embed, search, insights) without making it
     the default, with the configured batching and workers,
  3. send a smoke request to that exact version of every endpoint,
  4. only then make v the default, keeping the previous default registered for
     rollback but with no workers (its memory back; rollback starts them again), and
     unregister anything older,
  5. record the deployment (settings.torchserve_deployments_file).
A failing smoke test unregisters v and leaves the previous version serving.
Re-deploying the version already serving does nothing.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri
from serving.client import TorchServeClient, TorchServeError
from serving.protocol import TASKS

SMOKE_REQUESTS: dict[str, dict[str, Any]] = {
    "embed": {"text": "smoke test: the parcel arrived"},
    "search": {"query": {"text": "smoke test: a mug"}, "target": "text", "k": 1},
    "insights": {"text": "smoke test: works as described"},
}


class DeployError(RuntimeError):
    """Deployment refused or failed; what was serving before still serves."""


def load_record(settings: Settings) -> dict[str, Any]:
    path = settings.torchserve_deployments_file
    if not path.exists():
        return {"endpoints": {}, "history": []}
    return json.loads(path.read_text(encoding="utf-8"))


def save_record(settings: Settings, record: dict[str, Any]) -> None:
    path = settings.torchserve_deployments_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    tmp.replace(path)


def _reachable(archive: Path, settings: Settings) -> str:
    """The `url` TorchServe registers from."""
    store = settings.torchserve_model_store
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        if archive.resolve().parent != store.resolve():
            shutil.copy(archive, store / archive.name)
        return archive.name
    # A remote TorchServe fetches from object storage (its allowed_urls must permit it).
    objects = ObjectStore(settings)
    key = S3Uri(settings.lake_bucket, f"archives/{archive.name}")
    objects.upload_file(archive, key)
    return objects.client.generate_presigned_url(
        "get_object", Params={"Bucket": key.bucket, "Key": key.key}, ExpiresIn=3600
    )


def smoke_test(client: TorchServeClient, task: str, version: str) -> None:
    response = client.predict(task, SMOKE_REQUESTS[task], version=version)
    if response.status_code != 200:
        raise DeployError(
            f"smoke request to {task} version {version} answered HTTP {response.status_code}: "
            f"{response.text[:300]}"
        )


def deploy(archive: Path, version: str, settings: Settings) -> dict[str, Any]:
    """Serve `archive` (model version `version`) on every endpoint; see module doc."""
    client = TorchServeClient(settings)
    record = load_record(settings)
    current = {t: client.default_version(t) for t in TASKS}
    if all(v == version for v in current.values()):
        return {"status": "already serving", "version": version, "endpoints": list(TASKS)}
    url = _reachable(Path(archive), settings)
    registered: list[str] = []
    try:
        for task in TASKS:
            if _start(client, task, version, url, settings):
                registered.append(task)
        for task in TASKS:
            smoke_test(client, task, version)
    except (TorchServeError, DeployError) as exc:
        for task in registered:
            if current[task] is not None:  # the first version of an endpoint is its default
                client.unregister(task, version)
        raise DeployError(f"deploying version {version} failed, nothing changed: {exc}") from None
    for task in TASKS:
        client.set_default(task, version)
    removed = _unregister_older(client, version, current)
    for task in TASKS:
        if current[task] not in (None, version):
            client.scale(task, current[task], 0)
    endpoints = record.setdefault("endpoints", {})
    for task in TASKS:
        previous = (
            current[task] if current[task] != version else endpoints.get(task, {}).get("previous")
        )
        archives = endpoints.get(task, {}).get("archives", {})
        archives[version] = Path(archive).name
        keep = {version, previous}
        endpoints[task] = {
            "default": version,
            "previous": previous,
            "archives": {v: a for v, a in archives.items() if v in keep},
        }
    record.setdefault("history", []).append(
        {"at": datetime.now(UTC).isoformat(timespec="seconds"), "deployed": version}
    )
    save_record(settings, record)
    return {
        "status": "deployed",
        "version": version,
        "previous": {t: current[t] for t in TASKS},
        "unregistered": removed,
        "endpoints": {t: f"{settings.torchserve_inference}/predictions/{t}" for t in TASKS},
    }


def _start(
    client: TorchServeClient, task: str, version: str, archive: str | None, settings: Settings
) -> bool:
    """Give `version` of endpoint `task` the configured workers: scale it up when it is
    registered (deploy keeps the previous version registered with none), else register
    `archive` with the configured batching. True when it registered."""
    if version in {v["modelVersion"] for v in client.versions(task)}:
        client.scale(task, version, settings.serving_workers)
        return False
    if archive is None:
        raise DeployError(f"{task}: the archive of version {version} is unknown")
    client.register(
        archive,
        task,
        batch_size=settings.serving_batch_size,
        max_batch_delay_ms=settings.serving_max_batch_delay_ms,
        workers=settings.serving_workers,
    )
    return True


def _unregister_older(
    client: TorchServeClient, version: str, previous: dict[str, str | None]
) -> list[str]:
    removed = []
    for task in TASKS:
        keep = {version, previous[task]}
        for v in client.versions(task):
            if v["modelVersion"] not in keep:
                client.unregister(task, v["modelVersion"])
                removed.append(f"{task}/{v['modelVersion']}")
    return removed


def rollback(settings: Settings) -> dict[str, Any]:
    """Make the previous version the default again on every endpoint."""
    client = TorchServeClient(settings)
    record = load_record(settings)
    endpoints = record.get("endpoints", {})
    if not endpoints or any(not endpoints.get(t, {}).get("previous") for t in TASKS):
        raise DeployError("no previous version is recorded: nothing to roll back to")
    target = endpoints[TASKS[0]]["previous"]
    for task in TASKS:
        entry = endpoints[task]
        previous = entry["previous"]
        _start(client, task, previous, entry["archives"].get(previous), settings)
        smoke_test(client, task, previous)
    for task in TASKS:
        entry = endpoints[task]
        client.set_default(task, entry["previous"])
        client.scale(task, entry["default"], 0)
        entry["default"], entry["previous"] = entry["previous"], entry["default"]
    record.setdefault("history", []).append(
        {"at": datetime.now(UTC).isoformat(timespec="seconds"), "rolled_back_to": target}
    )
    save_record(settings, record)
    return {"status": "rolled back", "version": target}
