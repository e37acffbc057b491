"""Deploy, roll back and restore a model version, one safe step at a time, on whichever
serving backend the settings choose (serving/backend.py; TorchServe today).

Deploying version v of an archive:
  1. make the archive reachable by the server (backend.stage_archive),
  2. register it under each endpoint name (embed, search, insights) without making it
     the default, with the configured batching and workers,
  3. send a smoke request to that exact version of every endpoint,
  4. only then make v the default, keeping the previous default registered for
     rollback but with no workers (its memory back; rollback starts them again), and
     unregister anything older,
  5. write the deployment record (settings.serving_record_uri, in object storage).
A failing smoke test unregisters v and leaves the previous version serving.
Re-deploying the version already serving does nothing.

What is deployed is read back from two places: the *live* state (versions, default,
workers) is asked from the server; the *record* keeps what the server cannot tell after
a restart (which archive each version came from, what the previous default was, the
history). `restore` re-registers the record on a fresh server and says what failed.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dualmedia import modalities
from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore
from serving.backend import BackendError, ServingBackend, get_backend
from serving.protocol import TASKS

log = logging.getLogger(__name__)


def smoke_request(task: str, modality: str | None = None) -> dict[str, Any]:
    """A small valid request for `task` in `modality` (default: the registry's first), from
    the modality's own example value; search ranks the catalogue's default target."""
    name = modality or modalities.names()[0]
    field = {name: modalities.get(name).example_value()}
    return {"query": field, "k": 1} if task == "search" else field


RECORD_FORMAT = 1
HISTORY_KEPT = 200  # entries; the record stays one small object


class DeployError(RuntimeError):
    """Deployment refused or failed; what was serving before still serves."""


# ---- the record ----------------------------------------------------------------------
def load_record(settings: Settings) -> dict[str, Any]:
    """The deployment record: {"endpoints": {endpoint: {"default", "previous",
    "archives": {version: archive reference}}}, "history": [...]}; empty when none."""
    store = ObjectStore(settings)
    uri = settings.serving_record_uri
    if not store.exists(uri):
        return {"format": RECORD_FORMAT, "endpoints": {}, "history": []}
    try:
        record = json.loads(store.read_text(uri))
    except ValueError as exc:
        raise DeployError(f"{uri}: the deployment record is not JSON: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("endpoints"), dict):
        raise DeployError(f"{uri}: the deployment record has no 'endpoints' object")
    return record


def save_record(settings: Settings, record: dict[str, Any]) -> None:
    """Write the record in one PUT: readers see the old record or the new one, never
    half of one (object storage has no rename; a single PUT is its atomic write)."""
    record["format"] = RECORD_FORMAT
    record["backend"] = settings.serving_backend
    record["history"] = record.get("history", [])[-HISTORY_KEPT:]
    store = ObjectStore(settings)
    store.ensure_bucket(settings.lake_bucket)
    store.write_json(settings.serving_record_uri, record)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def state(settings: Settings) -> dict[str, Any]:
    """Per endpoint, the record beside what the server says now (versions, default,
    workers), and whether they agree."""
    backend = get_backend(settings)
    record = load_record(settings)
    endpoints: dict[str, Any] = {}
    for task in TASKS:
        entry = record["endpoints"].get(task, {})
        live = backend.versions(task)
        default = backend.default_version(task)
        endpoints[task] = {
            "recorded": {"default": entry.get("default"), "previous": entry.get("previous")},
            "live": {
                "default": default,
                "workers": {v: backend.workers(task, v) for v in live},
            },
            "in_sync": default == entry.get("default")
            and set(live) == {v for v in (entry.get("default"), entry.get("previous")) if v},
        }
    return {
        "backend": settings.serving_backend,
        "record": settings.serving_record_uri,
        "endpoints": endpoints,
    }


# ---- deploy / rollback ---------------------------------------------------------------
def smoke_test(backend: ServingBackend, task: str, version: str) -> None:
    answer = backend.predict(task, smoke_request(task), version=version)
    if answer.status_code != 200:
        raise DeployError(
            f"smoke request to {task} version {version} answered HTTP {answer.status_code}: "
            f"{answer.text[:300]}"
        )


def verify(version: str, settings: Settings) -> dict[str, str]:
    """Every endpoint's default answers a smoke request, with `version`: the check after
    a deploy (the training DAG's smoke-test task). Returns endpoint -> served version."""
    backend = get_backend(settings)
    served: dict[str, str] = {}
    for task in TASKS:
        answer = backend.predict(task, smoke_request(task))
        if answer.status_code != 200:
            raise DeployError(
                f"smoke request to {backend.endpoint_url(task)} answered HTTP "
                f"{answer.status_code}: {answer.text[:300]}"
            )
        served[task] = str(answer.json().get("model_version"))
    if set(served.values()) != {version}:
        raise DeployError(f"endpoints serve versions {served}, expected {version}")
    return served


def deploy(archive: Path, version: str, settings: Settings) -> dict[str, Any]:
    """Serve `archive` (model version `version`) on every endpoint; see module doc."""
    backend = get_backend(settings)
    current = {t: backend.default_version(t) for t in TASKS}
    if all(v == version for v in current.values()):
        return {"status": "already serving", "version": version, "endpoints": list(TASKS)}
    record = load_record(settings)  # read before any change: a bad record changes nothing
    ref = backend.stage_archive(Path(archive))
    registered: list[str] = []
    try:
        for task in TASKS:
            if _start(backend, task, version, ref, settings):
                registered.append(task)
        for task in TASKS:
            smoke_test(backend, task, version)
    except (BackendError, DeployError) as exc:
        for task in registered:
            if current[task] is not None:  # the first version of an endpoint is its default
                backend.unregister(task, version)
        raise DeployError(f"deploying version {version} failed, nothing changed: {exc}") from None
    for task in TASKS:
        backend.set_default(task, version)
    removed = _unregister_older(backend, version, current)
    for task in TASKS:
        if current[task] not in (None, version):
            backend.scale(task, current[task], 0)
    endpoints = record["endpoints"]
    for task in TASKS:
        previous = (
            current[task] if current[task] != version else endpoints.get(task, {}).get("previous")
        )
        archives = endpoints.get(task, {}).get("archives", {})
        archives[version] = ref
        keep = {version, previous}
        endpoints[task] = {
            "default": version,
            "previous": previous,
            "archives": {v: a for v, a in archives.items() if v in keep},
        }
    record.setdefault("history", []).append(
        {"at": _now(), "deployed": version, "previous": current, "archive": ref}
    )
    save_record(settings, record)
    return {
        "status": "deployed",
        "version": version,
        "previous": current,
        "unregistered": removed,
        "record": settings.serving_record_uri,
        "endpoints": {t: backend.endpoint_url(t) for t in TASKS},
    }


def _start(
    backend: ServingBackend, task: str, version: str, archive: str | None, settings: Settings
) -> bool:
    """Give `version` of endpoint `task` the configured workers: scale it up when it is
    registered (deploy keeps the previous version registered with none), else register
    `archive` with the configured batching. True when it registered."""
    if version in backend.versions(task):
        backend.scale(task, version, settings.serving_workers)
        return False
    if archive is None:
        raise DeployError(f"{task}: the archive of version {version} is unknown")
    backend.register(archive, task, workers=settings.serving_workers, version=version)
    return True


def _unregister_older(
    backend: ServingBackend, version: str, previous: dict[str, str | None]
) -> list[str]:
    removed = []
    for task in TASKS:
        keep = {version, previous[task]}
        for v in backend.versions(task):
            if v not in keep:
                backend.unregister(task, v)
                removed.append(f"{task}/{v}")
    return removed


def rollback(settings: Settings) -> dict[str, Any]:
    """Make the previous version the default again on every endpoint."""
    backend = get_backend(settings)
    record = load_record(settings)
    endpoints = record["endpoints"]
    if not endpoints or any(not endpoints.get(t, {}).get("previous") for t in TASKS):
        raise DeployError(
            f"no previous version is recorded in {settings.serving_record_uri}: "
            "nothing to roll back to"
        )
    target = endpoints[TASKS[0]]["previous"]
    started: list[str] = []
    try:
        for task in TASKS:
            entry = endpoints[task]
            previous = entry["previous"]
            _start(backend, task, previous, entry["archives"].get(previous), settings)
            started.append(task)
            smoke_test(backend, task, previous)
    except (BackendError, DeployError) as exc:
        for task in started:  # back to no workers: the default never changed
            try:
                backend.scale(task, endpoints[task]["previous"], 0)
            except BackendError as undo:
                log.error("rollback: %s: cannot stop the previous version again: %s", task, undo)
        raise DeployError(
            f"rolling back to version {target} failed, the default still serves: {exc}"
        ) from None
    for task in TASKS:
        entry = endpoints[task]
        backend.set_default(task, entry["previous"])
        # What serves now, as the server says (the record may lag a manual change).
        for version in set(backend.versions(task)) - {entry["previous"]}:
            if backend.workers(task, version):
                backend.scale(task, version, 0)
        entry["default"], entry["previous"] = entry["previous"], entry["default"]
    record.setdefault("history", []).append({"at": _now(), "rolled_back_to": target})
    save_record(settings, record)
    return {"status": "rolled back", "version": target}


# ---- restore -------------------------------------------------------------------------
def restore(settings: Settings) -> dict[str, Any]:
    """Re-register what the record says on a server that lost it (a restart): each
    endpoint's previous version without workers, then its default with the configured
    workers, made default. Idempotent: what is registered already is left alone.

    Every registration's answer is checked; a failure does not stop the others and is
    returned under "failed" (endpoint, version, archive, error) and logged."""
    backend = get_backend(settings)
    try:
        record = load_record(settings)
    except RuntimeError as exc:  # StorageError, DeployError
        # No record to read is itself a failure to report, not a reason to crash `up`.
        log.error("restore: cannot read %s: %s", settings.serving_record_uri, exc)
        return {
            "status": "failed",
            "record": settings.serving_record_uri,
            "restored": [],
            "present": [],
            "failed": [{"endpoint": None, "version": None, "archive": None, "error": str(exc)}],
        }
    restored: list[str] = []
    present: list[str] = []
    failed: list[dict[str, Any]] = []
    for task, entry in sorted(record["endpoints"].items()):
        default = entry.get("default")
        for version in [v for v in (entry.get("previous"), default) if v]:
            archive = entry.get("archives", {}).get(version)
            try:
                if version in backend.versions(task):
                    present.append(f"{task}/{version}")
                    continue
                if archive is None:
                    raise DeployError(f"the record names no archive for version {version}")
                # The previous version stays registered for rollback, without workers.
                workers = settings.serving_workers if version == default else 0
                backend.register(archive, task, workers=workers, version=version)
                restored.append(f"{task}/{version}")
            except (BackendError, DeployError) as exc:
                failed.append(
                    {"endpoint": task, "version": version, "archive": archive, "error": str(exc)}
                )
                log.error("restore: %s version %s from %s failed: %s", task, version, archive, exc)
        if default and not any(f["endpoint"] == task and f["version"] == default for f in failed):
            try:
                if backend.default_version(task) != default:
                    backend.set_default(task, default)
            except BackendError as exc:
                failed.append(
                    {"endpoint": task, "version": default, "archive": None, "error": str(exc)}
                )
                log.error("restore: making %s version %s default failed: %s", task, default, exc)
    if not record["endpoints"]:
        status = "nothing to restore"
    else:
        status = (
            "failed"
            if failed and not (restored or present)
            else ("partial" if failed else "restored")
        )
    summary = {
        "status": status,
        "record": settings.serving_record_uri,
        "restored": restored,
        "present": present,
        "failed": failed,
    }
    if failed:
        log.error(
            "restore: %d of %d registrations failed",
            len(failed),
            len(failed) + len(restored) + len(present),
        )
    else:
        log.info(
            "restore: %s (%d registered, %d already there)", status, len(restored), len(present)
        )
    return summary
