"""Tracking and registry: `mlflow server` on SQLite, artifacts proxied into object storage."""

from __future__ import annotations

import requests

from dualmedia.stack.base import Service, venv_bin


class MlflowService(Service):
    name = "mlflow"
    title = "tracking + registry"

    @property
    def url(self) -> str:
        return self.settings.mlflow_uri

    def is_external(self) -> bool:
        return self.settings.mlflow_tracking_uri is not None

    def ports(self) -> dict[int, str]:
        return {self.settings.mlflow_port: "DUALMEDIA_MLFLOW_PORT"}

    @property
    def backend_store_uri(self) -> str:
        """SQLite in the state folder, or the PostgreSQL database of the production profile
        (the server creates its tables; `up` creates the database when missing)."""
        s = self.settings
        if s.production:
            # The driver is explicit: SQLAlchemy 2.1 takes a bare postgresql:// to mean
            # psycopg 3, while the pinned driver is psycopg2.
            return s.postgres_database_url(s.postgres_mlflow_db, "postgresql+psycopg2")
        return f"sqlite:///{self.state_dir / 'mlflow.db'}"

    def backend(self) -> dict[str, object]:
        from dualmedia.stack.postgres import masked

        if self.is_external():
            return {"backend_store": "external"}
        return {
            "backend_store": masked(self.backend_store_uri),
            "artifacts": f"s3://{self.settings.artifacts_bucket}/artifacts",
        }

    def command(self) -> list[str]:
        s = self.settings
        return [
            str(venv_bin() / "mlflow"),
            "server",
            # --backend-store-uri comes from MLFLOW_BACKEND_STORE_URI (extra_env): a database
            # password stays off the command line, which `ps` shows to every user.
            # The server proxies artifacts (--serve-artifacts is the default), so clients
            # need no S3 credentials of their own.
            "--artifacts-destination",
            f"s3://{s.artifacts_bucket}/artifacts",
            "--host",
            s.host,
            "--port",
            str(s.mlflow_port),
            "--workers",
            "1",
        ]

    def extra_env(self) -> dict[str, str]:
        s = self.settings
        env = {
            "AWS_ACCESS_KEY_ID": s.s3_access_key.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": s.s3_secret_key.get_secret_value(),
            "AWS_DEFAULT_REGION": s.s3_region,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # The server's job runner (GenAI evaluation jobs) is a dozen idle worker
            # processes this platform never uses.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "DO_NOT_TRACK": "1",
        }
        if s.s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = s.s3_endpoint
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri
        return env

    def is_healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False
