"""Request bodies of the three endpoints, validated into typed requests.

Pure functions (no TorchServe, no model) so every bad-input kind is unit-testable.
A bad request raises BadRequest, which the handler turns into a 4xx JSON answer for
that request alone; the worker keeps serving the rest of the batch.

Bodies are JSON with base64 media:
    embed:    {"text": "..."} | {"image": "<base64>"} | {"audio": "<base64>"}
    search:   {"query": {<one modality>}, "target": "text", "k": 5}
    insights: {"text": "...", "image": "<base64>", "audio": "<base64>"}  (any non-empty subset)
or multipart/form-data with the same field names (media as files).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dualmedia.contract import Modality
from dualmedia.media import (
    MediaConfig,
    MediaError,
    decode_audio,
    decode_image,
    image_to_model_input,
    log_mel,
)

TASKS = ("embed", "search", "insights")
MAX_TEXT_CHARS = 5000
MAX_MEDIA_BYTES = 5 * 1024 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, error: str, message: str, field_name: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.field = field_name

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "field": self.field, "message": str(self)}


@dataclass
class Inputs:
    """One item's inputs, preprocessed exactly as the snapshot preprocesses records."""

    text: str | None = None
    image: np.ndarray | None = None  # S x S x 3 uint8
    audio: np.ndarray | None = None  # n_mels x frames float32
    audio_valid_frames: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def modalities(self) -> list[Modality]:
        present = []
        if self.text is not None:
            present.append(Modality.TEXT)
        if self.image is not None:
            present.append(Modality.IMAGE)
        if self.audio is not None:
            present.append(Modality.AUDIO)
        return present


@dataclass
class Request:
    task: str
    inputs: Inputs
    target: Modality | None = None  # search: which catalogue modality to rank
    k: int = 5


def body_of(row: dict[str, Any]) -> dict[str, Any]:
    """TorchServe's view of one request → a dict of fields.

    JSON bodies arrive already parsed (dict) under "body"/"data"; invalid JSON arrives
    as bytes; multipart fields arrive as separate keys."""
    raw = row.get("body", row.get("data"))
    if raw is None:
        fields = {k: v for k, v in row.items() if k not in ("body", "data")}
        if not fields:
            raise BadRequest(400, "empty_body", "the request has no body")
        return {k: _as_text_if_text_field(k, v) for k, v in fields.items()}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (bytes, bytearray, str)):
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, (bytes, bytearray)) else raw
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRequest(400, "not_json", f"the body is not JSON ({exc.msg})") from None
        if not isinstance(parsed, dict):
            raise BadRequest(400, "not_json_object", "the body must be a JSON object")
        return parsed
    raise BadRequest(400, "not_json_object", "the body must be a JSON object")


def _as_text_if_text_field(name: str, value: Any) -> Any:
    if name in ("text", "target", "k") and isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(400, "text_not_utf8", f"field {name!r} is not UTF-8", name) from None
    return value


def _allowed(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            400,
            "unknown_field",
            f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
            unknown[0],
        )


def _media_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                400, "bad_base64", f"field {name!r} is not valid base64", name
            ) from None
    else:
        raise BadRequest(400, "wrong_type", f"field {name!r} must be base64 text or a file", name)
    if len(data) > MAX_MEDIA_BYTES:
        raise BadRequest(
            413, "payload_too_large", f"field {name!r} is over {MAX_MEDIA_BYTES} bytes", name
        )
    return data


def parse_inputs(body: dict[str, Any], media: MediaConfig, prefix: str = "") -> Inputs:
    """Decode and preprocess whichever of text / image / audio the body holds."""
    inputs = Inputs()
    text = body.get("text")
    if text is not None:
        name = f"{prefix}text"
        if not isinstance(text, str):
            raise BadRequest(400, "wrong_type", f"field {name!r} must be a string", name)
        if not text.strip():
            raise BadRequest(400, "empty_text", f"field {name!r} is empty", name)
        if len(text) > MAX_TEXT_CHARS:
            raise BadRequest(
                413, "payload_too_large", f"field {name!r} is over {MAX_TEXT_CHARS} chars", name
            )
        inputs.text = text
        inputs.stats["text_length"] = float(len(text))
    if body.get("image") is not None:
        name = f"{prefix}image"
        try:
            decoded = decode_image(_media_bytes(body["image"], name))
        except MediaError as exc:
            raise BadRequest(400, exc.reason, f"field {name!r}: {exc}", name) from None
        inputs.image = image_to_model_input(decoded, media)
        inputs.stats.update(
            image_brightness=float(decoded.pixels.mean() / 255.0),
            image_width=float(decoded.width),
            image_height=float(decoded.height),
        )
    if body.get("audio") is not None:
        name = f"{prefix}audio"
        try:
            decoded_audio = decode_audio(_media_bytes(body["audio"], name))
        except MediaError as exc:
            raise BadRequest(400, exc.reason, f"field {name!r}: {exc}", name) from None
        if decoded_audio.duration_s < 0.1:
            raise BadRequest(400, "audio_too_short", f"field {name!r} lasts under 0.1 s", name)
        spectrogram, valid = log_mel(decoded_audio, media)
        inputs.audio, inputs.audio_valid_frames = spectrogram, valid
        rms = float(np.sqrt(np.mean(decoded_audio.samples**2)))
        inputs.stats.update(
            audio_duration_s=decoded_audio.duration_s,
            audio_rms_db=20.0 * float(np.log10(max(rms, 1e-10))),
        )
    return inputs


def parse_request(
    task: str, row: dict[str, Any], media: MediaConfig, catalogue: list[Modality]
) -> Request:
    """Validate one request for `task`; raises BadRequest naming the field."""
    body = body_of(row)
    modality_fields = {m.value for m in Modality}
    if task == "embed":
        _allowed(body, modality_fields)
        inputs = parse_inputs(body, media)
        if len(inputs.modalities) != 1:
            raise BadRequest(
                400,
                "one_modality_required",
                "embed takes exactly one of 'text', 'image' or 'audio'",
                None if not inputs.modalities else "text",
            )
        return Request(task, inputs)
    if task == "search":
        _allowed(body, {"query", "target", "k"})
        query = body.get("query")
        if not isinstance(query, dict):
            raise BadRequest(400, "missing_field", "field 'query' must be an object", "query")
        unknown = sorted(set(query) - modality_fields)
        if unknown:
            field_name = f"query.{unknown[0]}"
            raise BadRequest(400, "unknown_field", f"unknown field {field_name!r}", field_name)
        inputs = parse_inputs(query, media, prefix="query.")
        if len(inputs.modalities) != 1:
            raise BadRequest(
                400, "one_modality_required", "query takes exactly one modality", "query"
            )
        target = body.get("target", "text")
        if target not in {m.value for m in catalogue}:
            allowed = ", ".join(m.value for m in catalogue)
            raise BadRequest(400, "bad_value", f"field 'target' must be one of {allowed}", "target")
        k = body.get("k", 5)
        if isinstance(k, str) and k.isdigit():
            k = int(k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
            raise BadRequest(400, "bad_value", "field 'k' must be an integer in 1..100", "k")
        return Request(task, inputs, Modality(target), k)
    if task == "insights":
        _allowed(body, modality_fields)
        inputs = parse_inputs(body, media)
        if not inputs.modalities:
            raise BadRequest(
                400,
                "missing_modality",
                "insights needs at least one of 'text', 'image' or 'audio'",
                "text",
            )
        return Request(task, inputs)
    raise BadRequest(404, "unknown_task", f"unknown endpoint {task!r}; known: {', '.join(TASKS)}")
