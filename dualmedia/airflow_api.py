"""A small client for Airflow's REST API v2 (JWT from /auth/token)."""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from dualmedia.settings import Settings


class AirflowApiError(RuntimeError):
    """The Airflow API refused or failed a call; the message names the endpoint."""


class AirflowClient:
    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.base = settings.airflow_base_url
        self.timeout = timeout
        self._token: str | None = None
        self._token_at = 0.0

    def token(self) -> str:
        # Tokens live 24 h by default; refresh hourly to stay far from expiry.
        if self._token is None or time.monotonic() - self._token_at > 3600:
            r = requests.post(
                f"{self.base}/auth/token",
                json={
                    "username": self.settings.airflow_username,
                    "password": self.settings.airflow_admin_password(),
                },
                timeout=self.timeout,
            )
            if r.status_code >= 400:
                raise AirflowApiError(
                    f"{self.base}/auth/token: login as {self.settings.airflow_username!r} "
                    f"failed with HTTP {r.status_code}"
                )
            self._token = r.json()["access_token"]
            self._token_at = time.monotonic()
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base}/api/v2/{path.lstrip('/')}"
        headers = {"Authorization": f"Bearer {self.token()}"}
        try:
            r = requests.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise AirflowApiError(f"{method} {url}: {exc}") from None
        if r.status_code >= 400:
            detail = r.text[:500]
            raise AirflowApiError(f"{method} {url}: HTTP {r.status_code}: {detail}")
        return r.json() if r.content else None

    def list_dags(self) -> list[dict[str, Any]]:
        return self.request("GET", "dags", params={"limit": 1000})["dags"]

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.request("PATCH", f"dags/{dag_id}", json={"is_paused": paused})

    def import_errors(self) -> list[dict[str, Any]]:
        return self.request("GET", "importErrors")["import_errors"]

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start a DAG run now; returns the run (with its dag_run_id)."""
        return self.request(
            "POST", f"dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"dags/{dag_id}/dagRuns/{run_id}")

    def dag_runs(self, dag_id: str, limit: int = 100) -> list[dict[str, Any]]:
        params = {"limit": limit, "order_by": "-start_date"}
        return self.request("GET", f"dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return self.request("GET", path, params={"limit": 1000})["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """A task's return value (its `return_value` XCom), decoded."""
        value = self.request(
            "GET",
            f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        )["value"]
        return json.loads(value) if isinstance(value, str) else value

    def asset_id(self, name: str) -> int:
        """The id of the asset named `name` (known once a DAG using it has been parsed)."""
        found = self.request("GET", "assets", params={"name_pattern": name, "limit": 100})
        for asset in found["assets"]:
            if asset["name"] == name:
                return int(asset["id"])
        raise AirflowApiError(
            f"Airflow knows no asset named {name!r} yet: the DAGs that use it have not been "
            "parsed (is the dag-processor running?)"
        )

    def create_asset_event(self, name: str, extra: dict[str, Any]) -> dict[str, Any]:
        """Record an event of the asset `name`; DAGs scheduled on it start as for a task's."""
        body = {"asset_id": self.asset_id(name), "extra": extra}
        return self.request("POST", "assets/events", json=body)

    def upstream_asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The asset events that started a run (empty for a run started by hand)."""
        path = f"dags/{dag_id}/dagRuns/{run_id}/upstreamAssetEvents"
        return self.request("GET", path)["asset_events"]

    def run_for_event(self, dag_id: str, key: str, value: str, timeout: float) -> dict[str, Any]:
        """The asset-triggered run of `dag_id` whose triggering events include one with
        extra[key] == value; waits up to `timeout` seconds for the scheduler to start it."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            for run in self.dag_runs(dag_id):
                if run["run_type"] != "asset_triggered" or run["dag_run_id"] in seen:
                    continue
                events = self.upstream_asset_events(dag_id, run["dag_run_id"])
                if any((e.get("extra") or {}).get(key) == value for e in events):
                    return run
                seen.add(run["dag_run_id"])
            if time.monotonic() > deadline:
                raise AirflowApiError(
                    f"no run of {dag_id} was started by an asset event with {key}={value!r} "
                    f"within {timeout:.0f}s (is {dag_id} paused?)"
                )
            time.sleep(2)

    def asset_url(self, asset_id: int) -> str:
        return f"{self.base}/assets/{asset_id}"

    def run_url(self, dag_id: str, run_id: str) -> str:
        return f"{self.base}/dags/{dag_id}/runs/{run_id}"
