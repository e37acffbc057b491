"""Run one service of the stack in the foreground: the entry point of each container.

    python -m dualmedia.stack.run airflow-scheduler
    python -m dualmedia.stack.run --show airflow-worker-1   # its command, no secrets

`infra/compose.yaml` and the Kubernetes manifests start every component through this
module, so a container runs exactly what `dualmedia up` runs on one machine: the same
command line and the same environment, computed from the same DUALMEDIA_* settings
(the container's orchestrator, not a pid file, keeps it alive). The databases on
PostgreSQL are created when missing (idempotent), the service's `prepare` runs (config
files, `airflow db migrate` for the api-server), then its `after_start` once healthy
(TorchServe re-registers the deployed models). SIGTERM is passed on to the service.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import typer

from dualmedia.settings import Settings
from dualmedia.stack import Stack, StackError, postgres
from dualmedia.stack.base import Service

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def find(settings: Settings, name: str) -> Service:
    services = Stack(settings).services
    for service in services:
        if service.name == name:
            return service
    known = ", ".join(s.name for s in services)
    raise StackError(f"no service {name!r} in the {settings.profile} profile; known: {known}")


def run_foreground(settings: Settings, name: str) -> int:
    service = find(settings, name)
    for folder in (service.state_dir, service.log_path.parent):
        folder.mkdir(parents=True, exist_ok=True)
    if settings.production and service.selector in ("airflow", "mlflow"):
        postgres.ensure_databases(settings)
    service.prepare()
    # Logs go to the container's stdout (what `docker logs` / `kubectl logs` show).
    proc = subprocess.Popen(service.command(), cwd=service.state_dir, env=service.env())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    deadline = time.monotonic() + settings.startup_timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        if service.is_healthy():
            service.after_start()
            break
        time.sleep(1)
    return proc.wait()


@cli.command()
def main(
    name: str = typer.Argument(help="Service name, as `dualmedia status` lists them."),
    show: bool = typer.Option(False, "--show", help="Print the command line and exit."),
) -> None:
    settings = Settings()
    try:
        if show:
            print(" ".join(find(settings, name).command()))
            return
        sys.exit(run_foreground(settings, name))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
