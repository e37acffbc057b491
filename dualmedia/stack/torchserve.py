"""Serving: TorchServe with token authorization on; its key file lives in the state folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

from dualmedia.settings import REPO_ROOT
from dualmedia.stack.base import Service, venv_bin
from dualmedia.stack.s3 import ObjectStorageService

LOG_CONFIG = REPO_ROOT / "infra" / "torchserve-log4j2.xml"


class TorchServeService(Service):
    name = "torchserve"
    title = "serving"
    restore_note = ""  # what restoring the deployments did, for `up` to show

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
            # Twice the workers' own limit, so that a body over that limit reaches a
            # worker and gets a JSON 413 naming it (settings.serving_max_request_mb).
            f"max_request_size={2 * s.serving_max_request_bytes}",
            # Bodies reach the handler undecoded (TorchServe's workers would json.loads
            # them first): it checks size and nesting before parsing (read_json_body).
            "decode_input_request=false",
            # Metrics the handler defines (ServedRowsDropped) go to model_metrics.log too.
            "model_metrics_auto_detect=true",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> str:
        self.restore_note = ""
        started = super().start()
        return f"{started}; {self.restore_note}" if self.restore_note else started

    def after_start(self) -> None:
        """Serve again what was deployed before `down`: TorchServe itself restores nothing
        when started with a config file, and the deployment record lives in object
        storage (settings.serving_record_uri).

        The restore is serving's (serving.deploy.restore, behind the serving-backend
        interface), reached through its command, `dualmedia deployments --restore`,
        which serving plugs in by the `dualmedia.commands` entry point. Running the
        command keeps the dependency one way (the core never imports a stage package),
        keeps TorchServe's management API inside serving/, and gives the restore the
        same settings as the service (child_env). What failed is never silent: it goes
        to this service's log and into what `up` reports."""
        storage = ObjectStorageService(self.settings)
        if not storage.is_healthy():
            # Checked first: S3 retries with backoff would hold `up` for a minute.
            self.restore_note = (
                f"deployments not restored: object storage ({storage.url}) does not answer; "
                "start it, then run `dualmedia deployments --restore`"
            )
            return
        command = [sys.executable, "-m", "dualmedia.cli", "deployments", "--restore", "--json"]
        env = self.env()
        with open(self.log_path, "ab") as log:
            log.write(b"==== restoring deployments ====\n")
            log.flush()
            try:
                done = subprocess.run(
                    command,
                    cwd=self.state_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    # Each registration waits for its workers: minutes on a loaded machine.
                    timeout=3 * self.settings.startup_timeout_s,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.restore_note = f"restoring deployments failed: {exc}; see {self.log_path}"
                return
            log.write(done.stdout + b"\n")
        try:
            summary = json.loads(done.stdout)
        except ValueError:
            self.restore_note = (
                f"restoring deployments failed (exit code {done.returncode}); "
                f"see {self.log_path}:\n{self.log_tail()}"
            )
            return
        self.restore_note = describe_restore(summary, self.log_path)

    def is_healthy(self) -> bool:
        try:
            key = self.settings.torchserve_key("inference")
            r = requests.get(
                f"{self.url}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=2
            )
        except (RuntimeError, requests.RequestException):
            return False
        return r.status_code == 200 and r.json().get("status") == "Healthy"


def describe_restore(summary: dict[str, Any], log_path: Path) -> str:
    """One line for `up` from the restore's summary: empty when there was nothing to do."""
    restored, failed = summary.get("restored", []), summary.get("failed", [])
    if not restored and not failed:
        return ""
    line = f"restored {len(restored)} deployment(s)"
    if failed:
        what = "; ".join(
            f"{f.get('endpoint')} v{f.get('version')} ({f.get('archive')}): {f.get('error')}"
            for f in failed
        )
        line += f", {len(failed)} FAILED: {what} (log {log_path})"
    return line
