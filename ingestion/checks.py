"""Per-record checks: every manifest line becomes an accepted row or a rejection.

A rejection carries a reason code (contract.RejectReason) and a message naming the
record and the field. Cheap checks (JSON, id, labels) run before media are fetched.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dualmedia.contract import BinaryLabel, DatasetSpec, Modality, RejectReason
from dualmedia.media import (
    MediaError,
    audio_stats,
    decode_audio,
    decode_image,
    image_stats,
    image_to_model_input,
    log_mel,
)
from dualmedia.snapshot import SPLITS, label_column
from ingestion.config import IngestConfig
from ingestion.source import Batch, DatasetSource, MediaMissing, MediaTooLarge


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
    present: list[Modality] = field(default_factory=list)


def split_for(record_id: str, fractions: tuple[float, float, float]) -> str:
    """Deterministic split by id: the same id lands in the same split in every run."""
    bucket = int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < fractions[0]:
        return "train"
    return "val" if bucket < fractions[0] + fractions[1] else "test"


def parse_line(
    raw: bytes, line_no: int, spec: DatasetSpec, config: IngestConfig, seen_ids: set[str]
) -> ParsedRecord | Rejection:
    """JSON, id, duplicates, modality presence, text and labels (no media access)."""
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
        obj = json.loads(text)
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
            if field_name == "text":
                raise Reject(RejectReason.TEXT_NOT_UTF8, "field 'text' is not valid UTF-8")
            raise Reject(RejectReason.MANIFEST_NOT_JSON, f"field {field_name!r} is not valid UTF-8")
        present = [m for m in spec.modalities if obj.get(m.value) is not None]
        if not present:
            names = ", ".join(m.value for m in spec.modalities)
            raise Reject(RejectReason.NO_MODALITY, f"none of the modalities ({names}) is present")
        if Modality.TEXT in present:
            _check_text(obj["text"], config)
        _check_labels(obj, spec, config)
    except Reject as r:
        return Rejection(r.reason, f"{where}: {r}", record_id, line_no, shown)
    return ParsedRecord(line_no, shown, record_id, obj, present)


def _field_with_bad_bytes(obj: dict[str, Any]) -> str:
    for key, value in obj.items():
        if isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value):
            return key
    return "(a key)"


def _check_text(value: Any, config: IngestConfig) -> None:
    if not isinstance(value, str) or not value.strip():
        raise Reject(RejectReason.TEXT_EMPTY, "field 'text' is empty or not a string")
    if len(value) > config.max_text_chars:
        raise Reject(
            RejectReason.TEXT_TOO_LONG,
            f"field 'text' has {len(value)} characters; the bound is {config.max_text_chars}",
        )


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
        "text": obj.get("text") if Modality.TEXT in record.present else None,
        "image": None,
        "audio": None,
        "audio_valid_frames": None,
        "text_length": float(len(obj["text"])) if Modality.TEXT in record.present else None,
    }
    row["split"] = row["split"] or split_for(record.id, config.split_fractions)
    labels = obj.get("labels") or {}
    for name in spec.labels:
        value = labels.get(name)
        row[label_column(name)] = None if value is None else spec.encode_label(name, value)
    where = f"record {record.id!r} (line {record.line_no})"
    try:
        if Modality.IMAGE in record.present:
            row.update(_image(obj["image"], batch, source, config))
        if Modality.AUDIO in record.present:
            row.update(_audio(obj["audio"], batch, source, config))
    except Reject as r:
        return Rejection(r.reason, f"{where}: {r}", record.id, record.line_no, record.raw_line)
    return row


def _fetch(
    path: Any, modality: str, batch: Batch, source: DatasetSource, config: IngestConfig
) -> bytes:
    missing = RejectReason(f"{modality}_missing")
    if not isinstance(path, str) or not path:
        raise Reject(missing, f"field {modality!r} must be a path or s3:// URI, got {path!r}")
    try:
        uri = source.media_uri(batch, path)
        return source.fetch(uri, config.max_media_bytes)
    except MediaMissing as exc:
        raise Reject(missing, f"field {modality!r}: {exc}") from None
    except MediaTooLarge as exc:
        reason = (
            RejectReason.IMAGE_SIZE_OUT_OF_BOUNDS
            if modality == "image"
            else RejectReason.AUDIO_TOO_LONG
        )
        raise Reject(reason, f"field {modality!r}: {exc}") from None


def _image(path: Any, batch: Batch, source: DatasetSource, config: IngestConfig) -> dict[str, Any]:
    data = _fetch(path, "image", batch, source, config)
    try:
        image = decode_image(data)
    except MediaError as exc:
        raise Reject(RejectReason(exc.reason), f"field 'image' ({path}): {exc}") from None
    lo, hi = config.min_image_side, config.max_image_side
    if not (lo <= image.width <= hi and lo <= image.height <= hi):
        raise Reject(
            RejectReason.IMAGE_SIZE_OUT_OF_BOUNDS,
            f"field 'image' ({path}) is {image.width}x{image.height} px; "
            f"each side must be within {lo}..{hi}",
        )
    pixels = image_to_model_input(image, config.media)
    return {"image": pixels.tobytes(), **image_stats(image)}


def _audio(path: Any, batch: Batch, source: DatasetSource, config: IngestConfig) -> dict[str, Any]:
    data = _fetch(path, "audio", batch, source, config)
    try:
        audio = decode_audio(data)
    except MediaError as exc:
        raise Reject(RejectReason(exc.reason), f"field 'audio' ({path}): {exc}") from None
    stats = audio_stats(audio)
    duration = audio.duration_s
    field_ = f"field 'audio' ({path})"
    if duration < config.min_audio_s:
        raise Reject(
            RejectReason.AUDIO_TOO_SHORT,
            f"{field_} lasts {duration:.2f}s; the minimum is {config.min_audio_s}s",
        )
    if duration > config.max_audio_s:
        raise Reject(
            RejectReason.AUDIO_TOO_LONG,
            f"{field_} lasts {duration:.2f}s; the maximum is {config.max_audio_s}s",
        )
    if stats["audio_peak"] < config.silent_peak:
        raise Reject(
            RejectReason.AUDIO_SILENT,
            f"{field_} is silent (peak {stats['audio_peak']:.1e} < {config.silent_peak})",
        )
    clipped = float(np.mean(np.abs(audio.samples) >= config.clip_level))
    if clipped > config.max_clipped_fraction:
        raise Reject(
            RejectReason.AUDIO_CLIPPED,
            f"{field_} is clipped: {clipped:.1%} of samples at full scale "
            f"(bound {config.max_clipped_fraction:.0%})",
        )
    spectrogram, valid = log_mel(audio, config.media)
    return {
        "audio": spectrogram.astype(np.float16).tobytes(),
        "audio_valid_frames": valid,
        "audio_duration_s": stats["audio_duration_s"],
        "audio_sample_rate": stats["audio_sample_rate"],
        "audio_rms_db": stats["audio_rms_db"],
    }
