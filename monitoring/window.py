"""Building monitoring windows: the reference (training snapshot) and the current one
(what the endpoints served, or a raw batch scored by the model)."""

from __future__ import annotations

import io
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from dualmedia import modalities
from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot, table_to_arrays
from dualmedia.storage import ObjectStore
from monitoring.report import PRESENCE_COLUMNS, RAW_COLUMNS, Window
from monitoring.signals import WHOLE_ITEM, item_signals

if TYPE_CHECKING:
    from training.models.scoring import Reliability


def _frame_from_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    # A column no row has (e.g. no served item had audio) is still there, typed.
    for col in RAW_COLUMNS:
        values = frame[col] if col in frame else pd.Series(np.nan, index=frame.index)
        frame[col] = pd.to_numeric(values, errors="coerce").astype("float64")
    for col in PRESENCE_COLUMNS:
        values = frame[col] if col in frame else pd.Series(False, index=frame.index)
        frame[col] = values.fillna(False).astype(bool)
    values = frame[WHOLE_ITEM] if WHOLE_ITEM in frame else pd.Series(True, index=frame.index)
    frame[WHOLE_ITEM] = values.fillna(True).astype(bool)
    return frame


def scored_window(
    model: Any, arrays: Any, stats: pd.DataFrame, version: str, reliability: Reliability | None
) -> Window:
    """Embed and predict a set of items (SnapshotArrays) with the model, through the one
    scoring path, with each item's modality signals as `insights` would answer them."""
    from training.models.scoring import disagreement, score_arrays

    scores = score_arrays(model, arrays)
    frame = stats.reset_index(drop=True).copy()
    for m in modalities.specs():
        present = scores.present.get(m.name)
        frame[m.has_column] = present if present is not None else False
    for name, predicted in scores.predicted().items():
        frame[f"pred_{name}"] = [model.classes[name][int(i)] for i in predicted]
    signals = []
    for i in range(len(scores)):
        present = [m for m in model.modalities if scores.present[m][i]]
        gates = {m: scores.gates[i][j] for j, m in enumerate(model.modalities) if m in present}
        conflicts = disagreement(model.classes, scores.unimodal, i, present, reliability)
        signals.append(
            item_signals(
                {m: scores.embeddings[m][i] for m in present},
                gates,
                [c["label"] for c in conflicts],
                model.classes,
            )
        )
    frame = pd.concat([frame, pd.DataFrame(signals, index=frame.index)], axis=1)
    vectors = {
        m: np.where(scores.present[m][:, None], scores.embeddings[m], np.nan).astype(np.float32)
        for m in model.modalities
    }
    return Window(_frame_from_rows(frame.to_dict("records")), vectors, version)


def reference_window(
    model: Any, snapshot: Snapshot, version: str, reliability: Reliability | None
) -> Window:
    """The training snapshot's held-out items (val and test splits) as the model sees them.

    Not the train split: a model's embeddings of the items it was trained on differ from
    those of any unseen item (it has partly memorised them), so a domain classifier tells
    train items from perfectly undrifted new ones and raises false alarms.
    """
    table = snapshot.table()
    mask = np.isin(np.asarray(table.column("split").to_pylist()), ["val", "test"])
    import pyarrow as pa

    table = table.filter(pa.array(mask))
    arrays = table_to_arrays(table, snapshot.spec, snapshot.media)
    stats = table.select([c for c in RAW_COLUMNS if c in table.column_names]).to_pandas()
    return scored_window(model, arrays, stats, version, reliability)


def batch_window(
    model: Any,
    dataset_uri: str,
    batch: str,
    settings: Settings,
    version: str,
    reliability: Reliability | None,
) -> Window:
    """A raw batch (e.g. newly uploaded feedback), decoded and preprocessed exactly as
    ingestion does, scored by the model. Records ingestion would reject are skipped."""
    from ingestion.checks import accepted_records

    spec, table = accepted_records(ObjectStore(settings), dataset_uri, batch, model.media)
    arrays = table_to_arrays(table, spec, model.media)
    stats = table.select([c for c in RAW_COLUMNS if c in table.column_names]).to_pandas()
    return scored_window(model, arrays, stats, version, reliability)


def served_window(
    settings: Settings,
    dataset: str,
    since: datetime | None = None,
    model_version: str | None = None,
) -> Window:
    """What the endpoints recorded (serving.served_log) since a time."""
    from serving.served_log import served_prefix

    store = ObjectStore(settings)
    rows: list[dict[str, Any]] = []
    items: list[dict[str, list[float]]] = []
    for obj in store.list(served_prefix(settings, dataset)):
        table = pq.read_table(
            io.BytesIO(store.read_bytes(f"s3://{settings.lake_bucket}/{obj.key}"))
        )
        for record in table.to_pylist():
            if since is not None and record["served_at"] < since.isoformat():
                continue
            if model_version is not None and record["model_version"] != model_version:
                continue
            if record["task"] == "search":
                continue  # a query is not an item
            row: dict[str, Any] = json.loads(record["stats"])
            row[WHOLE_ITEM] = record["task"] == "insights"
            for m in modalities.specs():
                row[m.has_column] = m.name in record["modalities"]
            predictions = json.loads(record["predictions"])
            for name, cls in predictions.items():
                row[f"pred_{name}"] = cls
            embeddings = json.loads(record["embeddings"])
            # Files written before signals were logged have no such column.
            signals = json.loads(record.get("signals") or "{}")
            disagreeing = signals.get("disagreement") if "gates" in signals else None
            row.update(item_signals(embeddings, signals.get("gates", {}), disagreeing, predictions))
            rows.append(row)
            items.append(embeddings)
    frame = _frame_from_rows(rows)
    vectors = {}
    for m in modalities.names():
        dim = next((len(e[m]) for e in items if m in e), 0)
        if dim:
            vectors[m] = np.array(
                [e[m] if m in e else [np.nan] * dim for e in items], dtype=np.float32
            )
    return Window(frame, vectors, model_version or "")
