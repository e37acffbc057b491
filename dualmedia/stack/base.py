"""One locally managed service: its process, pid file, log, ports and health check.

Each service of the local stack is one subclass in its own file (s3.py, mlflow.py,
airflow.py, torchserve.py); the launcher only knows this interface.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from dualmedia.settings import Settings


class StackError(RuntimeError):
    """A service could not be started or stopped; the message names it and its log."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    title: str
    url: str
    state: str  # running | unhealthy | stopped | external-up | external-down
    pid: int | None
    log: str | None
    # What the service runs on (executor, metadata DB, backend store, ...), so a script
    # can tell which profile runs; secrets masked.
    backend: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "service": self.name,
            "title": self.title,
            "url": self.url,
            "state": self.state,
            "pid": self.pid,
            "log": self.log,
            "backend": self.backend,
        }


def venv_bin() -> Path:
    """The folder holding this interpreter's console scripts (rclone, mlflow, ...)."""
    return Path(sys.executable).parent


def port_is_free(host: str, port: int) -> bool:
    """True when `host:port` can be bound; StackError when `host` itself is unusable."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise StackError(
                f"cannot bind {host}:{port}: {exc.strerror} (check DUALMEDIA_HOST)"
            ) from None
    return True


class Service(ABC):
    """A service the stack can start as a background process."""

    name: str  # short id, used for file names: "s3"
    title: str  # what it is, for people: "object storage"
    group: str = ""  # what `--service` selects; "" = the name (Airflow's processes share one)
    # Started together with the services before it that say so too, then waited for
    # (Airflow's components need only the api-server, not each other).
    concurrent_start: bool = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # ---- what subclasses define ------------------------------------------------------
    @property
    @abstractmethod
    def url(self) -> str:
        """The URL users and clients reach the service at."""

    @abstractmethod
    def is_external(self) -> bool:
        """True when settings point at a remote service: `up` then leaves it alone."""

    @abstractmethod
    def ports(self) -> dict[int, str]:
        """Every TCP port the local process binds, with the setting that chooses it."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the service in the foreground."""

    @abstractmethod
    def is_healthy(self) -> bool:
        """One quick health probe; never raises."""

    def extra_env(self) -> dict[str, str]:
        """Environment variables specific to this service."""
        return {}

    def prepare(self) -> None:
        """Write configuration files before the first start (idempotent)."""

    def after_start(self) -> None:
        """Work to do once healthy (e.g. create buckets)."""

    def login_hint(self) -> str | None:
        """How a person logs in, printed by `up` (never a secret from settings)."""
        return None

    def backend(self) -> dict[str, object]:
        """What the service stores its state in / runs tasks with (no secrets)."""
        return {}

    @property
    def selector(self) -> str:
        return self.group or self.name

    # ---- files -----------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.settings.home_dir / self.name

    @property
    def log_path(self) -> Path:
        return self.settings.home_dir / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.settings.home_dir / "run" / f"{self.name}.pid"

    # ---- process management ----------------------------------------------------------
    def process(self) -> psutil.Process | None:
        """The process `up` started, if it is still alive (pid reuse is detected)."""
        try:
            record = json.loads(self.pid_path.read_text())
            proc = psutil.Process(record["pid"])
            if abs(proc.create_time() - record["create_time"]) > 1.0:
                return None  # the pid now belongs to an unrelated process
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (OSError, ValueError, KeyError, psutil.Error):
            return None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.settings.child_env())
        env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env())
        return env

    def start(self) -> str:
        """Start the service and wait until healthy. Returns what happened."""
        proc = self.launch()
        return "already running" if proc is None else self.wait_started(proc)

    def launch(self) -> subprocess.Popen | None:
        """Start the process without waiting for its health check; None when it was
        running (and healthy) already."""
        if self.process() is not None:
            if self.wait_healthy(timeout=self.settings.startup_timeout_s):
                return None
            raise StackError(
                f"{self.title} ({self.name}) is running but not healthy; see {self.log_path}"
            )
        self.pid_path.unlink(missing_ok=True)
        for port, setting in self.ports().items():
            if not port_is_free(self.settings.host, port):
                raise StackError(
                    f"{self.title} ({self.name}) cannot start: port {port} on "
                    f"{self.settings.host} is taken by another process. Stop that process or "
                    f"choose another port with {setting}=<port>; log: {self.log_path}"
                )
        for folder in (self.state_dir, self.log_path.parent, self.pid_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting ====\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    self.command(),
                    cwd=self.state_dir,
                    env=self.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: `down` stops all its children
                )
            except OSError as exc:
                raise StackError(f"{self.title} ({self.name}) cannot start: {exc}") from None
        record = {
            "pid": proc.pid,
            "create_time": psutil.Process(proc.pid).create_time(),
            "command": self.command()[0],
        }
        self.pid_path.write_text(json.dumps(record))
        return proc

    def wait_started(self, proc: subprocess.Popen) -> str:
        """Wait for a launched process's health check, then run after_start."""
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_path.unlink(missing_ok=True)
                raise StackError(
                    f"{self.title} ({self.name}) exited with code {proc.returncode} while "
                    f"starting; see its log {self.log_path}:\n{self.log_tail()}"
                )
            if self.is_healthy():
                self.after_start()
                return "started"
            time.sleep(0.5)
        self.stop()
        raise StackError(
            f"{self.title} ({self.name}) did not become healthy within "
            f"{self.settings.startup_timeout_s:.0f}s; see its log {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_healthy():
                return True
            if self.process() is None:
                return False
            time.sleep(0.5)
        return False

    def stop(self, timeout: float = 30.0) -> str:
        """Stop the process `up` started and all its descendants; nothing else."""
        proc = self.process()
        if proc is None:
            self.pid_path.unlink(missing_ok=True)
            return "not running"
        try:
            family = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            family = [proc]
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers forked after the snapshot
        self.pid_path.unlink(missing_ok=True)
        return "stopped"

    def status(self) -> ServiceStatus:
        if self.is_external():
            state = "external-up" if self.is_healthy() else "external-down"
            return ServiceStatus(self.name, self.title, self.url, state, None, None, self.backend())
        proc = self.process()
        if proc is None:
            state = "stopped"
        else:
            state = "running" if self.is_healthy() else "unhealthy"
        return ServiceStatus(
            self.name,
            self.title,
            self.url,
            state,
            proc.pid if proc else None,
            str(self.log_path),
            self.backend(),
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:])
