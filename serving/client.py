"""TorchServe as a serving backend: its management and inference APIs, with the tokens
from the settings. The only module that speaks TorchServe's management API."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import requests

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri
from serving.backend import BackendError, ServingBackend


class TorchServeError(BackendError):
    """A TorchServe call failed; the message names the call and TorchServe's answer."""


class TorchServeBackend(ServingBackend):
    name = "torchserve"

    def __init__(self, settings: Settings, timeout: float = 120.0) -> None:
        super().__init__(settings)
        self.timeout = timeout
        self.session = requests.Session()

    def _headers(self, kind: str) -> dict[str, str]:
        # Read on every call: TorchServe writes new keys at each start.
        return {"Authorization": f"Bearer {self.settings.torchserve_key(kind)}"}

    def _management(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.settings.torchserve_management}/{path.lstrip('/')}"
        try:
            r = self.session.request(
                method, url, headers=self._headers("management"), timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise TorchServeError(f"{method} {url}: {exc}") from None
        if r.status_code >= 400:
            raise TorchServeError(f"{method} {url}: HTTP {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def _describe(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        """TorchServe's description of a model (its default, or one version); [] if unknown."""
        try:
            return self._management("GET", f"models/{name}" + (f"/{version}" if version else ""))
        except TorchServeError as exc:
            if "HTTP 404" in str(exc):
                return []
            raise

    # ---- archives --------------------------------------------------------------------
    def stage_archive(self, archive: Path) -> str:
        archive = Path(archive)
        store = self.settings.torchserve_model_store
        if store is not None:
            # The local stack's TorchServe registers by file name from its model store.
            store.mkdir(parents=True, exist_ok=True)
            if archive.resolve().parent != store.resolve():
                shutil.copy(archive, store / archive.name)
            return archive.name
        # A remote TorchServe fetches from object storage. The record keeps the s3:// URI
        # (a presigned URL would expire before the next restore); register presigns it.
        key = S3Uri(self.settings.lake_bucket, f"archives/{archive.name}")
        ObjectStore(self.settings).upload_file(archive, key)
        return str(key)

    def _url(self, archive: str) -> str:
        if not archive.startswith("s3://"):
            return archive
        # TorchServe's allowed_urls must permit the object store's endpoint.
        key = S3Uri.parse(archive)
        return ObjectStore(self.settings).client.generate_presigned_url(
            "get_object", Params={"Bucket": key.bucket, "Key": key.key}, ExpiresIn=3600
        )

    # ---- live state ------------------------------------------------------------------
    def models(self) -> list[str]:
        """Every registered model name (TorchServe's word for an endpoint)."""
        return [m["modelName"] for m in self._management("GET", "models")["models"]]

    def versions(self, endpoint: str) -> list[str]:
        try:
            described = self._management("GET", f"models/{endpoint}/all")
        except TorchServeError as exc:
            if "HTTP 404" in str(exc):
                return []
            raise
        return [v["modelVersion"] for v in described]

    def default_version(self, endpoint: str) -> str | None:
        described = self._describe(endpoint)
        return described[0]["modelVersion"] if described else None

    def workers(self, endpoint: str, version: str) -> int:
        described = self._describe(endpoint, version)
        return len(described[0]["workers"]) if described else 0

    def worker_pids(self, endpoint: str, version: str | None = None) -> list[int]:
        """The worker processes of an endpoint's default version, or of `version`."""
        described = self._describe(endpoint, version)
        return sorted(w["pid"] for w in described[0]["workers"]) if described else []

    # ---- changes ---------------------------------------------------------------------
    def register(
        self,
        archive: str,
        endpoint: str,
        *,
        workers: int,
        version: str | None = None,
        batch_size: int | None = None,
        max_batch_delay_ms: int | None = None,
        response_timeout_s: int = 120,
    ) -> None:
        s = self.settings
        answer = self._management(
            "POST",
            "models",
            params={
                "url": self._url(archive),
                "model_name": endpoint,
                "batch_size": s.serving_batch_size if batch_size is None else batch_size,
                "max_batch_delay": (
                    s.serving_max_batch_delay_ms
                    if max_batch_delay_ms is None
                    else max_batch_delay_ms
                ),
                "initial_workers": workers,
                "response_timeout": response_timeout_s,
                "synchronous": "true",
            },
        )
        if version is None:
            return
        # A 200 is not proof enough: an archive built for another version registers
        # under that one. Check what TorchServe now lists.
        listed = self.versions(endpoint)
        if version not in listed:
            raise TorchServeError(
                f"registering {archive} as {endpoint} version {version}: TorchServe answered "
                f"{answer!r} but lists versions {listed}"
            )

    def scale(self, endpoint: str, version: str, workers: int) -> None:
        self._management(
            "PUT",
            f"models/{endpoint}/{version}",
            params={"min_worker": workers, "max_worker": workers, "synchronous": "true"},
        )

    def set_default(self, endpoint: str, version: str) -> None:
        self._management("PUT", f"models/{endpoint}/{version}/set-default")

    def unregister(self, endpoint: str, version: str) -> None:
        self._management("DELETE", f"models/{endpoint}/{version}")

    # ---- inference -------------------------------------------------------------------
    def predict(
        self, endpoint: str, body: Any, version: str | None = None, *, raw: bool = False
    ) -> requests.Response:
        """POST a JSON body (or raw bytes when raw=True) to an endpoint."""
        path = f"predictions/{endpoint}" + (f"/{version}" if version else "")
        url = f"{self.settings.torchserve_inference}/{path}"
        headers = self._headers("inference")
        try:
            if raw:
                headers = {**headers, "Content-Type": "application/json"}
                return self.session.post(url, data=body, headers=headers, timeout=self.timeout)
            return self.session.post(url, json=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise TorchServeError(f"POST {url}: {exc}") from None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = self.session.get(
                    f"{self.settings.torchserve_inference}/ping",
                    headers=self._headers("inference"),
                    timeout=5,
                )
                if r.status_code == 200:
                    return
            except (requests.RequestException, RuntimeError):
                pass
            time.sleep(0.5)
        raise TorchServeError(f"{self.settings.torchserve_inference}: not ready after {timeout}s")

    def endpoint_url(self, endpoint: str) -> str:
        return f"{self.settings.torchserve_inference}/predictions/{endpoint}"


# The name dags/, benchmarks/ and tests/e2e still import; new code asks
# serving.backend.get_backend(settings) instead.
TorchServeClient = TorchServeBackend
