"""Request bodies of the three endpoints, validated into typed requests.

Pure functions (no TorchServe, no model) so every bad-input kind is unit-testable.
A bad request raises BadRequest, which the handler turns into a 4xx JSON answer for
that request alone; the worker keeps serving the rest of the batch.

Bodies are JSON with base64 media:
    embed:    {"text": "..."} | {"image": "<base64>"} | {"audio": "<base64>"}
    search:   {"query": {<one or more modalities>}, "weights": {"text": 0.3, "image": 0.7},
              "target": "text" | ... | "fused", "k": 5, "filter": {"damaged": true,
              "sentiment": ["negative"], "predicted_sentiment": "negative", "batch": "b1",
              "created_at": {"from": "...Z", "to": "...Z"}}}  (weights: default equal;
              "rerank": 0.3}  (target: default the catalogue's first modality in canonical
              order; rerank: weight of the agreement stage, default 0 = off)
    insights: {"text": "...", "image": "<base64>", "audio": "<base64>"}  (any non-empty subset)
or multipart/form-data with the same field names (media as files).

A JSON body is checked before it is parsed: its size against the server's request limit
(settings.serving_max_request_mb; 413 naming the limit) and its nesting depth
(dualmedia/jsonbounds.py: a linear scan, no recursion), so a hostile body costs a pass
and a 4xx, never a worker.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from dualmedia import jsonbounds, modalities
from dualmedia.modalities import MediaBounds, MediaConfig, MediaError

TASKS = ("embed", "search", "insights")


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
    """One item's model inputs (modality -> input), preprocessed exactly as snapshots are,
    and the raw-field statistics of what was sent (the same the snapshot records)."""

    items: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return modalities.ordered(self.items)


@dataclass
class Request:
    task: str
    inputs: Inputs
    target: str | None = None  # search: which catalogue target to rank (a modality, fused)
    k: int = 5
    weights: dict[str, float] = field(default_factory=dict)  # search: per query modality
    filter: dict[str, Any] | None = None  # search: serving.vector_index.Filter.from_dict
    rerank: float = 0.0  # search: weight of the agreement stage (0: off)


def read_json_body(raw: bytes, max_bytes: int | None = None) -> dict[str, Any]:
    """A JSON object from a request body: size, then nesting depth, then parsing.
    `max_bytes`: the server's limit (settings.serving_max_request_bytes; the handler
    passes it); None in process, where no server limit applies."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise BadRequest(
            413,
            "payload_too_large",
            f"the body is {len(raw)} bytes; this server takes at most {max_bytes} "
            "(DUALMEDIA_SERVING_MAX_REQUEST_MB)",
        )
    try:
        parsed = jsonbounds.loads(raw)
    except jsonbounds.TooDeep as exc:
        raise BadRequest(400, "too_deeply_nested", f"the body {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(400, "not_json", f"the body is not JSON ({exc.msg})") from None
    if not isinstance(parsed, dict):
        raise BadRequest(400, "not_json_object", "the body must be a JSON object")
    return parsed


def body_of(row: dict[str, Any], max_bytes: int | None = None) -> dict[str, Any]:
    """TorchServe's view of one request → a dict of fields.

    The server passes bodies undecoded (TS_DECODE_INPUT_REQUEST=false): a JSON body is
    bytes under "body"/"data", read by `read_json_body`; multipart fields arrive as
    separate keys. (A body TorchServe did parse arrives as a dict and is taken as is.)"""
    raw = row.get("body", row.get("data"))
    if raw is None:
        fields = {k: v for k, v in row.items() if k not in ("body", "data")}
        if not fields:
            raise BadRequest(400, "empty_body", "the request has no body")
        return {k: _as_text_if_text_field(k, v) for k, v in fields.items()}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if isinstance(raw, (bytes, bytearray)):
        return read_json_body(bytes(raw), max_bytes)
    raise BadRequest(400, "not_json_object", "the body must be a JSON object")


def _as_text_if_text_field(name: str, value: Any) -> Any:
    inline = {m.name for m in modalities.specs() if m.inline}
    text_fields = (*inline, "target", "k", "weights", "filter")
    if name in text_fields and isinstance(value, (bytes, bytearray)):
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


def _media_bytes(value: Any, name: str, max_bytes: int) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        # Refuse from the encoded length, before decoding (base64: 4 chars per 3 bytes).
        if len(value) * 3 // 4 > max_bytes + 3:
            raise BadRequest(
                413, "payload_too_large", f"field {name!r} is over {max_bytes} bytes", name
            )
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                400, "bad_base64", f"field {name!r} is not valid base64", name
            ) from None
    else:
        raise BadRequest(400, "wrong_type", f"field {name!r} must be base64 text or a file", name)
    if len(data) > max_bytes:
        raise BadRequest(
            413, "payload_too_large", f"field {name!r} is over {max_bytes} bytes", name
        )
    return data


