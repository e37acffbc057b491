"""The web UIs as a person uses them: Airflow's trigger form and MLflow's run pages.

A private stack (object storage, MLflow, Airflow with the repository's dags/) on free
ports; Chromium headless through Playwright. Screenshots: test-artifacts/browser/.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from dualmedia.airflow_api import AirflowClient
from dualmedia.settings import Settings
from dualmedia.stack import Stack
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

DAG_ID = "multimodal_training"


@pytest.fixture(scope="module")
def stack(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """S3 + MLflow + Airflow for this module; new DAGs start paused. Needs `browser`
    first, so that a machine without Chromium skips before any service starts."""
    s = make_settings(tmp_path_factory.mktemp("browser") / "home", airflow_pause_new_dags=True)
    services = Stack(s, only=["s3", "mlflow", "airflow"])
    try:
        services.up()
        yield s
    finally:
        services.down()


def shot(page: Page, artifacts: Path, name: str) -> None:
    page.screenshot(path=artifacts / f"{name}.png", full_page=True)


def wait_for(
    what: str | Callable[[], str], probe: Any, timeout: float = 180.0, every: float = 2.0
) -> Any:
    """Poll `probe()` until it returns something truthy; fail naming `what` (or its call)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {said}")
        time.sleep(every)


def dag_info(client: AirflowClient) -> dict[str, Any] | None:
    return next((d for d in client.list_dags() if d["dag_id"] == DAG_ID), None)


