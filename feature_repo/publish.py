"""Publish a model version's embeddings and predictions to the feature store.

1. Score every item of the model's snapshot: one embedding per modality (items that
   have it), the fused embedding, and the fused predictions.
2. Write them as Parquet to the offline store in object storage, one committed prefix
   per model version: `s3://<lake>/features/<dataset>/v<version>/` (idempotent: a
   version already published is not scored again, and keeps its timestamp).
3. Deploy the repository (definitions + the profile's feature_store.yaml) to
   `<home>/feast/repo`, gather every published version there, `apply`, and
   materialise to the online store, so `get_online_features` returns the vectors.
4. Build the search catalogue from the same Parquet files (`published_vectors`) and
   publish it to object storage (serving/search_store.py), so search results and the
   feature store never disagree.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import string
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dualmedia import modalities
from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore, S3Uri

REPO_SOURCE = Path(__file__).resolve().parent
FUSED_VIEW = "fused_embedding"
VIEWS = (*(m.feast_view for m in modalities.specs()), FUSED_VIEW)
PREDICTIONS_VIEW = "item_predictions"


def features_prefix(settings: Settings, dataset: str, version: str) -> S3Uri:
    return S3Uri(settings.lake_bucket, f"features/{dataset}/v{version}")


def repo_dir(settings: Settings) -> Path:
    return settings.home_dir / "feast" / "repo"


# ---- scoring --------------------------------------------------------------------------------
def score_snapshot(model: Any, arrays: Any, version: str, at: datetime) -> dict[str, pd.DataFrame]:
    """Rows of every feature view for a snapshot's items, scored by `model` through the one
    scoring path (embeddings, the fused embedding and decoded predictions come from it)."""
    from training.models.scoring import decode_predictions, score_arrays

    scores = score_arrays(model, arrays)
    ids = list(scores.ids)
    frames: dict[str, pd.DataFrame] = {}
    for m in model.modalities:
        rows = scores.present[m]
        view = modalities.get(m).feast_view
        frames[view] = pd.DataFrame(
            {
                "item_id": [i for i, keep in zip(ids, rows, strict=True) if keep],
                view: list(scores.embeddings[m][rows].astype(np.float32)),
            }
        )
    frames[FUSED_VIEW] = pd.DataFrame({"item_id": ids, FUSED_VIEW: list(scores.fused)})
    predictions = [
        json.dumps(decode_predictions(model.classes, scores.probabilities, i), sort_keys=True)
        for i in range(len(ids))
    ]
    frames[PREDICTIONS_VIEW] = pd.DataFrame({"item_id": ids, "predictions": predictions})
    for frame in frames.values():
        frame["event_timestamp"] = pd.Timestamp(at)
        frame["model_version"] = version
    return frames


# ---- the offline store in object storage -----------------------------------------------------
def write_offline(
    store: ObjectStore, prefix: S3Uri, frames: dict[str, pd.DataFrame], metadata: dict[str, Any]
) -> None:
    with tempfile.TemporaryDirectory(prefix="dualmedia-features-") as tmp:
        for view, frame in frames.items():
            frame.to_parquet(Path(tmp) / f"{view}.parquet", index=False)
        store.publish_dir(Path(tmp), prefix, metadata=metadata)


def read_offline(store: ObjectStore, prefix: S3Uri, view: str) -> pd.DataFrame:
    data = store.read_bytes(prefix.join(f"{view}.parquet"))
    return pq.read_table(io.BytesIO(data)).to_pandas()


def published_vectors(settings: Settings, dataset: str, version: str) -> dict[str, Any]:
    """What a version published: per target (each modality, `fused`) ids and vectors,
    and each item's predicted class per label. The serving catalogue is built from
    exactly these."""
    store = ObjectStore(settings)
    prefix = features_prefix(settings, dataset, version)
    store.committed_manifest(prefix)  # refuses an unpublished or half-written version
    frames = {}
    for view in (*VIEWS, PREDICTIONS_VIEW):
        try:
            frames[view] = read_offline(store, prefix, view)
        except Exception:  # a model without that modality published no such view
            continue
    return _vectors_of(frames)


def _vectors_of(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Feature-view frames as the search catalogue takes them: per target ids and vectors,
    and each item's predicted class per label."""
    from serving.catalogue import FUSED

    ids: dict[str, list[str]] = {}
    vectors: dict[str, np.ndarray] = {}
    views = [(spec.name, spec.feast_view) for spec in modalities.specs()]
    for target, view in [*views, (FUSED, FUSED_VIEW)]:
        if view in frames and len(frames[view]):
            ids[target] = frames[view]["item_id"].tolist()
            vectors[target] = np.stack(frames[view][view].to_numpy()).astype(np.float32)
    frame = frames[PREDICTIONS_VIEW]
    predicted = {
        item_id: {label: p["class"] for label, p in json.loads(raw).items()}
        for item_id, raw in zip(frame["item_id"], frame["predictions"], strict=True)
    }
    return {"ids": ids, "vectors": vectors, "predicted": predicted}


