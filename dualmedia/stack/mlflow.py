"""Tracking and registry: `mlflow server` on SQLite, artifacts proxied into object storage.

The server runs MLflow's basic-auth app: every request but `/health`, `/static` and
`/server-info` needs HTTP basic credentials, so nobody anonymous reads a run or moves an
alias. The admin user is `settings.mlflow_username` with the password generated per install
(`<home>/secrets/mlflow.json`, dualmedia/credentials.py) or set explicitly; users other
than the admin get no permission unless an admin grants one (`default_permission`).
The auth store is `basic_auth.db` in the state folder.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import requests

from dualmedia import credentials
from dualmedia.stack.base import Service, StackError, venv_bin

AUTH_CONFIG = """\
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///{db}
admin_username = {username}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
grant_default_workspace_access = false
# A successful credential check is kept for a minute per server worker: the stored hash
# (PBKDF2, about 0.25 s of CPU) is checked once a minute per client instead of on every
# call (measured: 292 calls of one tiny training run took 79 s, 56 s of them the model
# logging's metric lookups). A password rotation restarts the server, so no entry
# outlives a rotation; a wrong password is never cached.
auth_cache_ttl_seconds = 60
auth_cache_max_size = 1000
"""


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

    @property
    def auth_config_path(self) -> Path:
        return self.state_dir / "basic_auth.ini"

    @property
    def auth_db_path(self) -> Path:
        return self.state_dir / "basic_auth.db"

    def command(self) -> list[str]:
        s = self.settings
        return [
            str(venv_bin() / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
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
            "AWS_DEFAULT_REGION": s.s3_region,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # The server's job runner (GenAI evaluation jobs) is a dozen idle worker
            # processes this platform never uses.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "DO_NOT_TRACK": "1",
            # basic auth: the config (no secret in it), the admin's password (used when the
            # admin user is created; prepare() keeps an existing one in step) and the key
            # of the server's CSRF protection. Environment, not command line: `ps` shows
            # neither.
            "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config_path),
            "MLFLOW_AUTH_ADMIN_USERNAME": s.mlflow_username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self._admin_password(),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self._secrets()["flask_secret_key"],
        }
        if s.s3_access_key is not None and s.s3_secret_key is not None:
            # (unset only for an external S3: then boto3's own credential chain applies)
            env["AWS_ACCESS_KEY_ID"] = s.s3_access_key.get_secret_value()
            env["AWS_SECRET_ACCESS_KEY"] = s.s3_secret_key.get_secret_value()
        if s.s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = s.s3_endpoint
        env["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri
        return env

    def _secrets(self) -> dict[str, str]:
        return credentials.local_mlflow_secrets(self.settings.home_dir)

    def _admin_password(self) -> str:
        found = self.settings.mlflow_credentials()
        return found[1] if found else self._secrets()["password"]

    def prepare(self) -> None:
        s = self.settings
        if len(self._admin_password()) < 12:  # MLflow's own rule, said before it starts
            raise StackError(
                "tracking + registry (mlflow) cannot start: DUALMEDIA_MLFLOW_PASSWORD must "
                "have at least 12 characters"
            )
        text = AUTH_CONFIG.format(db=self.auth_db_path, username=s.mlflow_username)
        credentials.replace_owner_only(self.auth_config_path, text)
        self._sync_admin_password()

    def _sync_admin_password(self) -> None:
        """Give the existing admin user the configured password (rotation: a new password
        file or setting takes effect at the next start). MLflow itself applies the password
        only when it creates the admin user."""
        if not self.auth_db_path.exists():
            return  # the server creates the admin user with MLFLOW_AUTH_ADMIN_PASSWORD
        from werkzeug.security import check_password_hash

        username, password = self.settings.mlflow_username, self._admin_password()
        stored = None
        with contextlib.suppress(sqlite3.Error):
            with contextlib.closing(sqlite3.connect(self.auth_db_path)) as db:
                row = db.execute(
                    "SELECT password_hash FROM users WHERE username = ?", (username,)
                ).fetchone()
            stored = row[0] if row else ""
        if stored == "":
            return  # no such user yet: the server creates it with the configured password
        if stored is not None and check_password_hash(stored, password):
            return  # in step (the usual case: no MLflow import needed)
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore()
        store.init_db(f"sqlite:///{self.auth_db_path}")
        if store.has_user(username, use_primary=True):
            store.update_user(username, password=password)

    def after_start(self) -> None:
        # The auth store holds password hashes: owner-only, like the password file.
        with contextlib.suppress(OSError):
            self.auth_db_path.chmod(0o600)

    def is_healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def login_hint(self) -> str | None:
        s = self.settings
        if s.mlflow_tracking_uri is not None:
            return None
        where = "DUALMEDIA_MLFLOW_PASSWORD"
        if self._admin_password() == self._secrets()["password"]:
            where = str(credentials.secrets_dir(s.home_dir) / credentials.MLFLOW_FILE)
        return f"login {s.mlflow_username} with the password in {where}"
