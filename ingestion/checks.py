"""Per-record checks: every manifest line becomes an accepted row or a rejection.

A rejection carries a reason code (contract.RejectReason) and a message naming the
record and the field. Cheap checks (JSON, id, labels) run before media are fetched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from dualmedia import jsonbounds, modalities
from dualmedia.contract import BinaryLabel, DatasetSpec, RejectReason
from dualmedia.modalities import MediaError, ModalitySpec, Reading
from dualmedia.snapshot import SPLITS, label_column
from ingestion.config import IngestConfig
from ingestion.source import (
    Batch,
    DatasetSource,
    LineTooLong,
    MediaMissing,
    MediaNotAllowed,
    MediaTooLarge,
)


@dataclass
class Rejection:
    reason: RejectReason
    message: str
    record_id: str | None
    line_no: int
    raw_line: str

    def to_dict(self, batch: str) -> dict[str, Any]:
        return {
            "batch": batch,
            "line": self.line_no,
            "id": self.record_id,
            "reason": self.reason.value,
            "message": self.message,
            "manifest_line": self.raw_line,
        }


class Reject(Exception):
    """Raised inside the checks; turned into a Rejection by `check_record`."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ParsedRecord:
    """A manifest line that passed the cheap checks; media not fetched yet."""

    line_no: int
    raw_line: str
    id: str
    data: dict[str, Any]
    present: list[str] = field(default_factory=list)  # modality names, canonical order


def split_for(key: str, fractions: tuple[float, float, float]) -> str:
    """Deterministic split by key (an id, or a group: DatasetSpec.split_key): the same key
    lands in the same split in every run."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < fractions[0]:
        return "train"
    return "val" if bucket < fractions[0] + fractions[1] else "test"


def parse_line(
    raw: bytes, line_no: int, spec: DatasetSpec, config: IngestConfig, seen_ids: set[str]
) -> ParsedRecord | Rejection:
    """JSON, id, duplicates, modality presence, text and labels (no media access)."""
    if isinstance(raw, LineTooLong):
        shown_prefix = raw.decode("utf-8", errors="replace")
        return Rejection(raw.reason, raw.message(line_no), None, line_no, shown_prefix)
    bad_utf8 = False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Keep going to find the id and the field, so the message can name them.
        text = raw.decode("utf-8", errors="surrogateescape")
        bad_utf8 = True
    shown = raw.decode("utf-8", errors="replace")
    where = f"line {line_no}"
    try:
        obj = jsonbounds.loads(raw, text)
    except jsonbounds.TooDeep as exc:
        return Rejection(RejectReason.MANIFEST_NOT_JSON, f"{where}: {exc}", None, line_no, shown)
    except json.JSONDecodeError as exc:
        return Rejection(
            RejectReason.MANIFEST_NOT_JSON, f"{where}: not JSON ({exc.msg})", None, line_no, shown
        )
    if not isinstance(obj, dict):
        message = f"{where}: a manifest line must be a JSON object, got {type(obj).__name__}"
        return Rejection(RejectReason.MANIFEST_NOT_JSON, message, None, line_no, shown)
    record_id = obj.get("id")
    if not isinstance(record_id, str) or not record_id.strip():
        message = f"{where}: field 'id' is missing or not a non-empty string"
        return Rejection(RejectReason.MISSING_ID, message, None, line_no, shown)
    where = f"record {record_id!r} ({where})"
    if record_id in seen_ids:
        message = f"{where}: field 'id' repeats an id already read in this dataset"
        return Rejection(RejectReason.DUPLICATE_ID, message, record_id, line_no, shown)
    seen_ids.add(record_id)
    try:
        if bad_utf8:
            field_name = _field_with_bad_bytes(obj)
            inline = {m.name for m in modalities.specs(spec.modalities) if m.inline}
            if field_name in inline:  # the modality's own reason (e.g. text_not_utf8)
                _read(
                    modalities.get(field_name),
                    obj[field_name],
                    config.media_bounds(spec),
                    config.media_config(spec),
                    f"field {field_name!r}",
                )
            raise Reject(RejectReason.MANIFEST_NOT_JSON, f"field {field_name!r} is not valid UTF-8")
        present = [m for m in modalities.ordered(spec.modalities) if obj.get(m) is not None]
        if not present:
            names = ", ".join(modalities.ordered(spec.modalities))
            raise Reject(RejectReason.NO_MODALITY, f"none of the modalities ({names}) is present")
        bounds, media = config.media_bounds(spec), config.media_config(spec)
        for m in present:  # inline values (text) are checked before any media is fetched
            if modalities.get(m).inline:
                _read(modalities.get(m), obj[m], bounds, media, f"field {m!r}")
        _check_labels(obj, spec, config)
    except Reject as r:
        return Rejection(r.reason, f"{where}: {r}", record_id, line_no, shown)
    return ParsedRecord(line_no, shown, record_id, obj, present)


def _field_with_bad_bytes(obj: dict[str, Any]) -> str:
    for key, value in obj.items():
        if isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value):
            return key
    return "(a key)"


def _check_labels(obj: dict[str, Any], spec: DatasetSpec, config: IngestConfig) -> None:
    labels = obj.get("labels")
    if not spec.labels:
        return
    if not isinstance(labels, dict):
        raise Reject(RejectReason.LABEL_MISSING, "field 'labels' is missing or not an object")
    for name in config.required_labels:
        if labels.get(name) is None:
            raise Reject(RejectReason.LABEL_MISSING, f"required label 'labels.{name}' is missing")
    for name, value in labels.items():
        if name not in spec.labels:
            raise Reject(
                RejectReason.LABEL_UNKNOWN_CLASS,
                f"label 'labels.{name}' is not declared in dataset.yaml "
                f"(declared: {', '.join(spec.labels)})",
            )
        if value is None:
            continue  # labels may be partial
        label = spec.labels[name]
        if isinstance(label, BinaryLabel):
            if not isinstance(value, bool):
                raise Reject(
                    RejectReason.LABEL_WRONG_TYPE,
                    f"label 'labels.{name}' is binary and needs true/false, got {value!r}",
                )
        elif not isinstance(value, str):
            raise Reject(
                RejectReason.LABEL_WRONG_TYPE,
                f"label 'labels.{name}' needs a class name (string), got {value!r}",
            )
        elif value not in label.classes:
            raise Reject(
                RejectReason.LABEL_UNKNOWN_CLASS,
                f"label 'labels.{name}' has no class {value!r}; classes: {label.classes}",
            )


def _read(
    spec: ModalitySpec,
    value: Any,
    bounds: Any,
    media: Any,
    where: str,
    carry: Collection[str] = (),
) -> Reading:
    try:
        return spec.read(value, bounds.section(spec.name), media, carry)
    except MediaError as exc:
        raise Reject(RejectReason(exc.reason), f"{where}: {exc}") from None


def check_media(
    record: ParsedRecord,
    batch: Batch,
    source: DatasetSource,
    spec: DatasetSpec,
    config: IngestConfig,
) -> dict[str, Any] | Rejection:
    """Fetch, decode, bound-check and preprocess the record's media into a snapshot row."""
    obj = record.data
    row: dict[str, Any] = {
        "id": record.id,
        "batch": batch.name,
        "split": obj.get("split") if obj.get("split") in SPLITS else None,
        "created_at": str(obj["created_at"]) if obj.get("created_at") is not None else None,
    }
    row["split"] = row["split"] or split_for(spec.split_key(obj), config.split_fractions)
    labels = obj.get("labels") or {}
    for name in spec.labels:
        value = labels.get(name)
        row[label_column(name)] = None if value is None else spec.encode_label(name, value)
    bounds = config.media_bounds(spec)
    media = config.media_config(spec)
    where = f"record {record.id!r} (line {record.line_no})"
    try:
        readings = {}
        lacking = {str(m) for m in spec.modalities} - {str(m) for m in record.present}
        for m in record.present:
            modality = modalities.get(m)
            value = obj[m]
            if not modality.inline:
                value = _fetch(value, modality, bounds, batch, source)
                field_name = f"field {m!r} ({obj[m]})"
            else:
                field_name = f"field {m!r}"
            readings[m] = _read(modality, value, bounds, media, field_name, lacking)
        item = modalities.item_reading(readings, spec.modalities)
        for m, model_input in item.inputs.items():
            row.update(modalities.get(m).to_record(model_input))
            row.update(item.stats[m])
    except Reject as r:
        return Rejection(r.reason, f"{where}: {r}", record.id, record.line_no, record.raw_line)
    return row