# ---- the Feast repository -------------------------------------------------------------------
def deploy_repo(settings: Settings) -> Path:
    """Copy the declarative repository to the state folder with the profile's YAML.

    Production: the SQL registry's database is created when missing (idempotent), and
    the rendered YAML is owner-only since it holds the connection strings."""
    target = repo_dir(settings)
    (target / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_SOURCE / "definitions.py", target / "definitions.py")
    production = settings.feast_backend == "production"
    name = "feature_store.production.yaml" if production else "feature_store.yaml"
    template = string.Template((REPO_SOURCE / name).read_text(encoding="utf-8"))
    values = {"project": settings.feast_project}
    if production:
        from dualmedia.stack.postgres import ensure_database

        ensure_database(settings, settings.postgres_feast_db)
        registry = settings.postgres_database_url(settings.postgres_feast_db, "postgresql+psycopg2")
        # JSON strings are YAML strings: any character of a password stays intact.
        values["registry"] = json.dumps(registry)
        values["redis"] = json.dumps(settings.feast_redis.get_secret_value())
    path = target / "feature_store.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(template.substitute(values))
    path.chmod(0o600)  # a file written by an older version may have been readable by all
    return target


def feature_store(settings: Settings) -> Any:
    from feast import FeatureStore

    return FeatureStore(repo_path=str(deploy_repo(settings)))


def feast_objects() -> list[Any]:
    """Fresh Feast objects from the declarative repository.

    Fresh each call: Feast changes the objects it applies and materialises (their
    materialisation intervals, state, version), so objects reused from an earlier
    apply in the same process carry another store's history; after a local-profile
    publish, the Redis store's materialisation then wrote nothing readable."""
    import importlib

    from feature_repo import definitions

    d = importlib.reload(definitions)
    views = [getattr(d, view) for view in VIEWS]
    return [d.item, *views, d.item_predictions]


def _gather_offline(
    settings: Settings, dataset: str, target: Path, current: str
) -> tuple[datetime, datetime]:
    """Every published version of the dataset, one Parquet file per view in the repo.

    The version being published is stamped with the time of this call: the online store
    keeps each item's latest row, so the version published last (the champion, or the
    one rolled back to) is the one online, whatever order the versions were scored in."""
    now = pd.Timestamp(datetime.now(UTC).replace(microsecond=0))
    store = ObjectStore(settings)
    base = S3Uri(settings.lake_bucket, f"features/{dataset}")
    versions = [v for v in store.list_prefixes(base) if store.is_committed(base.join(v))]
    stamps = []
    for view in (*VIEWS, PREDICTIONS_VIEW):
        parts = []
        for version in versions:
            try:
                part = read_offline(store, base.join(version), view)
            except Exception:
                continue
            if version == f"v{current}":
                part["event_timestamp"] = now
            parts.append(part)
        path = target / "data" / f"{view}.parquet"
        if parts:
            frame = pd.concat(parts, ignore_index=True)
            stamps += [frame["event_timestamp"].min(), frame["event_timestamp"].max()]
            frame.to_parquet(path, index=False)
        else:  # a modality the dataset does not have: the view exists, with no rows
            _empty_embedding_table(view).to_pandas().to_parquet(path, index=False)
    return min(stamps).to_pydatetime(), max(stamps).to_pydatetime()


def _empty_embedding_table(view: str) -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("item_id", pa.string()),
            (view, pa.list_(pa.float32())),
            ("model_version", pa.string()),
            ("event_timestamp", pa.timestamp("ns", tz="UTC")),
        ]
    )
    return schema.empty_table()


# ---- the step -------------------------------------------------------------------------------
def publish(name: str, version: str, settings: Settings) -> dict[str, Any]:
    """Score, write the offline store, apply and materialise (see module doc)."""
    from dualmedia.snapshot import Snapshot
    from serving.search_store import build_search_catalogue

    store = ObjectStore(settings)
    model_info = _load_registered(name, version, settings)
    dataset = model_info["dataset"]
    prefix = features_prefix(settings, dataset, version)
    snapshot = Snapshot(store, model_info["snapshot_uri"])
    if store.is_committed(prefix):
        marker = store.committed_manifest(prefix)
        reused = True
    else:
        at = datetime.now(UTC).replace(microsecond=0)
        frames = score_snapshot(model_info["model"], snapshot.arrays(), version, at)
        metadata = {
            "model": name,
            "version": version,
            "snapshot_id": snapshot.id,
            "published_at": at.isoformat(),
            "rows": {view: len(frame) for view, frame in frames.items()},
        }
        write_offline(store, prefix, frames, metadata)
        marker = store.committed_manifest(prefix)
        reused = False
    target = _materialise(settings, dataset, version)
    # The search catalogue, from the same vectors (serving loads it from object storage).
    search = build_search_catalogue(settings, model_info["model"], snapshot, version)
    return {
        "offline_uri": str(prefix),
        "repo": str(target),
        "feature_views": [*VIEWS, PREDICTIONS_VIEW],
        "model_version": version,
        "rows": marker["metadata"]["rows"],
        "published_at": marker["metadata"]["published_at"],
        "reused": reused,
        "online_store": settings.feast_profile,
        "search": search,
    }


