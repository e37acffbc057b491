"""The production profile's state stores on this machine's real PostgreSQL and Redis.

- MLflow: `mlflow server` with its backend store in a PostgreSQL database of this module;
  runs, metrics and registered versions are rows there (read back with SQL).
- Feast: Redis online store (a db number of this module) and the SQL registry in a
  PostgreSQL database of this module, shared by two FeatureStores whose repository
  folders (two homes: two machines) differ: what one applies and materialises, the
  other reads without applying anything.
Databases are dropped and this module's Redis keys deleted at the end (no FLUSHDB: the
Redis may be shared).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import SecretStr

from dualmedia.settings import Settings
from dualmedia.stack import Stack
from dualmedia.stack import postgres as pg
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
REDIS_DB = 12  # Feast's online store here; test_production_airflow uses 11


def _absent() -> str | None:
    for port, what in ((5432, "PostgreSQL"), (6379, "Redis")):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            return f"{what} is not running on 127.0.0.1:{port} (needed by the production profile)"
    return None


def _delete_project_keys(project: str) -> int:
    """Delete this module's Feast keys (each ends with the project's name): Redis may be
    shared, so no FLUSHDB."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    keys = [k for k in client.scan_iter() if k.endswith(project.encode())]
    return client.delete(*keys) if keys else 0


@pytest.fixture(scope="module")
def names() -> Iterator[dict[str, str]]:
    reason = _absent()
    if reason:
        pytest.skip(reason)
    suffix = uuid.uuid4().hex[:8]
    values = {
        "postgres_airflow_db": f"dm_test_stores_airflow_{suffix}",
        "postgres_mlflow_db": f"dm_test_stores_mlflow_{suffix}",
        "postgres_feast_db": f"dm_test_stores_feast_{suffix}",
        "feast_project": f"dmtest_{suffix}",
    }
    yield values
    probe = Settings(_env_file=None, postgres_url=SecretStr(POSTGRES_URL), **values)
    for db in pg.platform_databases(probe):
        pg.drop_database(probe, db)
    _delete_project_keys(values["feast_project"])


def prod_settings(home: Path, names: dict[str, str]) -> Settings:
    return make_settings(
        home,
        profile="production",
        postgres_url=SecretStr(POSTGRES_URL),
        feast_redis=SecretStr(f"127.0.0.1:6379,db={REDIS_DB}"),
        **names,
    )


