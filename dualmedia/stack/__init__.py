"""The stack: real services on loopback, started and stopped as one.

`settings.profile` chooses their shape: "local" (SQLite, LocalExecutor) or
"production" (Airflow's components and Celery workers over PostgreSQL and Redis,
MLflow on PostgreSQL); see docs/scaling.md.
"""

from __future__ import annotations

from collections.abc import Callable

from dualmedia.settings import Settings
from dualmedia.stack import postgres
from dualmedia.stack.airflow import AirflowService, airflow_services
from dualmedia.stack.base import Service, ServiceStatus, StackError
from dualmedia.stack.mlflow import MlflowService
from dualmedia.stack.s3 import ObjectStorageService
from dualmedia.stack.torchserve import TorchServeService

# Start order: MLflow stores artifacts in object storage, so storage comes first. In the
# production profile the Airflow entry expands into its components (airflow_services).
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
        services: list[Service] = []
        for cls in SERVICE_TYPES:
            if cls is AirflowService:
                services += airflow_services(settings)
            else:
                services.append(cls(settings))
        if only:
            known = {s.selector for s in services} | {s.name for s in services}
            unknown = set(only) - known
            if unknown:
                names = ", ".join(sorted({s.selector for s in services}))
                raise StackError(f"unknown service(s) {sorted(unknown)}; known: {names}")
            services = [s for s in services if s.selector in only or s.name in only]
        self.services = services

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def up(self, report: Callable[[Service, str], None] = lambda s, m: None) -> None:
        """Start every local service in order and wait for each health check."""
        users = [
            s for s in self.services if not s.is_external() and s.selector in ("airflow", "mlflow")
        ]
        if self.settings.production and users:
            # The databases on the (external) PostgreSQL server, created when missing.
            for name in postgres.ensure_databases(self.settings):
                report(users[0], f"created PostgreSQL database {name}")
        batch: list[Service] = []  # consecutive services that start concurrently
        for service in [*self.services, None]:
            if service is not None and service.concurrent_start and not service.is_external():
                batch.append(service)
                continue
            launched = []
            for member in batch:
                report(member, "starting")
                launched.append((member, member.launch()))
            for member, proc in launched:
                report(member, "already running" if proc is None else member.wait_started(proc))
            batch = []
            if service is None:
                break
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

    def feature_store_backend(self) -> dict[str, object]:
        """Feast runs in-process (no service to start); what its stores are."""
        s = self.settings
        if s.feast_backend == "production":
            host = s.feast_redis.get_secret_value().split(",", 1)[0]
            registry = s.postgres_database_url(s.postgres_feast_db, "postgresql+psycopg2")
            return {
                "online_store": f"redis://{host}",
                "registry": postgres.masked(registry),
                "offline_store": f"s3://{s.lake_bucket}/features",
            }
        return {
            "online_store": "sqlite",
            "registry": "file",
            "offline_store": f"s3://{s.lake_bucket}/features",
        }
