"""The MLflow model registry and the promotion gate.

Every trained model becomes a version of the registered model named after its
dataset, with the alias `challenger` and tags for its snapshot, git commit and
evaluation metrics. The gate evaluates challenger and champion on the same snapshot
(the challenger's) and moves `champion` only when the challenger is better by the
configured margin; otherwise the reason is recorded as a tag. Rollback moves
`champion` back to the version it replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from dualmedia.settings import Settings

CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_RUN = "dualmedia.run_id"
TAG_SNAPSHOT = "dualmedia.snapshot_id"
TAG_SNAPSHOT_URI = "dualmedia.snapshot_uri"
TAG_COMMIT = "dualmedia.git_commit"
TAG_DECISION = "dualmedia.gate"
TAG_PREVIOUS = "dualmedia.previous_champion"


class GateConfig(BaseModel):
    """What `better` means: the mean of the fusion macro-F1 over every label must rise
    by `margin`, and no single label may fall by more than `max_label_drop`."""

    model_config = ConfigDict(extra="forbid")
    margin: float = 0.0
    max_label_drop: float = 0.05
    split: str = "test"


class RegistryError(RuntimeError):
    """A registry operation is impossible (e.g. no champion to roll back to)."""


def _client(settings: Settings) -> Any:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_uri)
    return MlflowClient(tracking_uri=settings.mlflow_uri)


def fusion_f1(metrics: dict[str, float], split: str = "test") -> dict[str, float]:
    """label -> fusion macro-F1 from flat metric names like test/fusion/damaged/macro_f1."""
    prefix = f"{split}/fusion/"
    return {
        k[len(prefix) : -len("/macro_f1")]: v
        for k, v in metrics.items()
        if k.startswith(prefix) and k.endswith("/macro_f1")
    }


def logged_metrics(tags: dict[str, str]) -> dict[str, float]:
    """The evaluation a version's training run logged, from its `metric.*` tags."""
    return {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}


def register(train_summary: dict[str, Any], settings: Settings, name: str) -> dict[str, Any]:
    """Register a training run's model as a new version with alias `challenger`.
    Idempotent: registering the same run again returns the existing version."""
    import mlflow

    client = _client(settings)
    run_id = train_summary["parent_run_id"]
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="dualmedia fused multimodal model")
    existing = client.search_model_versions(f"name='{name}' and tag.`{TAG_RUN}`='{run_id}'")
    if existing:
        version = existing[0]
    else:
        run = client.get_run(run_id)
        commit = run.data.tags.get("mlflow.source.git.commit", "unknown")
        tags = {
            TAG_RUN: run_id,
            TAG_SNAPSHOT: train_summary["snapshot_id"],
            TAG_SNAPSHOT_URI: train_summary["snapshot_uri"],
            TAG_COMMIT: commit,
        }
        tags.update({f"metric.{k}": f"{v:.4f}" for k, v in train_summary["metrics"].items()})
        # register_model resolves MLflow 3's logged-model URIs (models:/m-...).
        version = mlflow.register_model(
            train_summary["model_uri"], name, tags=tags, await_registration_for=60
        )
        client.update_model_version(
            name, version.version, description=version_description(run, train_summary, settings)
        )
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return {
        "registered_model": name,
        "version": str(version.version),
        "alias": CHALLENGER,
        "model_uri": f"models:/{name}/{version.version}",
        "run_id": run_id,
    }


def version_description(run: Any, train_summary: dict[str, Any], settings: Settings) -> str:
    """What a registered version's page says (Markdown): the run that trained it, the
    snapshot and its Data Docs, and where the drift reports of the dataset are."""
    from monitoring.monitor import monitoring_prefix
    from training.tracking import ui_route

    snapshot = train_summary["snapshot_uri"]
    dataset = run.data.tags.get("dualmedia.dataset", "")
    link = ui_route(run.info.experiment_id, run.info.run_id)
    drift = monitoring_prefix(settings, dataset).join("index.html")
    return (
        f"Trained by run [{run.info.run_name}]({link}) on snapshot `{snapshot}` "
        f"(Data Docs: `{snapshot}/data_docs/index.html`).\n\n"
        f"Drift reports of `{dataset}`: `{drift}` (each is also attached to the champion's "
        "run under `drift/`)."
    )


