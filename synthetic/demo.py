"""`make demo`: from nothing to a trained, registered, served and monitored model.

It talks to the platform the way a user does: the local stack, the CLI, the Airflow
REST API, MLflow, the TorchServe endpoints. Each step says what it does; a failing
step says what failed and where its log is, and the demo stops there. Re-running is
cheap: every step is idempotent (an unchanged dataset reuses its snapshot, model and
deployment).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from rich.table import Table

from dualmedia.airflow_api import AirflowClient
from dualmedia.console import out as console
from dualmedia.settings import Settings, get_settings
from dualmedia.stack import Stack

DATASET = "customer-feedback"
RECORDS = 600
DRIFT_BATCH = "batch-0002"
TRAINING_DAG = "multimodal_training"
MONITOR_DAG = "drift_monitor"


@dataclass
class Step:
    title: str
    run: Callable[[Settings, dict[str, Any]], str]
    log_hint: str


def cli(*args: str) -> dict[str, Any]:
    """Run a `dualmedia` command with --json; its stderr (progress) shows through."""
    result = subprocess.run(
        [sys.executable, "-m", "dualmedia.cli", *args, "--json"], stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"`dualmedia {' '.join(args)}` failed (exit {result.returncode})")
    return json.loads(result.stdout)


# ---- steps ----------------------------------------------------------------------------------
def start_stack(settings: Settings, facts: dict[str, Any]) -> str:
    stack = Stack(settings)
    stack.up(lambda svc, msg: console.print(f"    {svc.title:<20} {msg}"))
    facts["services"] = stack.status()
    facts["airflow_login"] = stack.service("airflow").login_hint()
    return "all services healthy"


def upload_sample_dataset(settings: Settings, facts: dict[str, Any]) -> str:
    uri = f"s3://{settings.raw_bucket}/{DATASET}"
    gen = cli("generate", uri, "--n", str(RECORDS), "--seed", "0")
    facts["dataset_uri"] = uri
    return f"{gen['n_records']} records (text, photo, voice note) in {uri}"


def follow_dag_run(client: AirflowClient, dag_id: str, run_id: str, timeout: float) -> str:
    """Print each task as it finishes; return the run's final state."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in sorted(
            client.task_instances(dag_id, run_id), key=lambda t: t.get("start_date") or "~"
        ):
            state = ti.get("state") or "scheduled"
            if seen.get(ti["task_id"]) != state and state in (
                "running", "success", "failed", "upstream_failed", "skipped", "up_for_retry",
            ):  # fmt: skip
                seen[ti["task_id"]] = state
                colour = {"success": "green", "running": "cyan"}.get(state, "red")
                took = f" ({ti['duration']:.0f}s)" if ti.get("duration") else ""
                console.print(f"    [{colour}]{state:<15}[/] {ti['task_id']}{took}")
        state = client.dag_run(dag_id, run_id)["state"]
        if state not in ("queued", "running"):
            return state
        time.sleep(3)
    raise RuntimeError(f"{dag_id} run {run_id} still running after {timeout:.0f}s")


def run_training(settings: Settings, facts: dict[str, Any]) -> str:
    client = AirflowClient(settings)
    _wait_for_dag(client, TRAINING_DAG)
    run = client.trigger(TRAINING_DAG, {"dataset_uri": facts["dataset_uri"]})
    facts["training_run"] = client.run_url(TRAINING_DAG, run["dag_run_id"])
    console.print(f"    Airflow run: {facts['training_run']}")
    state = follow_dag_run(client, TRAINING_DAG, run["dag_run_id"], timeout=3600)
    if state != "success":
        raise RuntimeError(f"the training run ended {state}: {facts['training_run']}")
    return f"run {run['dag_run_id']} succeeded"


