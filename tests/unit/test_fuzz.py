"""Fuzzing the two doors untrusted input comes through: the endpoints' request decoder and
ingestion's per-record checks. Whatever the bytes, the answer is a refusal with a reason
(BadRequest with a 4xx status; a Rejection) or a valid result, never another exception.

Bounded for CI: a fixed number of examples per test, no deadline (shared machines).
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dualmedia.modalities import MediaBounds, MediaConfig
from ingestion.checks import ParsedRecord, Rejection, parse_line
from ingestion.config import IngestConfig
from serving.protocol import TASKS, BadRequest, parse_request
from synthetic import dataset_spec

MEDIA = MediaConfig()
BOUNDS = MediaBounds()
CATALOGUE = ["text", "image", "audio"]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC = dataset_spec()  # the generator's labels: categorical and binary


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    return buf.getvalue()


# Real media, cut and flipped: headers that lie, truncated streams, random bytes.
MEDIA_SEEDS = [_png(), _wav(), b"", b"\x89PNG\r\n\x1a\n", b"RIFF\xff\xff\xff\xffWAVE", b"fLaC"]


@st.composite
def mangled_media(draw: st.DrawFn) -> str:
    seed = bytearray(draw(st.sampled_from(MEDIA_SEEDS)))
    if seed:
        for _ in range(draw(st.integers(0, 4))):
            seed[draw(st.integers(0, len(seed) - 1))] = draw(st.integers(0, 255))
        seed = seed[: draw(st.integers(0, len(seed)))]
    seed += draw(st.binary(max_size=64))
    return base64.b64encode(bytes(seed)).decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = st.one_of(json_values, mangled_media(), st.text(max_size=200))
bodies = st.dictionaries(
    st.sampled_from(["text", "image", "audio", "query", "target", "k", "video", ""]),
    field_values,
    max_size=4,
)


def _assert_refused_or_valid(task: str, row: dict) -> None:
    try:
        parse_request(task, row, MEDIA, CATALOGUE, BOUNDS)
    except BadRequest as exc:
        assert 400 <= exc.status < 500 and exc.error, exc


@FUZZ
@given(st.sampled_from(TASKS), bodies)
def test_request_bodies_are_answered_or_refused(task: str, body: dict) -> None:
    if task == "search" and isinstance(body.get("text"), str):
        body = {**body, "query": {"text": body.pop("text")}}
    raw = json.dumps(body, allow_nan=True).encode()
    _assert_refused_or_valid(task, {"body": raw})


@FUZZ
@given(st.sampled_from(TASKS), st.binary(max_size=300))
def test_raw_bytes_are_refused_not_raised(task: str, raw: bytes) -> None:
    _assert_refused_or_valid(task, {"body": raw})


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["text", "image", "audio", "target", "k"]),
        st.binary(max_size=200),
        min_size=1,
        max_size=3,
    )
)
def test_multipart_fields_are_refused_not_raised(fields: dict[str, bytes]) -> None:
    _assert_refused_or_valid("insights", fields)


records = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=10), json_values),
        "text": st.one_of(st.text(max_size=50), json_values),
        "image": st.one_of(st.text(max_size=30), json_values),
        "audio": st.one_of(st.text(max_size=30), json_values),
        "labels": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "sentiment": st.one_of(
                        st.sampled_from(["negative", "neutral", "positive"]), json_values
                    ),
                    "category": st.one_of(st.text(max_size=12), json_values),
                    "damaged": json_values,
                },
            ),
            json_values,
        ),
    },
)


@FUZZ
@given(records, st.binary(max_size=8))
def test_manifest_lines_are_parsed_or_quarantined(record: dict, tail: bytes) -> None:
    line = json.dumps(record, allow_nan=True).encode()
    for candidate in (line, line[: len(line) // 2] + tail):
        result = parse_line(candidate, 1, SPEC, IngestConfig(), set())
        assert isinstance(result, (ParsedRecord, Rejection))
        if isinstance(result, Rejection):
            assert result.reason and "line 1" in result.message