def _materialise(settings: Settings, dataset: str, version: str) -> Path:
    """Every published version (and batch) of the dataset into the online store."""
    target = deploy_repo(settings)
    start, end = _gather_offline(settings, dataset, target, version)
    fs = feature_store(settings)
    fs.apply(feast_objects())
    fs.materialize(start_date=start - timedelta(seconds=1), end_date=end + timedelta(seconds=1))
    return target


def publish_batch(
    name: str, version: str, settings: Settings, batch: str, dataset_uri: str | None = None
) -> dict[str, Any]:
    """A raw batch that arrived after the version was published, scored by that version
    (the one serving), into the feature store and the version's search catalogue: its
    items are online and searchable without training or a redeploy (serving workers
    pick the batch up within `Settings.search_refresh_s`). Idempotent per batch."""
    return publish_batches(name, version, settings, [batch], dataset_uri)[batch]


def publish_batches(
    name: str,
    version: str,
    settings: Settings,
    batches: list[str],
    dataset_uri: str | None = None,
) -> dict[str, dict[str, Any]]:
    """`publish_batch` for each of `batches` in turn ({batch: result}), the version's
    model loaded from the registry once for them all."""
    model_info = _load_registered(name, version, settings)
    return {b: _publish_one(name, model_info, version, settings, b, dataset_uri) for b in batches}


def _publish_one(
    name: str,
    model_info: dict[str, Any],
    version: str,
    settings: Settings,
    batch: str,
    dataset_uri: str | None,
) -> dict[str, Any]:
    from dualmedia.snapshot import Snapshot, table_to_arrays
    from ingestion.checks import accepted_records
    from serving.catalogue import Catalogue
    from serving.search_store import (
        batch_prefix,
        catalogue_items,
        publish_catalogue,
        published_catalogue,
        search_prefix,
    )

    store = ObjectStore(settings)
    model, dataset = model_info["model"], model_info["dataset"]
    search = search_prefix(settings, dataset, version)
    store.committed_manifest(search)  # the version itself is published first
    segment = batch_prefix(search, batch)
    offline = features_prefix(settings, dataset, f"{version}-{batch}")
    reused = store.is_committed(segment)
    if not reused:
        source_uri = dataset_uri or Snapshot(store, model_info["snapshot_uri"]).info.source_uri
        spec, table = accepted_records(store, source_uri, batch, model.media)
        at = datetime.now(UTC).replace(microsecond=0)
        frames = score_snapshot(model, table_to_arrays(table, spec, model.media), version, at)
        if not store.is_committed(offline):
            rows = {view: len(frame) for view, frame in frames.items()}
            metadata = {"model": name, "version": version, "batch": batch, "rows": rows,
                        "published_at": at.isoformat()}  # fmt: skip
            write_offline(store, offline, frames, metadata)
        vectors = _vectors_of(frames)
        items = catalogue_items([table], spec, vectors["predicted"], model.modalities)
        catalogue = Catalogue(vectors["ids"], vectors["vectors"], items, version, "exact")
        _materialise(settings, dataset, version)
        found = publish_catalogue(store, catalogue, segment)
    else:
        found = published_catalogue(store, segment)
    return {
        "batch": batch,
        "model_version": version,
        "offline_uri": str(offline),
        "search_uri": found["uri"],
        "items": {t: r["items"] for t, r in found["targets"].items()},
        "reused": reused,
    }


def online_features(settings: Settings, item_ids: list[str]) -> list[dict[str, Any]]:
    """Every feature of some items from the online store (vectors as lists)."""
    fs = feature_store(settings)
    features = [f"{v}:{v}" for v in VIEWS] + [f"{PREDICTIONS_VIEW}:predictions"]
    features.append("fused_embedding:model_version")
    table = fs.get_online_features(
        features=features, entity_rows=[{"item_id": i} for i in item_ids], full_feature_names=True
    ).to_dict()
    rows = []
    for k, item_id in enumerate(table["item_id"]):
        row: dict[str, Any] = {"item_id": item_id}
        for view in VIEWS:
            row[view] = table[f"{view}__{view}"][k]
        raw = table[f"{PREDICTIONS_VIEW}__predictions"][k]
        row["predictions"] = json.loads(raw) if raw else None
        row["model_version"] = table["fused_embedding__model_version"][k]
        rows.append(row)
    return rows


def _load_registered(name: str, version: str, settings: Settings) -> dict[str, Any]:
    """The registered model version, its snapshot and dataset."""
    from training.registry import TAG_SNAPSHOT_URI, load_registered_model

    model, tags = load_registered_model(name, version, settings)
    return {
        "model": model,
        "snapshot_uri": tags[TAG_SNAPSHOT_URI],
        "dataset": model.spec.name,
    }