def _fetch(
    path: Any, modality: ModalitySpec, bounds: Any, batch: Batch, source: DatasetSource
) -> bytes:
    m = modality.name
    missing = RejectReason(f"{m}_missing")
    if not isinstance(path, str) or not path:
        raise Reject(missing, f"field {m!r} must be a path or s3:// URI, got {path!r}")
    max_bytes = modality.max_bytes(bounds.section(m))
    try:
        uri = source.media_uri(batch, path)
        return source.fetch(uri, max_bytes)
    except MediaNotAllowed as exc:
        raise Reject(exc.reason, f"field {m!r}: {exc}") from None
    except MediaMissing as exc:
        raise Reject(missing, f"field {m!r}: {exc}") from None
    except MediaTooLarge as exc:
        raise Reject(RejectReason(modality.too_large_reason), f"field {m!r}: {exc}") from None


def accepted_records(
    store: Any, dataset_uri: str, batch: str, media: Any
) -> tuple[DatasetSpec, Any]:
    """A raw batch's records that ingestion would accept, checked exactly as ingestion
    checks them and preprocessed with `media` (the MediaConfig of the model that will read
    them), as a records table (dualmedia.snapshot.record_schema); rejected lines are left
    out. For work on one new batch without a snapshot (the drift monitor's batch window,
    publishing a batch to search)."""
    import pyarrow as pa

    from dualmedia.snapshot import record_schema

    source = DatasetSource(store, dataset_uri)
    spec = source.spec()
    config = IngestConfig(media=media.to_dict())  # exactly the model's preprocessing
    found = {b.name: b for b in source.batches()}
    if batch not in found:
        raise ValueError(f"{dataset_uri}: no batch {batch!r}; batches: {sorted(found)}")
    rows, seen = [], set()
    for n, raw in enumerate(source.manifest_lines(found[batch]), start=1):
        parsed = parse_line(raw, n, spec, config, seen)
        if isinstance(parsed, ParsedRecord):
            row = check_media(parsed, found[batch], source, spec, config)
            if isinstance(row, dict):
                rows.append(row)
    if not rows:
        raise ValueError(f"{dataset_uri}/{batch}: no usable record")
    return spec, pa.Table.from_pylist(rows, schema=record_schema(spec))