def _version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    import mlflow

    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def gate(name: str, settings: Settings, config: GateConfig | None = None) -> dict[str, Any]:
    """Compare challenger and champion on the challenger's snapshot; promote if better."""
    from training.evaluate import evaluate_model

    config = config or GateConfig()
    client = _client(settings)
    challenger = _version_by_alias(client, name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"{name}: no version has the alias {CHALLENGER!r}; register one first")
    champion = _version_by_alias(client, name, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        return {
            "promoted": False,
            "challenger": challenger.version,
            "champion": champion.version,
            "champion_before": champion.version,
            "reason": "the challenger is already the champion",
            "registered_model": name,
        }
    if champion is None:
        decision = {"promoted": True, "reason": "first model: no champion yet"}
    else:
        snapshot_uri = challenger.tags[TAG_SNAPSHOT_URI]
        # The challenger was evaluated on this snapshot's split when it was trained (its
        # version's metric.* tags): only the champion needs evaluating here.
        new = fusion_f1(logged_metrics(challenger.tags), config.split)
        if not new:  # trained without that split: evaluate it now
            new = fusion_f1(
                evaluate_model(
                    f"models:/{name}/{challenger.version}", snapshot_uri, settings, config.split
                )["metrics"],
                config.split,
            )
        old = fusion_f1(
            evaluate_model(
                f"models:/{name}/{champion.version}", snapshot_uri, settings, config.split
            )["metrics"],
            config.split,
        )
        decision = compare(new, old, config)
        decision["challenger_f1"] = new
        decision["champion_f1"] = old
    decision.update(
        {
            "challenger": challenger.version,
            "champion_before": champion.version if champion else None,
        }
    )
    if decision["promoted"]:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        if champion is not None:
            client.set_model_version_tag(name, challenger.version, TAG_PREVIOUS, champion.version)
    client.set_model_version_tag(name, challenger.version, TAG_DECISION, json.dumps(decision))
    decision["champion"] = (
        challenger.version if decision["promoted"] else (champion.version if champion else None)
    )
    decision["registered_model"] = name
    return decision


def compare(new: dict[str, float], old: dict[str, float], config: GateConfig) -> dict[str, Any]:
    """The gate's rule on two label -> macro-F1 maps (pure, unit-tested)."""
    labels = sorted(set(new) & set(old))
    if not labels:
        return {"promoted": False, "reason": "no common label to compare"}
    mean_new = sum(new[x] for x in labels) / len(labels)
    mean_old = sum(old[x] for x in labels) / len(labels)
    drops = {
        x: round(old[x] - new[x], 4) for x in labels if old[x] - new[x] > config.max_label_drop
    }
    if drops:
        return {
            "promoted": False,
            "reason": f"labels fell by more than {config.max_label_drop}: {drops}",
            "mean_f1": {"challenger": round(mean_new, 4), "champion": round(mean_old, 4)},
        }
    if mean_new <= mean_old + config.margin:
        return {
            "promoted": False,
            "reason": (
                f"mean fusion macro-F1 {mean_new:.4f} is not above the champion's "
                f"{mean_old:.4f} + margin {config.margin}"
            ),
            "mean_f1": {"challenger": round(mean_new, 4), "champion": round(mean_old, 4)},
        }
    return {
        "promoted": True,
        "reason": f"mean fusion macro-F1 {mean_new:.4f} > {mean_old:.4f} + margin {config.margin}",
        "mean_f1": {"challenger": round(mean_new, 4), "champion": round(mean_old, 4)},
    }


def rollback(name: str, settings: Settings) -> dict[str, Any]:
    """Move `champion` back to the version the current champion replaced."""
    client = _client(settings)
    champion = _version_by_alias(client, name, CHAMPION)
    if champion is None:
        raise RegistryError(f"{name}: no champion to roll back from")
    previous = champion.tags.get(TAG_PREVIOUS)
    if not previous:
        raise RegistryError(f"{name}: champion v{champion.version} replaced no earlier version")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(
        name, champion.version, TAG_DECISION, json.dumps({"rolled_back": True})
    )
    return {"champion": previous, "rolled_back_from": champion.version}


def model_name(name: str | None, settings: Settings) -> str:
    """The registered model a command acts on: `name` when given; else
    DUALMEDIA_MODEL_NAME when set; else the only registered model (training registers each
    dataset's runs under the dataset's name); else the default name. A default that is
    not registered while others are is an error naming them, not a silent fall-back."""
    if name:
        return name
    if "model_name" in settings.model_fields_set:
        return settings.model_name
    registered = sorted(m.name for m in _client(settings).search_registered_models())
    if len(registered) == 1:
        return registered[0]
    if registered and settings.model_name not in registered:
        raise RegistryError(
            f"which model? {settings.model_name!r} (the default) is not registered; "
            f"registered: {', '.join(registered)}. Give --model or DUALMEDIA_MODEL_NAME."
        )
    return settings.model_name


def resolve_version(name: str | None, version: str | None, settings: Settings) -> tuple[str, str]:
    """(model name, version) a command acts on: the given ones, else `model_name`'s choice
    and its champion; RegistryError when there is no champion yet."""
    name = model_name(name, settings)
    version = version or champion_version(name, settings)
    if version is None:
        raise RegistryError(f"{name}: no champion yet; give --version or run `dualmedia promote`")
    return name, version


def champion_version(name: str, settings: Settings) -> str | None:
    version = _version_by_alias(_client(settings), name, CHAMPION)
    return None if version is None else str(version.version)


def load_registered_model(
    name: str, version: str, settings: Settings
) -> tuple[Any, dict[str, str]]:
    """The FusedModel of a registered version (eval mode, CPU) and the version's tags."""
    import mlflow

    from training.models.pyfunc import FusedModelPyfunc
    from training.tracking import quiet_mlflow

    quiet_mlflow()
    client = _client(settings)
    tags = dict(client.get_model_version(name, version).tags)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    if not isinstance(loaded, FusedModelPyfunc):
        raise RegistryError(f"models:/{name}/{version} is not a dualmedia fused model")
    return loaded.model, tags


def download_model_files(name: str, version: str, settings: Settings, dest: Path) -> Path:
    """weights.safetensors + model.json of a registered version, copied into `dest`."""
    import shutil

    import mlflow

    _client(settings)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
    dest.mkdir(parents=True, exist_ok=True)
    for filename in ("weights.safetensors", "model.json"):
        found = sorted(local.rglob(filename))
        if not found:
            raise RegistryError(f"models:/{name}/{version} has no {filename}")
        shutil.copy(found[0], dest / filename)
    return dest
