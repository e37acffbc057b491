"""The serving-backend seam: what deploy, rollback, scale and restore need from a model
server, and the one place that picks the server from the settings.

TorchServe (serving/client.py) is today's implementation. TorchServe is archived
upstream (2025-08), so a maintained server (Triton, KServe, Ray Serve, ...) must be able
to take its place by adding one subclass and one line in BACKENDS; serving/deploy.py
and everything above it talk to this interface only.

Vocabulary: an *endpoint* is a served name (embed, search, insights); each endpoint
has *versions* (the registered model versions), one of which is the *default* that
un-versioned requests reach. An *archive reference* is whatever the backend registers
from (a file name in its model store, an s3:// URI); `stage_archive` makes one.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dualmedia.settings import Settings


class BackendError(RuntimeError):
    """A call to the model server failed; the message names the call, where, and the
    server's answer."""


class Answer(Protocol):
    """An inference answer: `requests.Response` fits, so HTTP backends return theirs."""

    status_code: int
    text: str

    def json(self) -> Any: ...


class ServingBackend(ABC):
    """One model server, as deploy/rollback/restore see it. Every method raises
    BackendError (naming the endpoint and version) when the server refuses or fails."""

    name: str  # the value of settings.serving_backend that selects it

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # ---- archives --------------------------------------------------------------------
    @abstractmethod
    def stage_archive(self, archive: Path) -> str:
        """Make a local archive reachable by the server; returns the reference that
        `register` takes and the deployment record keeps (restore registers from it
        again, so it must stay valid: no expiring URLs)."""

    # ---- live state ------------------------------------------------------------------
    @abstractmethod
    def versions(self, endpoint: str) -> list[str]:
        """The registered versions of an endpoint (empty when the endpoint is unknown)."""

    @abstractmethod
    def default_version(self, endpoint: str) -> str | None:
        """The version un-versioned requests reach (None when the endpoint is unknown)."""

    @abstractmethod
    def workers(self, endpoint: str, version: str) -> int:
        """How many workers serve this version now (0: registered, holding no memory)."""

    # ---- changes ---------------------------------------------------------------------
    @abstractmethod
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
        """Register an archive reference under `endpoint` with `workers` workers, waiting
        until they run. Batching defaults to the settings. With `version`, the server's
        answer is checked: the endpoint must then list exactly that version."""

    @abstractmethod
    def scale(self, endpoint: str, version: str, workers: int) -> None:
        """Run exactly `workers` workers for a registered version (0 frees its memory)."""

    @abstractmethod
    def set_default(self, endpoint: str, version: str) -> None:
        """Make a registered version the one un-versioned requests reach."""

    @abstractmethod
    def unregister(self, endpoint: str, version: str) -> None:
        """Remove a version from the server."""

    # ---- inference -------------------------------------------------------------------
    @abstractmethod
    def predict(self, endpoint: str, body: Any, version: str | None = None) -> Answer:
        """Send one JSON request to an endpoint (its default version unless `version`)."""

    @abstractmethod
    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return once the server answers health checks; BackendError after `timeout`."""

    @abstractmethod
    def endpoint_url(self, endpoint: str) -> str:
        """The URL applications call for this endpoint."""


# settings.serving_backend -> "module:Class", imported only when chosen, so choosing one
# server never imports another's client. A new server: one implementation, one line here.
BACKENDS: dict[str, str | Callable[[Settings], ServingBackend]] = {
    "torchserve": "serving.client:TorchServeBackend",
}


def register_backend(name: str, factory: str | Callable[[Settings], ServingBackend]) -> None:
    """Make `settings.serving_backend = name` select `factory` ("module:Class" or a
    callable taking the settings); for implementations that live outside this file."""
    BACKENDS[name] = factory


def get_backend(settings: Settings) -> ServingBackend:
    """The serving backend the settings choose (DUALMEDIA_SERVING_BACKEND)."""
    name = settings.serving_backend
    try:
        factory = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(
            f"DUALMEDIA_SERVING_BACKEND={name!r} is not a serving backend; known: {known}"
        ) from None
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    backend = factory(settings)
    if not isinstance(backend, ServingBackend):
        raise TypeError(f"serving backend {name!r} ({factory!r}) is not a ServingBackend")
    return backend