def test_mlflow_runs_and_versions_live_in_postgresql(tmp_path: Path, names: dict[str, str]) -> None:
    import mlflow
    from mlflow import MlflowClient

    s = prod_settings(tmp_path / "home", names)
    stack = Stack(s, only=["s3", "mlflow"])
    try:
        stack.up()
        backend = stack.service("mlflow").status().backend
        assert backend["backend_store"] == (
            f"postgresql+psycopg2://postgres@127.0.0.1:5432/{s.postgres_mlflow_db}"
        )
        mlflow.set_tracking_uri(s.mlflow_uri)
        client = MlflowClient(s.mlflow_uri)
        experiment = client.create_experiment(f"prod-{names['feast_project']}")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "macro_f1", 0.75)
        client.set_terminated(run.info.run_id)
        model = f"prod-model-{names['feast_project']}"
        client.create_registered_model(model)
        version = client.create_model_version(
            model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        assert version.version == "1"

        db = s.postgres_mlflow_db
        runs = pg.query(s, db, "SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert runs == [("FINISHED",)]
        metrics = pg.query(
            s, db, "SELECT value FROM metrics WHERE run_uuid = %s", (run.info.run_id,)
        )
        assert metrics == [(0.75,)]
        versions = pg.query(
            s, db, "SELECT version, run_id FROM model_versions WHERE name = %s", (model,)
        )
        assert versions == [(1, run.info.run_id)]
    finally:
        stack.down()
    # `down` stops the server and leaves PostgreSQL and its data alone.
    assert pg.is_reachable(s)
    assert pg.query(s, db, "SELECT count(*) FROM model_versions WHERE name = %s", (model,)) == [
        (1,)
    ]


def _frames(views: list, ids: list[str], at: datetime) -> dict[str, pd.DataFrame]:
    """Rows for every feature view, built from the views' own schemas (so the test keeps
    up with the definitions): float vectors for arrays, a version string otherwise."""
    from feast.types import Array

    rng = np.random.default_rng(0)
    frames = {}
    for fv in views:
        frame = pd.DataFrame({"item_id": ids})
        for field in fv.schema:
            if isinstance(field.dtype, Array):
                frame[field.name] = list(rng.standard_normal((len(ids), 4)).astype(np.float32))
            else:
                frame[field.name] = "7"
        # One second apart (a column of equal timestamps is an edge case of Dask's sort).
        frame["event_timestamp"] = [
            pd.Timestamp(at) - pd.Timedelta(seconds=k) for k in range(len(ids))
        ]
        frames[fv.name] = frame
    return frames


def _apply_and_materialize(settings: Settings, ids: list[str], at: datetime) -> tuple[Any, dict]:
    """What `publish` does with the offline files: apply the definitions, materialise."""
    from feast import FeatureView

    from feature_repo.publish import deploy_repo, feast_objects, feature_store

    repo = deploy_repo(settings)
    objects = feast_objects()
    views = [o for o in objects if isinstance(o, FeatureView)]
    frames = _frames(views, ids, at)
    for fv in views:
        frames[fv.name].to_parquet(repo / fv.batch_source.path, index=False)
    store = feature_store(settings)
    store.apply(objects)
    store.materialize(start_date=at - timedelta(hours=1), end_date=datetime.now(UTC))
    return store, frames


def test_feast_registry_and_online_store_are_shared(tmp_path: Path, names: dict[str, str]) -> None:
    from feast import FeatureView
    from feast.types import Array

    from feature_repo.publish import deploy_repo, feast_objects, feature_store

    ids = ["item-1", "item-2", "item-3"]
    # Rows a minute old, materialised over the hour before now: no window edge in sight.
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    # A local-profile store first, in this process (as a test run or a worker publishing
    # twice does): Feast changes the objects it applies, and reused ones once made the
    # Redis store's materialisation write nothing readable.
    _apply_and_materialize(make_settings(tmp_path / "local"), ids, at)

    writer = prod_settings(tmp_path / "machine-a", names)
    reader = prod_settings(tmp_path / "machine-b", names)
    repo = deploy_repo(writer)
    rendered = (repo / "feature_store.yaml").read_text()
    assert "registry_type: sql" in rendered and "type: redis" in rendered
    assert (repo / "feature_store.yaml").stat().st_mode & 0o077 == 0  # owner-only

    fs_a, frames = _apply_and_materialize(writer, ids, at)
    views = [o for o in feast_objects() if isinstance(o, FeatureView)]
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    written = [k for k in client.scan_iter() if k.endswith(names["feast_project"].encode())]
    assert len(written) == len(ids), f"materialize wrote {len(written)} keys for {len(ids)} items"

    # The other machine: its own folder, nothing applied there.
    fs_b = feature_store(reader)
    assert fs_b.repo_path != fs_a.repo_path
    assert {fv.name for fv in fs_b.list_feature_views()} == {fv.name for fv in views}
    view = next(fv for fv in views if any(isinstance(f.dtype, Array) for f in fv.schema))
    field = next(f for f in view.schema if isinstance(f.dtype, Array))
    got = fs_b.get_online_features(
        features=[f"{view.name}:{field.name}"], entity_rows=[{"item_id": i} for i in ids]
    ).to_dict()
    expected = frames[view.name][field.name]
    for k in range(len(ids)):
        assert got[field.name][k] is not None, (ids[k], got)
        assert got[field.name][k] == pytest.approx(list(expected[k]))
    # The registry rows are in PostgreSQL.
    projects = pg.query(writer, writer.postgres_feast_db, "SELECT project_id FROM projects")
    assert (names["feast_project"],) in projects