def _wait_for_dag(client: AirflowClient, dag_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while dag_id not in {d["dag_id"] for d in client.list_dags()}:
        if time.monotonic() > deadline:
            errors = client.import_errors()
            raise RuntimeError(f"Airflow has no DAG {dag_id!r}; import errors: {errors}")
        time.sleep(2)
    client.set_paused(dag_id, False)


def show_model(settings: Settings, facts: dict[str, Any]) -> str:
    from mlflow import MlflowClient

    from training.tracking import ui_route

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    run = client.get_run(champion.tags["dualmedia.run_id"])
    facts["champion"] = champion.version
    facts["mlflow_run"] = (
        f"{settings.mlflow_uri}/{ui_route(run.info.experiment_id, run.info.run_id)}"
    )
    facts["mlflow_experiment"] = f"{settings.mlflow_uri}/{ui_route(run.info.experiment_id)}"
    f1 = {
        k.split("/")[2]: v
        for k, v in run.data.metrics.items()
        if k.startswith("test/fusion/") and k.endswith("/macro_f1")
    }
    for label, value in sorted(f1.items()):
        console.print(f"    fusion macro-F1 {label:<10} {value:.3f}")
    return f"champion: {settings.model_name} v{champion.version} (run {run.info.run_id})"


def call_endpoints(settings: Settings, facts: dict[str, Any]) -> str:
    import base64

    key = settings.torchserve_key("inference")
    base = settings.torchserve_inference
    photo = _sample_media(settings, "image")
    bodies = {
        "embed": {"text": "The mug arrived cracked and the handle fell off."},
        "search": {"query": {"image": base64.b64encode(photo).decode()}, "target": "text", "k": 3},
        "insights": {
            "text": "Oh great, it arrived in pieces. Just perfect.",
            "audio": base64.b64encode(_sample_media(settings, "audio")).decode(),
        },
    }
    keyfile = settings.torchserve_key_path
    read_key = f"import json;print(json.load(open('{keyfile}'))['inference']['key'])"
    console.print(f'    TOKEN=$(python3 -c "{read_key}")')
    for endpoint, body in bodies.items():
        response = requests.post(
            f"{base}/predictions/{endpoint}",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        shown = json.dumps(body)
        if len(shown) > 90:
            shown = shown[:60] + '..."}'
        console.print(
            f'    curl -s {base}/predictions/{endpoint} -H "Authorization: Bearer $TOKEN" '
            f"-H 'Content-Type: application/json' -d '{shown}'"
        )
        console.print(f"      -> HTTP {response.status_code}: {_brief(endpoint, response.json())}")
        if response.status_code != 200:
            raise RuntimeError(f"{endpoint} answered HTTP {response.status_code}")
    return "embed, search and insights answer"


def _sample_media(settings: Settings, field: str) -> bytes:
    """A photo / voice note of the sample dataset, fetched from object storage."""
    from dualmedia.storage import ObjectStore

    store = ObjectStore(settings)
    batch = f"{facts_uri(settings)}/batch-0001"
    for line in store.read_text(f"{batch}/manifest.jsonl").splitlines():
        record = json.loads(line)
        if record.get(field):
            return store.read_bytes(f"{batch}/{record[field]}")
    raise RuntimeError(f"no {field} in the sample dataset")


def facts_uri(settings: Settings) -> str:
    return f"s3://{settings.raw_bucket}/{DATASET}"


def _brief(endpoint: str, answer: dict[str, Any]) -> str:
    if "error" in answer:
        return json.dumps(answer)
    if endpoint == "embed":
        return f"{answer['dim']}-dim {answer['modality']} vector, model v{answer['model_version']}"
    if endpoint == "search":
        hits = "; ".join(
            f"{h['id']} {h['score']:.2f} {str(h.get('text'))[:40]!r}" for h in answer["results"]
        )
        return f"top {len(answer['results'])}: {hits}"
    preds = ", ".join(f"{k}={v['class']}" for k, v in answer["predictions"].items())
    flag = answer["disagreement"]
    return f"{preds}; gates {answer['gates']}; disagreement {flag['flag']} {flag['labels']}"


def feature_lookup(settings: Settings, facts: dict[str, Any]) -> str:
    rows = cli("features", "fb-000001")["items"]
    row = rows[0]
    dims = {k: len(v) for k, v in row.items() if k.endswith("_embedding") and v}
    console.print("    .venv/bin/dualmedia features fb-000001")
    console.print(f"      -> vectors {dims}, predictions {list(row['predictions'] or {})}")
    return f"fb-000001 online (model v{row['model_version']})"


def drift_and_retrain(settings: Settings, facts: dict[str, Any]) -> str:
    gen = cli(
        "generate", facts["dataset_uri"], "--n", "200", "--seed", "1", "--batch", DRIFT_BATCH,
        "--start-index", str(RECORDS), "--image-shift", "0.8", "--audio-noise", "0.5",
    )  # fmt: skip
    console.print(f"    uploaded {gen['n_records']} drifted records as {DRIFT_BATCH}")
    client = AirflowClient(settings)
    _wait_for_dag(client, MONITOR_DAG)
    run = client.trigger(MONITOR_DAG, {"batch": DRIFT_BATCH})
    console.print(f"    drift monitor run: {client.run_url(MONITOR_DAG, run['dag_run_id'])}")
    if follow_dag_run(client, MONITOR_DAG, run["dag_run_id"], timeout=900) != "success":
        raise RuntimeError("the drift monitor failed; see its task log in Airflow")
    verdict = client.xcom(MONITOR_DAG, run["dag_run_id"], "judge_drift")
    facts["drift"] = verdict
    console.print(f"    verdict: {verdict['verdict']}: {'; '.join(verdict['reasons'])}")
    console.print(f"    report:  {verdict['report_uri']}")
    trigger = verdict["trigger"]
    if not trigger.get("triggered"):
        return f"no retraining started ({trigger['why']})"
    console.print(f"    retraining requested: {trigger['request_id']} (a dualmedia-retrain event)")
    retrain = client.run_for_event(TRAINING_DAG, "request_id", trigger["request_id"], 300)
    url = client.run_url(TRAINING_DAG, retrain["dag_run_id"])
    console.print(f"    retraining run: {url}")
    state = follow_dag_run(client, TRAINING_DAG, retrain["dag_run_id"], timeout=3600)
    facts["retraining_run"] = url
    gate = client.xcom(TRAINING_DAG, retrain["dag_run_id"], "gate")
    facts["gate"] = gate
    verdict_text = "promoted" if gate["promoted"] else "not promoted"
    return f"retraining {state}; gate: v{gate['challenger']} {verdict_text} ({gate['reason']})"


STEPS = [
    Step("start the local stack", start_stack, "{home}/logs/<service>.log"),
    Step("generate and upload the sample dataset", upload_sample_dataset, "the error above"),
    Step(
        "train through Airflow (ingest ... deploy)", run_training, "the task log in the Airflow UI"
    ),
    Step("the champion in MLflow", show_model, "{home}/logs/mlflow.log"),
    Step("call the three endpoints", call_endpoints, "{home}/torchserve/logs/model_log.log"),
    Step("read features from Feast", feature_lookup, "{home}/feast/repo"),
    Step("drift: a shifted batch starts retraining", drift_and_retrain, "the Airflow task logs"),
]


def print_summary(settings: Settings, facts: dict[str, Any]) -> None:
    table = Table(title="dualmedia demo: where everything is")
    table.add_column("what", overflow="fold")
    table.add_column("where", overflow="fold")
    for s in facts.get("services", []):
        table.add_row(f"{s.title} ({s.name})", f"{s.url}  [{s.state}]")
    if facts.get("airflow_login"):
        table.add_row("Airflow UI login", facts["airflow_login"])
    rows = {
        "sample dataset": facts.get("dataset_uri"),
        "training run (Airflow)": facts.get("training_run"),
        "MLflow experiment": facts.get("mlflow_experiment"),
        "champion's MLflow run": facts.get("mlflow_run"),
        "endpoints": f"{settings.torchserve_inference}/predictions/{{embed,search,insights}}",
        "TorchServe keys": str(settings.torchserve_key_path),
        "drift reports": str(settings.home_dir / "monitoring" / DATASET / "index.html"),
        "retraining run (Airflow)": facts.get("retraining_run"),
        "logs": str(settings.home_dir / "logs"),
    }
    for what, where in rows.items():
        if where:
            table.add_row(what, where)
    console.print(table)
    console.print(
        "Evidently UI: .venv/bin/evidently ui --workspace .dualmedia/evidently --port 8000"
    )
    console.print("Stop everything with: .venv/bin/dualmedia down")


def main() -> int:
    settings = get_settings()
    facts: dict[str, Any] = {}
    for number, step in enumerate(STEPS, 1):
        console.rule(f"[bold]{number}/{len(STEPS)} {step.title}")
        started = time.monotonic()
        try:
            outcome = step.run(settings, facts)
        except Exception as exc:
            console.print(f"[red]step failed:[/] {step.title}: {exc}")
            console.print(f"look at: {step.log_hint.format(home=settings.home_dir)}")
            print_summary(settings, facts)
            return 1
        console.print(f"[green]done[/] in {time.monotonic() - started:.0f}s: {outcome}")
    print_summary(settings, facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