def test_trigger_training_from_the_airflow_ui(stack: Settings, page: Page, artifacts: Path) -> None:
    s = stack
    client = AirflowClient(s)
    # The dag processor parses dags/ after the stack is healthy: wait for the DAG.
    dag = wait_for(
        lambda: f"{DAG_ID} to be parsed (import errors: {client.import_errors()})",
        lambda: dag_info(client),
    )
    assert dag["is_paused"], "airflow_pause_new_dags should have created the DAG paused"
    dataset_uri = f"s3://{s.raw_bucket}/browser-test-{uuid.uuid4().hex[:8]}"  # does not exist

    # Log in through SimpleAuthManager's form.
    page.goto(s.airflow_base_url)
    expect(page.get_by_text("Sign into Airflow")).to_be_visible()
    page.get_by_label("Username").fill(s.airflow_username)
    page.get_by_label("Password").fill(s.airflow_admin_password())
    shot(page, artifacts, "01-airflow-login")
    page.get_by_role("button", name="Sign in").click()

    # Dags list → the training DAG.
    page.get_by_role("link", name="Dags", exact=True).click()
    page.get_by_role("link", name=DAG_ID, exact=True).click()
    expect(page.get_by_role("heading", name=DAG_ID)).to_be_visible()

    # Unpause with the UI toggle next to the DAG's name (Airflow's own test id).
    toggle = page.get_by_test_id("toggle-pause")
    expect(toggle).to_have_attribute("data-state", "unchecked")
    toggle.click()
    expect(toggle).to_have_attribute("data-state", "checked")
    wait_for("the toggle to unpause the DAG", lambda: not dag_info(client)["is_paused"], 60)

    # The trigger form: change the dataset and the epochs.
    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")
    expect(form.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
    # Airflow's field label points at another id, so find the field by its description.
    dataset = (
        form.get_by_role("group")
        .filter(has_text="Dataset prefix in object storage")
        .get_by_role("textbox")
    )
    expect(dataset).to_have_value(re.compile(r"^s3://.+/customer-feedback$"))
    dataset.fill(dataset_uri)
    epochs = form.get_by_label("Epochs")
    epochs.fill("3")
    epochs.press("Tab")
    expect(dataset).to_have_value(dataset_uri)
    dataset.scroll_into_view_if_needed()
    shot(page, artifacts, "02-airflow-trigger-form")
    # The form writes the run's conf: check it before submitting.
    form.get_by_role("button", name="Advanced Options").click()
    expect(form.get_by_text(f'"dataset_uri": "{dataset_uri}"')).to_be_visible()
    expect(form.get_by_text('"epochs": 3')).to_be_visible()
    form.get_by_role("button", name="Trigger", exact=True).click()
    expect(form).to_be_hidden()

    # The REST API has a run with exactly the conf the form set.
    def triggered() -> dict[str, Any] | None:
        runs = client.dag_runs(DAG_ID)
        return next((r for r in runs if r["conf"].get("dataset_uri") == dataset_uri), None)

    run = wait_for(f"a run of {DAG_ID} with dataset_uri={dataset_uri}", triggered, 60)
    assert run["run_type"] == "manual"
    assert run["conf"]["epochs"] == 3
    run_id = run["dag_run_id"]

    # The UI opens the new run; then it is listed on the DAG's Runs tab.
    expect(page.get_by_text(run_id).first).to_be_visible()
    # The missing dataset fails the first task at once (no retry): wait for the end, so
    # that the stack stops with no task running.
    finished = wait_for(
        f"run {run_id} to finish",
        lambda: (r := client.dag_run(DAG_ID, run_id))["state"] in ("success", "failed") and r,
        240,
    )
    assert finished["state"] == "failed", finished
    page.get_by_role("link", name=DAG_ID, exact=True).first.click()
    page.get_by_role("link", name="Runs", exact=True).click()
    row = page.get_by_role("row").filter(has_text=run_id)
    expect(row).to_be_visible()
    expect(row).to_contain_text("Failed")
    expect(row).to_contain_text("Manual")
    shot(page, artifacts, "03-airflow-run-listed")


def test_find_the_run_in_the_mlflow_ui(stack: Settings, page: Page, artifacts: Path) -> None:
    import mlflow

    s = stack
    client = mlflow.MlflowClient(tracking_uri=s.mlflow_uri)
    experiment_id = client.create_experiment("browser-test")
    run_name = f"browser-run-{uuid.uuid4().hex[:8]}"
    run = client.create_run(experiment_id, run_name=run_name)
    client.log_metric(run.info.run_id, "browser_accuracy", 0.8125)
    client.set_terminated(run.info.run_id)

    page.goto(s.mlflow_uri)
    # MLflow 3 opens on the GenAI view; runs with metrics live under "Model training".
    page.get_by_role("button", name="Model training", exact=True).click()
    page.get_by_role("link", name="Experiments", exact=True).click()
    page.get_by_role("link", name="browser-test", exact=True).click()
    link = page.get_by_role("link", name=run_name, exact=True)
    expect(link).to_be_visible()
    shot(page, artifacts, "04-mlflow-experiment")

    link.click()
    expect(page).to_have_url(re.compile(rf"#/experiments/{experiment_id}/runs/{run.info.run_id}"))
    metric = page.get_by_role("row").filter(has_text="browser_accuracy")
    expect(metric).to_be_visible()
    expect(metric).to_contain_text("0.8125")
    metric.scroll_into_view_if_needed()  # the run page scrolls inside a panel
    shot(page, artifacts, "05-mlflow-run")


def test_a_training_run_as_mlflow_shows_it(
    stack: Settings, page: Page, artifacts: Path, tmp_path: Path
) -> None:
    """A real (tiny) training: its experiment opens in MLflow's model-training view with the
    run listed, the run page names its logged model and registered version, and the
    version's page links back to the run."""
    from dualmedia.storage import ObjectStore
    from synthetic.fixtures import synthetic_snapshot
    from training.config import REPO_CONFIGS, load_train_config
    from training.registry import register
    from training.train import train

    s = stack
    snapshot = synthetic_snapshot(ObjectStore(s), s.lake_bucket, tmp_path, 60, seed=4)
    trained = train(snapshot, load_train_config(REPO_CONFIGS / "tiny.yaml"), s, progress=False)
    version = register(trained, s, name="browser-model")["version"]
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=s.mlflow_uri).get_run(trained["parent_run_id"])
    experiment_id = run.info.experiment_id

    from training.tracking import ui_route

    page.goto(f"{s.mlflow_uri}/{ui_route(experiment_id)}")  # as the demo and versions link it
    link = page.get_by_role("link", name=run.info.run_name, exact=True)
    expect(link).to_be_visible()  # listed as a training run, not under "Evaluation runs"
    shot(page, artifacts, "06-mlflow-training-experiment")

    # The run as the demo and the version's description link it (a click on the list
    # above opens MLflow's GenAI layout of the run page, which leaves logged models out).
    page.goto(f"{s.mlflow_uri}/{ui_route(experiment_id, run.info.run_id)}")
    expect(page.get_by_role("link", name="browser-model", exact=True).first).to_be_visible()
    model_id = trained["model_uri"].removeprefix("models:/")
    expect(page.locator(f"a[href*='{model_id}']").first).to_be_visible()
    shot(page, artifacts, "07-mlflow-parent-run")

    page.goto(f"{s.mlflow_uri}/#/models/browser-model/versions/{version}")
    back = page.get_by_role("link", name=run.info.run_name).first
    expect(back).to_be_visible()
    shot(page, artifacts, "08-mlflow-model-version")
