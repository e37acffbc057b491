"""Orchestration: `airflow standalone` (api-server, scheduler, dag-processor, triggerer).

LocalExecutor on SQLite with parallelism sized to the machine; the dags folder is the
repository's `dags/`. Every port is set explicitly so several stacks (tests) can run
side by side.
"""

from __future__ import annotations

import json

import requests

from dualmedia.stack.base import Service, venv_bin

HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


class AirflowService(Service):
    name = "airflow"
    title = "orchestration"

    @property
    def url(self) -> str:
        return self.settings.airflow_base_url

    def is_external(self) -> bool:
        return self.settings.airflow_url is not None

    def ports(self) -> dict[int, str]:
        s = self.settings
        return {
            s.airflow_port: "DUALMEDIA_AIRFLOW_PORT",
            s.airflow_worker_log_port: "DUALMEDIA_AIRFLOW_WORKER_LOG_PORT",
            s.airflow_trigger_log_port: "DUALMEDIA_AIRFLOW_TRIGGER_LOG_PORT",
        }

    @property
    def passwords_file(self) -> str:
        return str(self.state_dir / "simple_auth_manager_passwords.json.generated")

    def command(self) -> list[str]:
        return [str(venv_bin() / "airflow"), "standalone"]

    def extra_env(self) -> dict[str, str]:
        s = self.settings
        return {
            "AIRFLOW_HOME": str(self.state_dir),
            "AIRFLOW__CORE__DAGS_FOLDER": str(s.dags_folder.resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(s.airflow_pause_new_dags),
            "AIRFLOW__CORE__PARALLELISM": str(s.airflow_parallelism),
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

    def prepare(self) -> None:
        # A password from settings replaces the one standalone would generate.
        if self.settings.airflow_password is not None:
            password = self.settings.airflow_password.get_secret_value()
            with open(self.passwords_file, "w") as f:
                json.dump({self.settings.airflow_username: password}, f)

    def is_healthy(self) -> bool:
        try:
            r = requests.get(f"{self.url}/api/v2/monitor/health", timeout=3)
            body = r.json()
        except (requests.RequestException, ValueError):
            return False
        return r.status_code == 200 and all(
            body.get(c, {}).get("status") == "healthy" for c in HEALTH_COMPONENTS
        )

    def login_hint(self) -> str | None:
        s = self.settings
        if s.airflow_password is not None:
            return f"login {s.airflow_username} with the password in DUALMEDIA_AIRFLOW_PASSWORD"
        try:
            password = s.airflow_admin_password()
        except RuntimeError:
            return None
        return f"login {s.airflow_username} / {password} (kept in {self.passwords_file})"
