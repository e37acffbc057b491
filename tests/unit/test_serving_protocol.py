"""Request validation of the serving endpoints, every bad-input kind, no server needed."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from dualmedia.contract import Modality
from dualmedia.modalities import MediaBounds, MediaConfig
from serving.protocol import BadRequest, parse_request

MEDIA = MediaConfig()
CATALOGUE = [Modality.TEXT, Modality.IMAGE, Modality.AUDIO]


def png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 50, 50)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wav(seconds: float = 1.0) -> str:
    buf = io.BytesIO()
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t), 16000, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


# A model's bounds (those of its training snapshot); images capped at 5 MiB here.
BOUNDS = MediaBounds.from_dict({"image": {"max_bytes": 5 * 1024 * 1024}})


def parse(task: str, body: object) -> object:
    return parse_request(task, {"body": body}, MEDIA, CATALOGUE, BOUNDS)


def test_valid_requests_are_preprocessed() -> None:
    r = parse("embed", {"image": png()})
    assert r.inputs.modalities == [Modality.IMAGE]
    assert r.inputs.items["image"].shape == (MEDIA.image.size, MEDIA.image.size, 3)
    assert set(r.inputs.stats) == {
        "image_width",
        "image_height",
        "image_brightness",
        "image_saturation",
    }
    r = parse("search", {"query": {"audio": wav()}, "target": "text", "k": 3})
    assert r.inputs.items["audio"]["logmel"].shape == (MEDIA.audio.n_mels, MEDIA.audio.frames)
    assert (r.target, r.k) == (Modality.TEXT, 3)
    r = parse("insights", {"text": "lovely", "image": png(), "audio": wav()})
    assert r.inputs.modalities == CATALOGUE
    r = parse("search", {"query": {"text": "cracked", "image": png()}, "weights": {"image": 3},
                         "filter": {"damaged": True, "batch": ["b1", "b2"]}})  # fmt: skip
    assert r.inputs.modalities == [Modality.TEXT, Modality.IMAGE]
    assert r.weights == {"text": 1.0, "image": 3.0}  # a modality left out weighs 1
    assert r.filter == {"damaged": True, "batch": ["b1", "b2"]}


def test_multipart_fields_are_accepted() -> None:
    raw_png = base64.b64decode(png())
    r = parse_request("insights", {"text": b"nice", "image": bytearray(raw_png)}, MEDIA, CATALOGUE)
    assert r.inputs.items["text"] == "nice" and r.inputs.items["image"] is not None


@pytest.mark.parametrize(
    ("task", "body", "status", "error", "field"),
    [
        ("embed", b"{not json", 400, "not_json", None),
        ("embed", [1, 2], 400, "not_json_object", None),
        ("embed", {"txt": "typo"}, 400, "unknown_field", "txt"),
        ("embed", {"text": "   "}, 400, "text_empty", "text"),
        ("embed", {"text": 5}, 400, "wrong_type", "text"),
        ("embed", {"text": "a", "image": png()}, 400, "one_modality_required", "text"),
        ("embed", {}, 400, "one_modality_required", None),
        ("embed", {"image": "!!!not-base64!!!"}, 400, "bad_base64", "image"),
        (
            "embed",
            {"image": base64.b64encode(b"garbage" * 50).decode()},
            400,
            "image_undecodable",
            "image",
        ),
        (
            "embed",
            {"audio": base64.b64encode(b"RIFF0000WAVE").decode()},
            400,
            "audio_undecodable",
            "audio",
        ),
        ("embed", {"text": "x" * 6000}, 400, "text_too_long", "text"),
        (
            "embed",
            {"image": base64.b64encode(b"0" * (6 * 1024 * 1024)).decode()},
            413,
            "payload_too_large",
            "image",
        ),
        ("search", {"target": "text"}, 400, "missing_field", "query"),
        ("search", {"query": {"smell": "x"}}, 400, "unknown_field", "query.smell"),
        ("search", {"query": {"text": "x"}, "target": "video"}, 400, "bad_value", "target"),
        ("search", {"query": {"text": "x"}, "k": 0}, 400, "bad_value", "k"),
        ("search", {"query": {}}, 400, "missing_modality", "query"),
        ("search", {"query": {"text": "x"}, "weights": [1]}, 400, "bad_value", "weights"),
        (
            "search",
            {"query": {"text": "x"}, "weights": {"image": 1}},
            400,
            "bad_value",
            "weights.image",
        ),
        (
            "search",
            {"query": {"text": "x"}, "weights": {"text": -1}},
            400,
            "bad_value",
            "weights.text",
        ),
        ("search", {"query": {"text": "x"}, "weights": {"text": 0}}, 400, "bad_value", "weights"),
        ("search", {"query": {"text": "x"}, "filter": {"damaged": 3}}, 400, "bad_value", "filter"),
        (
            "search",
            {"query": {"text": "x"}, "filter": {"created_at": {"from": "soon"}}},
            400,
            "bad_value",
            "filter",
        ),
        ("search", {"query": {"text": "x"}, "rerank": True}, 400, "bad_value", "rerank"),
        ("search", {"query": {"text": "x"}, "rerank": 1.5}, 400, "bad_value", "rerank"),
        ("insights", {}, 400, "missing_modality", None),
        ("nope", {"text": "x"}, 404, "unknown_task", None),
    ],
)
def test_bad_requests_name_the_field(
    task: str, body: object, status: int, error: str, field: str | None
) -> None:
    with pytest.raises(BadRequest) as info:
        parse(task, body)
    assert (info.value.status, info.value.error, info.value.field) == (status, error, field)
    assert str(info.value)


def test_bodies_are_bounded_before_they_are_parsed() -> None:
    def raw(body: bytes, **limits: int) -> object:
        return parse_request("embed", {"body": body}, MEDIA, CATALOGUE, BOUNDS, **limits)

    # 100,000 nested brackets: json.loads would raise RecursionError; refused from a scan.
    for hostile in (b"[" * 100_000, b'{"text": ' + b"[" * 17 + b"]" * 17 + b"}"):
        with pytest.raises(BadRequest) as exc:
            raw(hostile)
        assert (exc.value.status, exc.value.error) == (400, "too_deeply_nested")
    # Brackets inside strings are text, not nesting (escaped quotes included).
    text = '[[[[[[[[[[[[[[[[[[[[ \\" {{{{{{{{{{{{{{{{{{{{'
    request = raw(b'{"text": "' + text.encode() + b'"}')
    assert request.inputs.modalities == ["text"]
    # Over the server's limit: 413 naming the limit and the setting.
    body = b'{"text": "' + b"a" * 2000 + b'"}'
    with pytest.raises(BadRequest) as exc:
        raw(body, max_body_bytes=1000)
    assert exc.value.status == 413 and exc.value.error == "payload_too_large"
    assert "at most 1000" in str(exc.value) and "DUALMEDIA_SERVING_MAX_REQUEST_MB" in str(exc.value)
    assert raw(body, max_body_bytes=len(body)).inputs.modalities == ["text"]
