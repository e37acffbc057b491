"""The serving-backend seam: the factory plugs a second backend by one setting, and
deploy / rollback / restore run through the interface alone, with the deployment record
in a real object store. The fake server lives only here, to prove pluggability; the
same steps against a real TorchServe are in test_serving.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore
from serving.backend import (
    BACKENDS,
    BackendError,
    ServingBackend,
    get_backend,
    register_backend,
)
from serving.client import TorchServeBackend
from serving.commands import _print_restore, _print_state
from serving.deploy import DeployError, deploy, load_record, restore, rollback, state, verify
from serving.protocol import TASKS
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


@dataclass
class FakeAnswer:
    status_code: int
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return json.dumps(self.body)

    def json(self) -> Any:
        return self.body


@dataclass
class FakeServer:
    """What a model server holds: archives it can fetch, and per endpoint its versions
    (version -> workers) and default. `restart()` forgets the registrations."""

    archives: dict[str, str] = field(default_factory=dict)  # reference -> version
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def restart(self) -> None:
        self.endpoints.clear()
        self.defaults.clear()


class FakeBackend(ServingBackend):
    name = "fake"
    server = FakeServer()  # one server for every backend object, like a real one

    def stage_archive(self, archive: Path) -> str:
        ref = f"fake://{archive.name}"
        self.server.archives[ref] = archive.read_text()
        return ref

    def versions(self, endpoint: str) -> list[str]:
        return list(self.server.endpoints.get(endpoint, {}))

    def default_version(self, endpoint: str) -> str | None:
        return self.server.defaults.get(endpoint)

    def workers(self, endpoint: str, version: str) -> int:
        return self.server.endpoints.get(endpoint, {}).get(version, 0)

    def register(
        self,
        archive: str,
        endpoint: str,
        *,
        workers: int,
        version: str | None = None,
        batch_size: int | None = None,
        max_batch_delay_ms: int | None = None,
    ) -> None:
        self.server.calls.append(f"register {endpoint} {archive}")
        if archive not in self.server.archives:
            raise BackendError(f"register {endpoint}: archive {archive} not found")
        got = self.server.archives[archive].split()[0]
        if version is not None and got != version:
            raise BackendError(f"register {endpoint}: {archive} holds version {got}")
        self.server.endpoints.setdefault(endpoint, {})[got] = workers
        self.server.defaults.setdefault(endpoint, got)

    def _known(self, endpoint: str, version: str) -> None:
        if version not in self.server.endpoints.get(endpoint, {}):
            raise BackendError(f"{endpoint} version {version}: not registered")

    def scale(self, endpoint: str, version: str, workers: int) -> None:
        self._known(endpoint, version)
        self.server.endpoints[endpoint][version] = workers

    def set_default(self, endpoint: str, version: str) -> None:
        self._known(endpoint, version)
        self.server.defaults[endpoint] = version

    def unregister(self, endpoint: str, version: str) -> None:
        self._known(endpoint, version)
        del self.server.endpoints[endpoint][version]

    def predict(self, endpoint: str, body: Any, version: str | None = None) -> FakeAnswer:
        version = version or self.server.defaults.get(endpoint)
        if version is None or not self.workers(endpoint, version):
            return FakeAnswer(503, {"error": f"{endpoint} v{version}: no workers"})
        ref = next(r for r, c in self.server.archives.items() if c.split()[0] == version)
        if "broken" in self.server.archives[ref]:
            return FakeAnswer(500, {"error": "the model crashed"})
        return FakeAnswer(200, {"model_version": version})

    def wait_ready(self, timeout: float = 60.0) -> None:
        return None

    def endpoint_url(self, endpoint: str) -> str:
        return f"fake://serve/{endpoint}"


@pytest.fixture
def fake(s3_settings: Settings) -> Iterator[Settings]:
    """Settings choosing the fake backend, with a private lake bucket in the real S3."""
    register_backend("fake", FakeBackend)
    FakeBackend.server = FakeServer()
    settings = s3_settings.model_copy(
        update={"serving_backend": "fake", "lake_bucket": "fake-backend-lake"}
    )
    ObjectStore(settings).ensure_bucket(settings.lake_bucket)
    ObjectStore(settings).delete_prefix(f"s3://{settings.lake_bucket}/serving/")
    yield settings
    BACKENDS.pop("fake", None)


def _archive(tmp: Path, version: str, broken: bool = False) -> Path:
    path = tmp / f"model-v{version}.fake"
    path.write_text(f"{version} {'broken' if broken else 'ok'}")
    return path


def test_the_factory_picks_the_backend_the_settings_name(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert isinstance(get_backend(settings), TorchServeBackend)  # the default
    register_backend("fake", FakeBackend)
    try:
        chosen = get_backend(settings.model_copy(update={"serving_backend": "fake"}))
        assert isinstance(chosen, FakeBackend)
    finally:
        BACKENDS.pop("fake")
    with pytest.raises(ValueError, match=r"DUALMEDIA_SERVING_BACKEND='fake'.*torchserve"):
        get_backend(settings.model_copy(update={"serving_backend": "fake"}))


def test_deploy_rollback_restore_through_a_plugged_backend(
    fake: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = FakeBackend.server
    first = deploy(_archive(tmp_path, "1"), "1", fake)
    assert first["status"] == "deployed" and first["endpoints"]["embed"] == "fake://serve/embed"
    second = deploy(_archive(tmp_path, "2"), "2", fake)
    assert second["previous"] == dict.fromkeys(TASKS, "1")
    assert deploy(_archive(tmp_path, "2"), "2", fake)["status"] == "already serving"
    assert verify("2", fake) == dict.fromkeys(TASKS, "2")
    with pytest.raises(DeployError, match="expected 1"):
        verify("1", fake)
    workers = fake.serving_workers
    assert server.endpoints["insights"] == {"1": 0, "2": workers}

    # The record is one JSON object in object storage, not a local file.
    raw = json.loads(ObjectStore(fake).read_text(fake.serving_record_uri))
    assert fake.serving_record_uri == "s3://fake-backend-lake/serving/deployments.json"
    assert raw["backend"] == "fake"
    assert raw["endpoints"]["search"] == {
        "default": "2",
        "previous": "1",
        "archives": {"1": "fake://model-v1.fake", "2": "fake://model-v2.fake"},
    }
    assert [h.get("deployed") for h in raw["history"]] == ["1", "2"]

    # A version whose smoke request fails never becomes default.
    with pytest.raises(DeployError, match="nothing changed"):
        deploy(_archive(tmp_path, "3", broken=True), "3", fake)
    assert set(server.defaults.values()) == {"2"}
    assert all("3" not in server.endpoints[t] for t in TASKS)

    assert rollback(fake)["version"] == "1"
    assert server.endpoints["insights"] == {"1": workers, "2": 0}
    assert load_record(fake)["endpoints"]["embed"]["default"] == "1"
    assert all(e["in_sync"] for e in state(fake)["endpoints"].values())

    # A restarted server knows nothing; restore brings back default and previous.
    server.restart()
    assert not any(e["in_sync"] for e in state(fake)["endpoints"].values())
    summary = restore(fake)
    assert summary["status"] == "restored" and summary["failed"] == []
    assert sorted(summary["restored"]) == sorted(f"{t}/{v}" for t in TASKS for v in "12")
    assert server.defaults == dict.fromkeys(TASKS, "1")
    assert server.endpoints["embed"] == {"2": 0, "1": workers}
    # Idempotent: a second restore registers nothing.
    again = restore(fake)
    assert again["restored"] == [] and len(again["present"]) == 2 * len(TASKS)

    # What `dualmedia deployments [--restore]` prints from these summaries.
    _print_state(state(fake))
    _print_restore(again)
    printed = capsys.readouterr().out
    assert "embed     default v1 (recorded v1, previous v2); v2: 0 workers" in printed
    assert "restored: 0 registered, 6 already there" in printed


def test_restore_says_which_registration_failed(
    fake: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeBackend.server
    deploy(_archive(tmp_path, "1"), "1", fake)
    deploy(_archive(tmp_path, "2"), "2", fake)
    server.restart()
    del server.archives["fake://model-v1.fake"]  # the previous version's archive is gone
    with caplog.at_level("ERROR", logger="serving.deploy"):
        summary = restore(fake)
    assert summary["status"] == "partial"
    assert sorted((f["endpoint"], f["version"]) for f in summary["failed"]) == [
        (t, "1") for t in sorted(TASKS)
    ]
    assert all("not found" in f["error"] for f in summary["failed"])
    assert all(f["archive"] == "fake://model-v1.fake" for f in summary["failed"])
    assert server.defaults == dict.fromkeys(TASKS, "2")  # the default still serves
    assert "embed version 1 from fake://model-v1.fake failed" in caplog.text


def test_nothing_recorded_restores_nothing(fake: Settings) -> None:
    assert restore(fake) == {
        "status": "nothing to restore",
        "record": fake.serving_record_uri,
        "restored": [],
        "present": [],
        "failed": [],
    }
    with pytest.raises(DeployError, match="no previous version is recorded"):
        rollback(fake)


def test_only_serving_calls_the_management_api() -> None:
    """The seam holds: outside serving/, no module builds a management URL or reads the
    management token (the stack only configures TorchServe's ports and restores through
    serving's command)."""
    root = Path(__file__).resolve().parents[2]
    calls = re.compile(r"torchserve_management\b|torchserve_key\(\s*[\"']management")
    offenders = [
        f"{path.relative_to(root)}: {found.group(0)}"
        for folder in ("dualmedia", "dags", "training", "ingestion", "monitoring", "feature_repo")
        for path in (root / folder).rglob("*.py")
        if path.name != "settings.py"
        for found in calls.finditer(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []
