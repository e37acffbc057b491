"""Serving: TorchServe with token authorization on; its key file lives in the state folder."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from dualmedia.settings import REPO_ROOT
from dualmedia.stack.base import Service, venv_bin

LOG_CONFIG = REPO_ROOT / "infra" / "torchserve-log4j2.xml"


class TorchServeService(Service):
    name = "torchserve"
    title = "serving"

    @property
    def url(self) -> str:
        return self.settings.torchserve_inference

    def is_external(self) -> bool:
        return self.settings.torchserve_inference_url is not None

    def ports(self) -> dict[int, str]:
        s = self.settings
        return {
            s.torchserve_inference_port: "DUALMEDIA_TORCHSERVE_INFERENCE_PORT",
            s.torchserve_management_port: "DUALMEDIA_TORCHSERVE_MANAGEMENT_PORT",
            s.torchserve_metrics_port: "DUALMEDIA_TORCHSERVE_METRICS_PORT",
            s.torchserve_grpc_inference_port: "DUALMEDIA_TORCHSERVE_GRPC_INFERENCE_PORT",
            s.torchserve_grpc_management_port: "DUALMEDIA_TORCHSERVE_GRPC_MANAGEMENT_PORT",
        }

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.properties"

    @property
    def model_store(self) -> Path:
        return self.state_dir / "model-store"

    def command(self) -> list[str]:
        return [
            str(venv_bin() / "torchserve"),
            "--start",
            "--foreground",
            "--ts-config",
            str(self.config_path),
            "--model-store",
            str(self.model_store),
            "--log-config",
            str(LOG_CONFIG),
        ]

    def extra_env(self) -> dict[str, str]:
        # TorchServe writes model snapshots under LOG_LOCATION/config and restores the
        # latest one at start, so registered models survive `down` + `up`.
        logs = str(self.state_dir / "logs")
        # TorchServe keeps its pid file in $TMPDIR/.model_server.pid: a private TMPDIR
        # keeps two stacks (a demo and a test run) from stopping each other.
        tmp = str(self.state_dir / "tmp")
        return {"LOG_LOCATION": logs, "METRICS_LOCATION": logs, "TMPDIR": tmp, "TEMP": tmp}

    def prepare(self) -> None:
        s = self.settings
        self.model_store.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "tmp").mkdir(parents=True, exist_ok=True)
        # A key file left from the previous run holds stale tokens; TorchServe writes anew.
        (self.state_dir / "key_file.json").unlink(missing_ok=True)
        # TorchServe writes key_file.json into its working directory (the state folder),
        # which is where settings.torchserve_key_path looks for it.
        lines = [
            f"inference_address=http://{s.host}:{s.torchserve_inference_port}",
            f"management_address=http://{s.host}:{s.torchserve_management_port}",
            f"metrics_address=http://{s.host}:{s.torchserve_metrics_port}",
            f"grpc_inference_port={s.torchserve_grpc_inference_port}",
            f"grpc_management_port={s.torchserve_grpc_management_port}",
            f"model_store={self.model_store}",
            # Token authorization is on by default in 0.12; only this turns it off.
            "disable_token_authorization=false",
            f"token_expiration_min={s.torchserve_token_expiration_min}",
            # Registering archives through the management API is how deploys happen.
            "enable_model_api=true",
            "default_workers_per_model=1",
            "install_py_dep_per_model=false",
            "disable_system_metrics=true",
            # Log writes off the request path (a queue and a logging thread).
            "async_logging=true",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def after_start(self) -> None:
        """Serve again what was deployed before `down` (settings.torchserve_deployments_file,
        written by `dualmedia deploy`): TorchServe itself restores nothing when started
        with a config file."""
        path = self.settings.torchserve_deployments_file
        if not path.exists():
            return
        record = json.loads(path.read_text(encoding="utf-8"))
        s = self.settings
        headers = {"Authorization": f"Bearer {s.torchserve_key('management')}"}
        base = s.torchserve_management
        for name, entry in record.get("endpoints", {}).items():
            order = [entry.get("previous"), entry["default"]]
            for version in [v for v in order if v]:
                archive = entry["archives"].get(version)
                if archive is None or not (self.model_store / archive).exists():
                    continue
                # The previous version stays registered for rollback, without workers.
                workers = s.serving_workers if version == entry["default"] else 0
                params = {
                    "url": archive,
                    "model_name": name,
                    "batch_size": s.serving_batch_size,
                    "max_batch_delay": s.serving_max_batch_delay_ms,
                    "initial_workers": workers,
                    "synchronous": "true",
                }
                requests.post(f"{base}/models", params=params, headers=headers, timeout=300)
            requests.put(
                f"{base}/models/{name}/{entry['default']}/set-default", headers=headers, timeout=60
            )

    def is_healthy(self) -> bool:
        try:
            key = self.settings.torchserve_key("inference")
            r = requests.get(
                f"{self.url}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=2
            )
        except (RuntimeError, requests.RequestException):
            return False
        return r.status_code == 200 and r.json().get("status") == "Healthy"
