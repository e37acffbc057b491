"""The local stack: real services on loopback, started and stopped as one."""

from __future__ import annotations

from collections.abc import Callable

from dualmedia.settings import Settings
from dualmedia.stack.airflow import AirflowService
from dualmedia.stack.base import Service, ServiceStatus, StackError
from dualmedia.stack.mlflow import MlflowService
from dualmedia.stack.s3 import ObjectStorageService
from dualmedia.stack.torchserve import TorchServeService

# Start order: MLflow stores artifacts in object storage, so storage comes first.
SERVICE_TYPES: tuple[type[Service], ...] = (
    ObjectStorageService,
    MlflowService,
    AirflowService,
    TorchServeService,
)

__all__ = ["SERVICE_TYPES", "ServiceStatus", "Stack", "StackError"]


class Stack:
    """The services of the local stack, configured by one Settings object."""

    def __init__(self, settings: Settings, only: list[str] | None = None) -> None:
        self.settings = settings
        services = [cls(settings) for cls in SERVICE_TYPES]
        if only:
            unknown = set(only) - {s.name for s in services}
            if unknown:
                names = ", ".join(s.name for s in services)
                raise StackError(f"unknown service(s) {sorted(unknown)}; known: {names}")
            services = [s for s in services if s.name in only]
        self.services = services

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def up(self, report: Callable[[Service, str], None] = lambda s, m: None) -> None:
        """Start every local service in order and wait for each health check."""
        for service in self.services:
            if service.is_external():
                report(service, "external: not started here")
                continue
            report(service, "starting")
            report(service, service.start())

    def down(self, report: Callable[[Service, str], None] = lambda s, m: None) -> None:
        """Stop what `up` started, in reverse order."""
        for service in reversed(self.services):
            if not service.is_external():
                report(service, service.stop())

    def status(self) -> list[ServiceStatus]:
        return [s.status() for s in self.services]
