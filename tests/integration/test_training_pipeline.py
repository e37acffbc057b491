"""train() from an s3:// snapshot against a real rclone S3 and MLflow server: runs, params,
metrics, inputs, the logged model, checkpoints, evaluate_model and the CLI commands. The
dataset declares all four modalities (half the items have a clip): text, image, audio and
video train, log and predict together with no code of their own here."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import typer
from mlflow import MlflowClient
from safetensors.torch import load_file
from typer.testing import CliRunner

from dualmedia import settings as settings_module
from dualmedia.contract import MANIFEST_FILE
from dualmedia.settings import Settings
from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore, S3Uri
from synthetic.fixtures import synthetic_snapshot
from tests.conftest import make_settings
from training.commands import register
from training.config import REPO_CONFIGS, load_train_config
from training.evaluate import evaluate_model
from training.train import train

pytestmark = pytest.mark.integration
TINY = REPO_CONFIGS / "tiny.yaml"


@pytest.fixture(scope="module")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_settings(tmp_path_factory.mktemp("train-stack"))
    stack = Stack(settings, only=["s3", "mlflow"])
    stack.up()
    yield settings
    stack.down()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def snapshot_uri(stack_settings: Settings, data_dir: Path) -> str:
    store = ObjectStore(stack_settings)
    return synthetic_snapshot(
        store, stack_settings.lake_bucket, data_dir, 80, seed=1, video_rate=0.5
    )


@pytest.fixture(scope="module")
def trained(stack_settings: Settings, snapshot_uri: str) -> dict[str, Any]:
    return train(snapshot_uri, load_train_config(TINY), stack_settings, progress=False)


@pytest.fixture(scope="module")
def client(stack_settings: Settings) -> MlflowClient:
    mlflow.set_tracking_uri(stack_settings.mlflow_uri)
    return MlflowClient(stack_settings.mlflow_uri)


def test_summary_names_runs_model_and_metrics(trained: dict[str, Any], snapshot_uri: str) -> None:
    assert trained["snapshot_uri"] == snapshot_uri
    assert set(trained["child_run_ids"]) == {"alignment", "fusion"}
    assert trained["model_uri"].startswith("models:/")
    assert trained["stages"]["alignment"]["global_step"] > 0
    assert trained["stages"]["fusion"]["resumed_from_step"] == 0
    assert "test/fusion/mismatch/macro_f1" in trained["metrics"]
    assert "test/retrieval/audio_to_image/R_at_10" in trained["metrics"]
    assert "test/retrieval/video_to_text/R_at_10" in trained["metrics"]
    json.dumps(trained)  # JSON-able


def test_parent_run_has_params_tags_inputs_and_system_metrics(
    trained: dict[str, Any], client: MlflowClient, stack_settings: Settings, snapshot_uri: str
) -> None:
    run = client.get_run(trained["parent_run_id"])
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == stack_settings.mlflow_experiment
    params = run.data.params
    assert params["fusion.modality_dropout"] == "0.2"
    assert params["model.encoders.image.patch_size"] == "16"
    assert params["snapshot.uri"] == snapshot_uri
    secret = stack_settings.s3_secret_key.get_secret_value()
    assert not any(secret in value for value in params.values())
    assert run.data.tags["dualmedia.snapshot_id"] == trained["snapshot_id"]
    commit = run.data.tags.get("mlflow.source.git.commit")
    assert commit is None or len(commit) == 40
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {f"customer-feedback-{s}" for s in ("train", "val", "test")}
    test_input = inputs["customer-feedback-test"]
    assert snapshot_uri in test_input.dataset.source
    tags = {t.key: t.value for t in test_input.tags}
    assert tags["records"] == str(trained["counts"]["test"])
    assert any(k.startswith("system/") for k in run.data.metrics), run.data.metrics.keys()


def test_mlflow_shows_the_experiment_as_training_and_links_run_model_and_version(
    trained: dict[str, Any], client: MlflowClient, stack_settings: Settings
) -> None:
    """What MLflow's UI reads: the experiment kind (model-training view, not GenAI), the
    logged model on the parent run, the registered version pointing back at that run."""
    from training.registry import register

    parent = client.get_run(trained["parent_run_id"])
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    model_id = trained["model_uri"].removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == trained["parent_run_id"]  # "Logged models" of the parent
    registered = register(trained, stack_settings, name="linked-model")
    version = client.get_model_version("linked-model", registered["version"])
    assert version.run_id == trained["parent_run_id"]  # "Registered models" of the parent
    run_link = f"#/experiments/{experiment.experiment_id}/runs/{trained['parent_run_id']}?"
    assert run_link in version.description
    assert trained["snapshot_uri"] in version.description
    assert "monitoring/customer-feedback/index.html" in version.description


def test_stage_runs_are_nested_with_step_and_epoch_metrics(
    trained: dict[str, Any], client: MlflowClient
) -> None:
    for stage, run_id in trained["child_run_ids"].items():
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == trained["parent_run_id"]
        assert run.info.run_name == stage
        steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
        assert len(steps) >= 2 and steps == sorted(steps)
    fusion = client.get_run(trained["child_run_ids"]["fusion"]).data.metrics
    assert "val/mismatch/macro_f1" in fusion
    assert "test/ablation/only_audio/damaged/macro_f1" in fusion
    alignment = client.get_run(trained["child_run_ids"]["alignment"]).data.metrics
    assert "val/recall_at_1_mean" in alignment and "train/logit_scale" in alignment
    artifacts = {a.path for a in client.list_artifacts(trained["child_run_ids"]["fusion"], "plots")}
    assert artifacts == {"plots/confusion_matrices.png", "plots/retrieval_examples.png"}


def test_model_is_logged_with_signature_and_safetensors_weights(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    info = mlflow.models.get_model_info(trained["model_uri"])
    assert info.signature is not None
    assert "text" in info.signature.inputs.input_names()
    assert "gate_audio" in info.signature.outputs.input_names()
    local = Path(mlflow.artifacts.download_artifacts(trained["model_uri"], dst_path=str(tmp_path)))
    weights = next(local.rglob("weights.safetensors"))
    description = json.loads(next(local.rglob("model.json")).read_text())
    assert set(description["labels"]) == {"sentiment", "category", "damaged", "mismatch"}
    assert description["media"]["audio"]["features"] == "whisper"
    assert description["media"]["audio"]["n_mels"] == 80
    assert description["bounds"]["audio"]["min_duration_s"] == 0.1
    assert "fusion.gate.weight" in load_file(str(weights))
    assert any(local.rglob("input_example.json"))
    # The model carries inference code only: the registry and the model library.
    code = next(p for p in local.rglob("code") if p.is_dir())
    shipped = {str(p.relative_to(code)) for p in code.rglob("*.py")}
    assert "training/models/scoring.py" in shipped and "dualmedia/modalities/audio.py" in shipped
    unwanted = ("synthetic/", "dualmedia/stack/", "training/train.py", "training/lit.py")
    assert not [p for p in shipped if p.startswith(unwanted)], sorted(shipped)


def _request_from_raw_files(data_dir: Path, n: int = 6) -> pd.DataFrame:
    """Rows as an application would send them: text and base64 of the original files."""
    batch = next(data_dir.glob("synthetic-80-1*")) / "batch-0001"
    rows = []
    for line in (batch / MANIFEST_FILE).read_text().splitlines()[:n]:
        record = json.loads(line)
        row: dict[str, Any] = {"text": record["text"]}
        for modality in ("image", "audio", "video"):
            if record.get(modality):
                row[modality] = base64.b64encode((batch / record[modality]).read_bytes()).decode()
        rows.append(row)
    return pd.DataFrame(rows)


def test_pyfunc_predicts_from_raw_image_audio_and_video_files(
    trained: dict[str, Any], data_dir: Path
) -> None:
    model = mlflow.pyfunc.load_model(trained["model_uri"])
    request = _request_from_raw_files(data_dir)
    assert request["video"].notna().any() and request["video"].isna().any()
    out = model.predict(request)
    assert len(out) == len(request)
    assert set(out["category"]) <= {"mug", "shoe", "lamp", "backpack", "headphones"}
    gates = out[["gate_text", "gate_image", "gate_audio", "gate_video"]].to_numpy()
    assert np.allclose(gates.sum(axis=1), 1.0)
    # A row without a clip gives video no weight; a row with one does.
    assert ((out["gate_video"] > 0) == request["video"].notna().to_numpy()).all()


def test_checkpoints_and_run_state_are_in_object_storage(
    trained: dict[str, Any], stack_settings: Settings
) -> None:
    store = ObjectStore(stack_settings)
    root = S3Uri.parse(trained["checkpoint_uri"])
    keys = {o.key.removeprefix(root.prefix) for o in store.list(root)}
    assert {"run.json", "alignment/final.ckpt", "fusion/final.ckpt", "fusion/last.ckpt"} <= keys
    state = json.loads(store.read_text(root.join("run.json")))
    assert state["finished"] and state["parent_run_id"] == trained["parent_run_id"]


def test_evaluate_model_reproduces_the_training_evaluation(
    trained: dict[str, Any], snapshot_uri: str, stack_settings: Settings
) -> None:
    result = evaluate_model(trained["model_uri"], snapshot_uri, stack_settings)
    assert result["snapshot_id"] == trained["snapshot_id"]
    for name, value in trained["metrics"].items():
        assert result["metrics"][name] == pytest.approx(value, abs=1e-3), name


@pytest.fixture
def cli(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> typer.Typer:
    for key, value in stack_settings.child_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no developer .env
    settings_module.get_settings.cache_clear()
    app = typer.Typer()
    register(app)
    yield app
    settings_module.get_settings.cache_clear()


def test_cli_train_resume_of_a_finished_run_reuses_it(
    cli: typer.Typer, trained: dict[str, Any], snapshot_uri: str
) -> None:
    result = CliRunner().invoke(
        cli, ["train", "--snapshot", snapshot_uri, "--config", str(TINY), "--resume", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["reused"] is True
    assert summary["parent_run_id"] == trained["parent_run_id"]


def test_cli_evaluate_prints_json(
    cli: typer.Typer, trained: dict[str, Any], snapshot_uri: str
) -> None:
    result = CliRunner().invoke(
        cli, ["evaluate", "--model", trained["model_uri"], "--snapshot", snapshot_uri, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["test/fusion/damaged/macro_f1"] >= 0


def test_commands_pick_the_registered_model_or_say_which_to_choose(
    stack_settings: Settings, client: MlflowClient
) -> None:
    """No silent fall-back to the demo's model name (bring-your-own data)."""
    from training.registry import RegistryError, model_name

    names = {m.name for m in client.search_registered_models()}
    for name in names:  # a clean registry for this test (other tests register theirs)
        client.delete_registered_model(name)
    client.create_registered_model("shop-reviews")
    assert model_name(None, stack_settings) == "shop-reviews"  # the only one there
    assert model_name("given", stack_settings) == "given"
    client.create_registered_model("shop-photos")
    with pytest.raises(RegistryError) as error:
        model_name(None, stack_settings)
    message = str(error.value)
    assert "customer-feedback" in message and "shop-photos, shop-reviews" in message
    chosen = stack_settings.model_copy(update={"model_name": "shop-photos"})
    assert model_name(None, chosen) == "shop-photos"  # DUALMEDIA_MODEL_NAME wins