def parse_inputs(
    body: dict[str, Any],
    media: MediaConfig,
    bounds: MediaBounds,
    prefix: str = "",
    carried: bool = False,
) -> Inputs:
    """Decode, bound-check and preprocess whichever modalities the body holds, with the
    registry's code and the model's bounds (those its training snapshot passed).

    `carried`: also the modalities a value carries (a clip's audio track as the audio, when
    the body has none): an item to predict on, not a value to embed or a search query."""
    inputs = Inputs()
    readings = {}
    lacking = {m for m in modalities.names() if body.get(m) is None} if carried else set()
    for spec in modalities.specs():
        value = body.get(spec.name)
        if value is None:
            continue
        name = f"{prefix}{spec.name}"
        section = bounds.section(spec.name)
        if spec.inline:
            if not isinstance(value, str):
                raise BadRequest(400, "wrong_type", f"field {name!r} must be a string", name)
            raw: Any = value
        else:
            raw = _media_bytes(value, name, spec.max_bytes(section))
        try:
            readings[spec.name] = spec.read(raw, section, media, lacking)
        except MediaError as exc:
            raise BadRequest(400, exc.reason, f"field {name!r}: {exc}", name) from None
    item = modalities.item_reading(readings, [*readings, *lacking])
    inputs.items.update(item.inputs)
    for stats in item.stats.values():
        inputs.stats.update(stats)
    return inputs


def _json_object(value: Any, name: str) -> dict[str, Any]:
    """A JSON object field (in a multipart body, its JSON text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise BadRequest(400, "bad_value", f"field {name!r} must be a JSON object", name)
    return value


def _search_weights(value: Any, given: list[str]) -> dict[str, float]:
    """Each query modality's weight (default 1 each; they are normalised to sum 1)."""
    if value is None:
        return dict.fromkeys(given, 1.0)
    value = _json_object(value, "weights")
    extra = sorted(set(value) - set(given))
    if extra:
        raise BadRequest(400, "bad_value", f"weight for {extra[0]!r}, which the query does not "
                         "give", f"weights.{extra[0]}")  # fmt: skip
    weights = {}
    for m in given:
        w = value.get(m, 1.0)
        ok = isinstance(w, int | float) and not isinstance(w, bool) and 0 <= w <= 1e6
        if not ok or w != w:
            raise BadRequest(400, "bad_value", f"weight of {m!r} must be a number >= 0",
                             f"weights.{m}")  # fmt: skip
        weights[m] = float(w)
    if not sum(weights.values()) > 0:
        raise BadRequest(400, "bad_value", "the weights must not all be 0", "weights")
    return weights


def _search_filter(value: Any) -> dict[str, Any] | None:
    """The filter object, checked for its form here (its attribute names by the catalogue)."""
    from serving.vector_index import Filter

    if value is None:
        return None
    value = _json_object(value, "filter")
    try:
        Filter.from_dict(value).time_range()
    except (ValueError, TypeError) as exc:
        raise BadRequest(400, "bad_value", f"field 'filter': {exc}", "filter") from None
    return value


def parse_request(
    task: str,
    row: dict[str, Any],
    media: MediaConfig,
    catalogue: list[str],
    bounds: MediaBounds | None = None,
    max_body_bytes: int | None = None,
) -> Request:
    """Validate one request for `task`; raises BadRequest naming the field."""
    body = body_of(row, max_body_bytes)
    bounds = bounds if bounds is not None else MediaBounds()
    modality_fields = set(modalities.names())
    one_of = " or ".join(repr(m) for m in modalities.names())
    if task == "embed":
        _allowed(body, modality_fields)
        inputs = parse_inputs(body, media, bounds)
        if len(inputs.modalities) != 1:
            raise BadRequest(
                400,
                "one_modality_required",
                f"embed takes exactly one of {one_of}",
                None if not inputs.modalities else inputs.modalities[0],
            )
        return Request(task, inputs)
    if task == "search":
        _allowed(body, {"query", "weights", "target", "k", "filter", "rerank"})
        query = body.get("query")
        if not isinstance(query, dict):
            raise BadRequest(400, "missing_field", "field 'query' must be an object", "query")
        unknown = sorted(set(query) - modality_fields)
        if unknown:
            field_name = f"query.{unknown[0]}"
            raise BadRequest(400, "unknown_field", f"unknown field {field_name!r}", field_name)
        inputs = parse_inputs(query, media, bounds, prefix="query.")
        if not inputs.modalities:
            raise BadRequest(
                400, "missing_modality", f"query needs at least one of {one_of}", "query"
            )
        target = body.get("target", catalogue[0] if catalogue else None)
        if target not in set(catalogue):
            allowed = ", ".join(catalogue)
            raise BadRequest(400, "bad_value", f"field 'target' must be one of {allowed}", "target")
        k = body.get("k", 5)
        if isinstance(k, str) and k.isdecimal() and len(k) <= 3:  # "²".isdigit() is True
            k = int(k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
            raise BadRequest(400, "bad_value", "field 'k' must be an integer in 1..100", "k")
        weights = _search_weights(body.get("weights"), inputs.modalities)
        rerank = body.get("rerank", 0.0)
        if not isinstance(rerank, int | float) or isinstance(rerank, bool) or not 0 <= rerank <= 1:
            raise BadRequest(400, "bad_value", "field 'rerank' must be a number in 0..1", "rerank")
        flt = _search_filter(body.get("filter"))
        return Request(task, inputs, str(target), k, weights, flt, float(rerank))
    if task == "insights":
        _allowed(body, modality_fields)
        inputs = parse_inputs(body, media, bounds, carried=True)
        if not inputs.modalities:
            raise BadRequest(
                400,
                "missing_modality",
                f"insights needs at least one of {one_of}",
                None,
            )
        return Request(task, inputs)
    raise BadRequest(404, "unknown_task", f"unknown endpoint {task!r}; known: {', '.join(TASKS)}")
