"""Orchestration: Airflow 3, in one of two shapes chosen by `settings.profile`.

local: `airflow standalone` (api-server, scheduler, dag-processor, triggerer in one
process group), LocalExecutor on SQLite, parallelism sized to the machine.

production: the same components as separate processes (`airflow api-server`,
`scheduler`, `dag-processor`, `triggerer`) plus N `airflow celery worker`s consuming
the `default` and `train` queues; CeleryExecutor with a Redis broker, metadata DB and
Celery result backend on PostgreSQL. Each component is its own Service (pid file, log,
health check), so `down` stops exactly what `up` started and a test can kill one worker.
All components share one AIRFLOW_HOME and one set of per-install secrets (the JWT
secret signing the execution API's task tokens must be the same in every component).

The dags folder is the repository's `dags/`. Every port is set explicitly so several
stacks (tests) can run side by side.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import requests

from dualmedia import credentials
from dualmedia.settings import Settings
from dualmedia.stack import postgres
from dualmedia.stack.base import Service, StackError, venv_bin

HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
SECRETS_FILE = "secrets.json"


def _health(url: str) -> dict:
    try:
        r = requests.get(f"{url}/api/v2/monitor/health", timeout=3)
        return r.json() if r.status_code == 200 else {}
    except (requests.RequestException, ValueError):
        return {}


class _AirflowBase(Service):
    """What every Airflow process shares: AIRFLOW_HOME, configuration, secrets."""

    group = "airflow"

    @property
    def url(self) -> str:
        return self.settings.airflow_base_url

    def is_external(self) -> bool:
        return self.settings.airflow_url is not None

    @property
    def state_dir(self) -> Path:
        return self.settings.home_dir / "airflow"

    @property
    def passwords_file(self) -> str:
        return str(self.state_dir / "simple_auth_manager_passwords.json.generated")

    @property
    def metadata_db_url(self) -> str:
        s = self.settings
        if s.production:
            return s.postgres_database_url(s.postgres_airflow_db, "postgresql+psycopg2")
        return f"sqlite:///{self.state_dir / 'airflow.db'}"

    def install_secrets(self) -> dict[str, str]:
        """Per-install keys, generated once into an owner-only file: the JWT secret of the
        execution API and the api-server's session key must match across components."""
        given = self.settings.airflow_secrets_file
        path = given or self.state_dir / SECRETS_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            if given is not None:  # mounted by the operator: never generated over
                raise StackError(
                    f"cannot read Airflow's keys from {given} (DUALMEDIA_AIRFLOW_SECRETS_FILE)"
                ) from None
        from cryptography.fernet import Fernet

        values = {
            "jwt_secret": secrets.token_urlsafe(48),
            "api_secret_key": secrets.token_urlsafe(32),
            "fernet_key": Fernet.generate_key().decode(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        return values

    def extra_env(self) -> dict[str, str]:
        s = self.settings
        env = {
            "AIRFLOW_HOME": str(self.state_dir),
            "AIRFLOW__CORE__DAGS_FOLDER": str(s.dags_folder.resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(s.airflow_pause_new_dags),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{s.airflow_username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": self.passwords_file,
            "AIRFLOW__API__HOST": s.host,
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(s.airflow_worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(s.airflow_trigger_log_port),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
            "SCARF_ANALYTICS": "false",
            "DO_NOT_TRACK": "1",
        }
        if not s.production:
            env["AIRFLOW__CORE__PARALLELISM"] = str(s.airflow_parallelism)
            return env
        keys = self.install_secrets()
        db = self.metadata_db_url
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
                "AIRFLOW__CELERY__BROKER_URL": s.redis_url.get_secret_value(),
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{db}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(s.airflow_worker_concurrency),
                # A task unacknowledged this long is delivered again (acks are late): a
                # day, longer than any training step. Worker loss is the scheduler's
                # heartbeat timeout below, not this.
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": s.redis_key_prefix,
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": s.airflow_default_queue,
                # Parallelism sized to the workers: every slot they have, no more.
                "AIRFLOW__CORE__PARALLELISM": str(s.airflow_workers * s.airflow_worker_concurrency),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(
                    s.airflow_task_heartbeat_timeout_s
                ),
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(
                    min(10, max(1, s.airflow_task_heartbeat_timeout_s // 4))
                ),
                "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
                "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
                "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
            }
        )
        return env

    def backend(self) -> dict[str, object]:
        s = self.settings
        if self.is_external():
            return {"executor": "external", "metadata_db": "external"}
        if not s.production:
            return {
                "executor": "LocalExecutor",
                "metadata_db": self.metadata_db_url,
                "parallelism": s.airflow_parallelism,
            }
        return {
            "executor": "CeleryExecutor",
            "metadata_db": postgres.masked(self.metadata_db_url),
            "broker": postgres.masked(s.redis_url.get_secret_value()),
            "result_backend": postgres.masked(f"db+{self.metadata_db_url}"),
            "queues": s.airflow_queues,
            "workers": s.airflow_workers,
            "parallelism": s.airflow_workers * s.airflow_worker_concurrency,
        }


class AirflowService(_AirflowBase):
    """The api-server (UI, REST and execution API): `airflow standalone` when local."""

    name = "airflow"
    title = "orchestration"

    def ports(self) -> dict[int, str]:
        s = self.settings
        ports = {s.airflow_port: "DUALMEDIA_AIRFLOW_PORT"}
        if not s.production:  # standalone also runs the log servers
            ports[s.airflow_worker_log_port] = "DUALMEDIA_AIRFLOW_WORKER_LOG_PORT"
            ports[s.airflow_trigger_log_port] = "DUALMEDIA_AIRFLOW_TRIGGER_LOG_PORT"
        return ports

    def command(self) -> list[str]:
        if self.settings.production:
            return [str(venv_bin() / "airflow"), "api-server"]
        return [str(venv_bin() / "airflow"), "standalone"]

    def prepare(self) -> None:
        # The admin password file, owner-only: a password from settings, else one made
        # here once per install (Airflow would print a password it generates into its log).
        explicit = self.settings.airflow_password
        credentials.ensure_airflow_password(
            Path(self.passwords_file),
            self.settings.airflow_username,
            explicit.get_secret_value() if explicit is not None else None,
        )
        if self.settings.production:
            # standalone migrates its SQLite itself; the components do not.
            postgres.ensure_database(self.settings, self.settings.postgres_airflow_db)
            self._migrate()

    def _migrate(self) -> None:
        """`airflow db migrate`: creates or upgrades the schema (a no-op when current)."""
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} db migrate ====\n".encode())
            log.flush()
            done = subprocess.run(
                [str(venv_bin() / "airflow"), "db", "migrate"],
                cwd=self.state_dir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=self.settings.startup_timeout_s,
            )
        if done.returncode != 0:
            raise StackError(
                f"airflow db migrate failed on {postgres.masked(self.metadata_db_url)}; "
                f"see {self.log_path}:\n{self.log_tail()}"
            )

    def is_healthy(self) -> bool:
        body = _health(self.url)
        # In production the other components are services of their own, checked apart.
        wanted = ("metadatabase",) if self.settings.production else HEALTH_COMPONENTS
        return bool(body) and all(body.get(c, {}).get("status") == "healthy" for c in wanted)

    def login_hint(self) -> str | None:
        s = self.settings
        if s.airflow_password is not None:
            return f"login {s.airflow_username} with the password in DUALMEDIA_AIRFLOW_PASSWORD"
        try:
            password = s.airflow_admin_password()
        except RuntimeError:
            return None
        return f"login {s.airflow_username} / {password} (kept in {self.passwords_file})"


class AirflowComponentService(_AirflowBase):
    """scheduler, dag-processor or triggerer of the production profile."""

    concurrent_start = True

    component: str  # the `airflow` sub-command
    health_key: str  # its entry in /api/v2/monitor/health

    def ports(self) -> dict[int, str]:
        if self.component == "triggerer":
            return {self.settings.airflow_trigger_log_port: "DUALMEDIA_AIRFLOW_TRIGGER_LOG_PORT"}
        return {}

    def command(self) -> list[str]:
        return [str(venv_bin() / "airflow"), self.component]

    def is_healthy(self) -> bool:
        return _health(self.url).get(self.health_key, {}).get("status") == "healthy"

    def backend(self) -> dict[str, object]:
        return {}


class AirflowSchedulerService(AirflowComponentService):
    name = "airflow-scheduler"
    title = "airflow scheduler"
    component = "scheduler"
    health_key = "scheduler"


class AirflowDagProcessorService(AirflowComponentService):
    name = "airflow-dag-processor"
    title = "airflow dag-processor"
    component = "dag-processor"
    health_key = "dag_processor"


class AirflowTriggererService(AirflowComponentService):
    name = "airflow-triggerer"
    title = "airflow triggerer"
    component = "triggerer"
    health_key = "triggerer"


class CeleryWorkerService(_AirflowBase):
    """One `airflow celery worker` (number `index`, from 1) on the configured queues."""

    title = "airflow celery worker"
    concurrent_start = True

    def __init__(self, settings: Settings, index: int = 1) -> None:
        super().__init__(settings)
        self.index = index
        self.name = f"airflow-worker-{index}"

    @property
    def celery_name(self) -> str:
        return f"{self.name}@%h"

    def ports(self) -> dict[int, str]:
        # One log server per machine is enough: every worker here writes its task logs
        # into the shared AIRFLOW_HOME/logs, which the api-server reads directly.
        if self.index == 1:
            return {self.settings.airflow_worker_log_port: "DUALMEDIA_AIRFLOW_WORKER_LOG_PORT"}
        return {}

    def command(self) -> list[str]:
        s = self.settings
        cmd = [
            str(venv_bin() / "airflow"),
            "celery",
            "worker",
            "--queues",
            ",".join(s.airflow_queues),
            "--concurrency",
            str(s.airflow_worker_concurrency),
            "--celery-hostname",
            self.celery_name,
            # Mingle and gossip only chat between workers at start-up and idle times.
            "--without-mingle",
            "--without-gossip",
        ]
        if self.index != 1:
            cmd.append("--skip-serve-logs")
        return cmd

    def is_healthy(self) -> bool:
        # Celery prints "<name>@<host> ready." once it consumes its queues; only the log
        # since the last start counts.
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        since_start = text.rsplit("==== ", 1)[-1]
        return f"{self.name}@" in since_start and " ready." in since_start

    def backend(self) -> dict[str, object]:
        return {
            "executor": "CeleryExecutor",
            "queues": self.settings.airflow_queues,
            "concurrency": self.settings.airflow_worker_concurrency,
        }


def airflow_services(settings: Settings) -> list[Service]:
    """The Airflow processes of the profile, in start order: the api-server first, since
    it migrates the metadata DB and serves the execution API the workers' tasks call."""
    if not settings.production:
        return [AirflowService(settings)]
    return [
        AirflowService(settings),
        AirflowSchedulerService(settings),
        AirflowDagProcessorService(settings),
        AirflowTriggererService(settings),
        *(CeleryWorkerService(settings, i) for i in range(1, settings.airflow_workers + 1)),
    ]
