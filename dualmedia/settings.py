"""The one settings object: every endpoint, bucket, path and credential.

Read from environment variables `DUALMEDIA_*` and a `.env` file in the working
directory; no other module reads the environment. Pointing the platform at AWS S3,
MinIO, a remote MLflow or a remote Airflow is a matter of setting these values.
Secrets are `SecretStr`, so they print as '**********' in reprs, logs and errors.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dualmedia import credentials

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DUALMEDIA_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Where the local stack keeps its state, logs and pid files.
    home: Path = Field(default=Path(".dualmedia"), description="state folder of the local stack")
    host: str = Field(default="127.0.0.1", description="interface the local stack binds to")

    # Object storage (rclone locally; MinIO or AWS by setting the endpoint and keys).
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint; unset = the local rclone server; empty = AWS"
    )
    s3_port: int = 9000
    # Unset with the local server: generated per install into <home>/secrets/s3.json
    # (dualmedia/credentials.py). Unset with an external endpoint: boto3's own chain.
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    raw_bucket: str = "dualmedia-raw"
    lake_bucket: str = "dualmedia-lake"
    artifacts_bucket: str = "dualmedia-mlflow"
    s3_max_attempts: int = Field(default=8, description="retries (with backoff) per S3 call")
    multipart_threshold_mb: int = 64
    # Buckets besides a dataset's own that its manifests may name media in (JSON list in
    # the environment: DUALMEDIA_MEDIA_BUCKETS='["shared-media"]'); any other bucket is
    # refused, so a manifest cannot copy e.g. MLflow artifacts into a snapshot.
    media_buckets: list[str] = Field(default_factory=list)
    manifest_max_line_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="longer manifest lines are quarantined"
    )

    # Tracking and registry.
    mlflow_tracking_uri: str | None = Field(default=None, description="unset = local server")
    mlflow_port: int = 5000
    mlflow_experiment: str = "dualmedia"
    # HTTP basic auth (MLflow's basic-auth app). Unset password with the local server:
    # generated per install into <home>/secrets/mlflow.json; with an external server:
    # anonymous.
    mlflow_username: str = "admin"
    mlflow_password: SecretStr | None = None

    # Orchestration.
    airflow_url: str | None = Field(default=None, description="unset = local airflow standalone")
    airflow_port: int = 8080
    airflow_worker_log_port: int = 8793
    airflow_trigger_log_port: int = 8794
    airflow_username: str = "admin"
    airflow_password: SecretStr | None = Field(
        default=None, description="unset = the password airflow standalone generated locally"
    )
    airflow_pause_new_dags: bool = Field(
        default=False, description="new DAGs start paused (tests unpause what they run)"
    )
    airflow_parallelism: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2))
    dags_folder: Path = REPO_ROOT / "dags"
    # Celery queues of the production profile: I/O steps go to the default queue, training
    # steps to the train queue, so a GPU worker pool can take training only. DAG files
    # route a task with `queue=settings.airflow_train_queue`.
    airflow_default_queue: str = Field(default="default", pattern="^[A-Za-z0-9_.-]+$")
    airflow_train_queue: str = Field(default="train", pattern="^[A-Za-z0-9_.-]+$")

    # ---- the production profile (docs/scaling.md) -----------------------------------
    # "local": SQLite, LocalExecutor, file registries (what `make demo` runs).
    # "production": Airflow CeleryExecutor + PostgreSQL + Redis, MLflow on PostgreSQL,
    # Feast on Redis with a SQL registry on PostgreSQL.
    profile: str = Field(default="local", pattern="^(local|production)$")
    # The PostgreSQL server (no database in the path); `up` creates the databases below
    # on it when missing. A password in the URL stays secret.
    postgres_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432")
    postgres_airflow_db: str = Field(default="dualmedia_airflow", pattern="^[a-z_][a-z0-9_]*$")
    postgres_mlflow_db: str = Field(default="dualmedia_mlflow", pattern="^[a-z_][a-z0-9_]*$")
    postgres_feast_db: str = Field(default="dualmedia_feast", pattern="^[a-z_][a-z0-9_]*$")
    # The Celery broker. Every key it writes starts with the prefix, so stacks sharing one
    # Redis (and one db number) stay apart.
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_key_prefix: str = Field(default="dualmedia:", pattern="^[A-Za-z0-9_.:-]+$")
    airflow_workers: int = Field(default=2, ge=1, description="Celery workers `up` starts")
    airflow_worker_concurrency: int = Field(
        default=2, ge=1, description="task slots per Celery worker"
    )
    airflow_worker_queues: str = Field(
        default="", description="queues of the local Celery workers; empty = default and train"
    )
    # How long the scheduler waits for a running task's heartbeat before failing it (and
    # retrying it when it has retries): what a worker killed mid-task costs.
    airflow_task_heartbeat_timeout_s: int = Field(default=300, ge=5)
    # Airflow's per-install keys (JSON: jwt_secret, api_secret_key, fernet_key), the same
    # for every component; unset = <home>/airflow/secrets.json, generated on first use.
    # Containers mount one file (a Kubernetes Secret, a compose secret) here.
    airflow_secrets_file: Path | None = None

    # Serving.
    torchserve_inference_url: str | None = None
    torchserve_management_url: str | None = None
    torchserve_metrics_url: str | None = None
    torchserve_inference_port: int = 8085
    torchserve_management_port: int = 8086
    torchserve_metrics_port: int = 8087
    torchserve_grpc_inference_port: int = 7070
    torchserve_grpc_management_port: int = 7071
    torchserve_key_file: Path | None = Field(
        default=None, description="TorchServe's key_file.json; unset = the local stack's"
    )
    torchserve_inference_key: SecretStr | None = None
    torchserve_management_key: SecretStr | None = None
    torchserve_token_expiration_min: int = 7 * 24 * 60
    # Dynamic batching and workers of each endpoint. TorchServe waits the full delay
    # for a batch even when one request is alone, so the delay is pure latency at low
    # load; 1 ms still fills batches under load (benchmarks/serving.py: same throughput
    # as 5 ms, 4 ms less at concurrency 1).
    serving_batch_size: int = 8
    serving_max_batch_delay_ms: int = 1
    # One single-threaded worker per core (at most 4) beats fewer workers with more
    # threads: batches of short inputs barely parallelise inside one forward.
    serving_workers: int = Field(
        default_factory=lambda: max(1, min(os.cpu_count() or 1, 4)),
        description="TorchServe workers per endpoint (default: one per core, at most 4)",
    )
    serving_threads: int = Field(default=1, description="torch and BLAS threads per serving worker")
    search_index: str = Field(
        default="auto",
        description="search index per target (serving.vector_index.IndexConfig): 'auto' is "
        "exact below 100k items and HNSW above; e.g. 'faiss:IVF1024,PQ32;nprobe=32', 'exact'",
    )
    search_refresh_s: float = Field(
        default=5.0,
        ge=0,
        description="how often a search worker looks for batches published since it loaded "
        "its catalogue (`dualmedia publish --batch`), seconds",
    )
    # The largest request body a worker reads (JSON with base64 media: 4 bytes per 3).
    # Over it: a JSON 413 naming this limit. TorchServe's frontend takes up to twice this
    # (its max_request_size) so the worker can say so; beyond that the frontend itself
    # answers 413, with no body, before any worker sees the request.
    # Rows a worker's served-request log holds while object storage is unreachable; past
    # it the oldest are dropped and counted (TorchServe metric ServedRowsDropped).
    served_log_max_rows: int = Field(default=20_000, ge=1)
    serving_max_request_mb: float = Field(
        default=64, gt=0, le=1024, description="largest request body (MiB)"
    )
    # The model server deploy/rollback/restore talk to (serving/backend.py BACKENDS).
    serving_backend: str = Field(
        default="torchserve", pattern="^[a-z][a-z0-9_-]*$", description="model server"
    )

    # The registered model the CLI's promote/deploy/publish/monitor act on by default.
    model_name: str = "customer-feedback"
    # The training configuration (configs/train/<name>.yaml) pipelines use by default.
    train_config: str = Field(default="default", pattern="^[A-Za-z0-9_-]+$")

    # Feature store: "local" (SQLite online store) or "production" (Redis online store).
    feast_profile: str = Field(default="local", pattern="^(local|production)$")
    feast_project: str = Field(default="dualmedia", pattern="^[A-Za-z0-9][A-Za-z0-9_]*$")
    feast_redis: SecretStr = SecretStr("127.0.0.1:6379")

    # Health-check patience when starting services (seconds).
    startup_timeout_s: float = 300.0

    @model_validator(mode="after")
    def _local_credentials(self) -> Settings:
        """The local stack's generated credentials, for whatever is not set explicitly."""
        s3_unset = self.s3_access_key is None or self.s3_secret_key is None
        if self.s3_endpoint_url is None and s3_unset:
            keys = credentials.local_s3_keys(self.home_dir)
            self.s3_access_key = self.s3_access_key or SecretStr(keys["access_key"])
            self.s3_secret_key = self.s3_secret_key or SecretStr(keys["secret_key"])
        if self.mlflow_tracking_uri is None and self.mlflow_password is None:
            password = credentials.local_mlflow_secrets(self.home_dir)["password"]
            self.mlflow_password = SecretStr(password)
        return self

    # ---- derived values -------------------------------------------------------------
    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def s3_endpoint(self) -> str | None:
        """The S3 endpoint URL, or None for AWS's default endpoints."""
        if self.s3_endpoint_url is None:
            return f"http://{self.host}:{self.s3_port}"
        return self.s3_endpoint_url or None

    @property
    def mlflow_uri(self) -> str:
        """The tracking server's URL. Every MLflow client is built from it, so reading it
        also hands this server's credentials to the mlflow library (which takes them only
        from its environment): a client made from this URL authenticates as these settings
        say. One process talks to one MLflow server at a time."""
        password = self.mlflow_password.get_secret_value() if self.mlflow_password else None
        credentials.export_mlflow_credentials(self.mlflow_username, password)
        return self.mlflow_tracking_uri or f"http://{self.host}:{self.mlflow_port}"

    def mlflow_credentials(self) -> tuple[str, str] | None:
        """(username, password) for HTTP basic auth to MLflow; None = anonymous."""
        if self.mlflow_password is None:
            return None
        return self.mlflow_username, self.mlflow_password.get_secret_value()

    @property
    def airflow_base_url(self) -> str:
        return (self.airflow_url or f"http://{self.host}:{self.airflow_port}").rstrip("/")

    @property
    def production(self) -> bool:
        return self.profile == "production"

    def postgres_database_url(self, database: str, scheme: str = "postgresql") -> str:
        """The URL of one database on the PostgreSQL server (holds the password, if any:
        pass it to child processes only, never to a log)."""
        base = self.postgres_url.get_secret_value().rstrip("/")
        rest = base.split("://", 1)[1] if "://" in base else base
        query = ""
        if "?" in rest:
            rest, query = rest.split("?", 1)
            query = "?" + query
        rest = rest.split("/", 1)[0]  # a database in the server URL is replaced
        return f"{scheme}://{rest}/{database}{query}"

    @property
    def airflow_queues(self) -> list[str]:
        """The queues the local Celery workers consume."""
        given = [q.strip() for q in self.airflow_worker_queues.split(",") if q.strip()]
        return given or [self.airflow_default_queue, self.airflow_train_queue]

    @property
    def feast_backend(self) -> str:
        """Which feature_store YAML applies: the production profile implies Feast's."""
        return "production" if self.production else self.feast_profile

    @property
    def torchserve_inference(self) -> str:
        url = self.torchserve_inference_url
        return (url or f"http://{self.host}:{self.torchserve_inference_port}").rstrip("/")

    @property
    def torchserve_management(self) -> str:
        url = self.torchserve_management_url
        return (url or f"http://{self.host}:{self.torchserve_management_port}").rstrip("/")

    @property
    def torchserve_metrics(self) -> str:
        url = self.torchserve_metrics_url
        return (url or f"http://{self.host}:{self.torchserve_metrics_port}").rstrip("/")

    @property
    def torchserve_model_store(self) -> Path | None:
        """The local stack's model store folder (None when TorchServe is external)."""
        if self.torchserve_management_url is not None:
            return None
        return self.home_dir / "torchserve" / "model-store"

    @property
    def serving_max_request_bytes(self) -> int:
        return int(self.serving_max_request_mb * 1024 * 1024)

    @property
    def serving_record_uri(self) -> str:
        """The deployment record (default and previous version per endpoint, history):
        in object storage, so every machine reads the same one; restore re-registers it
        when the model server starts again. The live state is asked from the server."""
        return f"s3://{self.lake_bucket}/serving/deployments.json"

    @property
    def torchserve_key_path(self) -> Path:
        return self.torchserve_key_file or self.home_dir / "torchserve" / "key_file.json"

    def airflow_admin_password(self) -> str:
        """The Airflow password: from settings, else the one the local stack generated."""
        if self.airflow_password is not None:
            return self.airflow_password.get_secret_value()
        generated = self.home_dir / "airflow" / "simple_auth_manager_passwords.json.generated"
        try:
            return json.loads(generated.read_text())[self.airflow_username]
        except (OSError, ValueError, KeyError):
            raise RuntimeError(
                f"no Airflow password: set DUALMEDIA_AIRFLOW_PASSWORD or start the local stack "
                f"(`dualmedia up`), which writes {generated}"
            ) from None

    def torchserve_key(self, kind: str) -> str:
        """The TorchServe token for `kind` ('inference' or 'management')."""
        explicit = {
            "inference": self.torchserve_inference_key,
            "management": self.torchserve_management_key,
        }[kind]
        if explicit is not None:
            return explicit.get_secret_value()
        path = self.torchserve_key_path
        try:
            return json.loads(path.read_text())[kind]["key"]
        except (OSError, ValueError, KeyError):
            raise RuntimeError(
                f"no TorchServe {kind} key: set DUALMEDIA_TORCHSERVE_{kind.upper()}_KEY or start "
                f"the local stack (`dualmedia up`), which writes {path}"
            ) from None

    def child_env(self) -> dict[str, str]:
        """These settings as DUALMEDIA_* variables, for processes the stack starts.

        Airflow tasks run in those processes and build their own Settings from this.
        """
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Path):
                value = str(value.expanduser().resolve())
            elif isinstance(value, list | dict):  # pydantic-settings reads these as JSON
                value = json.dumps(value)
            env[f"DUALMEDIA_{name.upper()}"] = str(value)
        return env

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print or log: secrets masked."""
        return json.loads(self.model_dump_json())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own `Settings(...)` instead)."""
    return Settings()
