"""TorchServe's management and inference APIs, with the tokens from the settings."""

from __future__ import annotations

import time
from typing import Any

import requests

from dualmedia.settings import Settings


class TorchServeError(RuntimeError):
    """A TorchServe call failed; the message names the call and TorchServe's answer."""


class TorchServeClient:
    def __init__(self, settings: Settings, timeout: float = 120.0) -> None:
        self.settings = settings
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

    # ---- management ------------------------------------------------------------------
    def models(self) -> list[str]:
        return [m["modelName"] for m in self._management("GET", "models")["models"]]

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every registered version of a model (empty when the model is unknown)."""
        try:
            return self._management("GET", f"models/{name}/all")
        except TorchServeError as exc:
            if "HTTP 404" in str(exc):
                return []
            raise

    def default_version(self, name: str) -> str | None:
        try:
            described = self._management("GET", f"models/{name}")
        except TorchServeError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise
        return described[0]["modelVersion"] if described else None

    def register(
        self,
        archive: str,
        name: str,
        *,
        batch_size: int,
        max_batch_delay_ms: int,
        workers: int,
        response_timeout_s: int = 120,
    ) -> None:
        """Register an archive (file name in the model store, or URL) and start workers."""
        self._management(
            "POST",
            "models",
            params={
                "url": archive,
                "model_name": name,
                "batch_size": batch_size,
                "max_batch_delay": max_batch_delay_ms,
                "initial_workers": workers,
                "response_timeout": response_timeout_s,
                "synchronous": "true",
            },
        )

    def scale(self, name: str, version: str, workers: int) -> None:
        self._management(
            "PUT",
            f"models/{name}/{version}",
            params={"min_worker": workers, "max_worker": workers, "synchronous": "true"},
        )

    def set_default(self, name: str, version: str) -> None:
        self._management("PUT", f"models/{name}/{version}/set-default")

    def unregister(self, name: str, version: str) -> None:
        self._management("DELETE", f"models/{name}/{version}")

    # ---- inference -------------------------------------------------------------------
    def predict(
        self, name: str, body: Any, version: str | None = None, *, raw: bool = False
    ) -> requests.Response:
        """POST a JSON body (or raw bytes when raw=True) to a model; returns the response."""
        path = f"predictions/{name}" + (f"/{version}" if version else "")
        url = f"{self.settings.torchserve_inference}/{path}"
        headers = self._headers("inference")
        if raw:
            return self.session.post(url, data=body, headers=headers, timeout=self.timeout)
        return self.session.post(url, json=body, headers=headers, timeout=self.timeout)

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
