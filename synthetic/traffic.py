"""Honest and hostile requests for the endpoints: one fixed mix, shared by the mixed-load
test (tests/integration/test_serving.py) and benchmarks/bad_traffic.py.

Each `Probe` is a raw request body with what a correct server answers: 200 for the good
ones (compared with the answer the same request gets alone), and for the hostile ones
the 4xx status and error code that name what is wrong. The hostile kinds are the ones
that used to cost other requests their answers or a worker its memory: decoding bombs
(a 9000 x 9000 PNG of a few hundred bytes, 600 s of FLAC silence), 100,000 nested
brackets, a superscript digit where a number goes, bodies over the server's limit.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image


@dataclass(frozen=True)
class Probe:
    name: str
    task: str  # endpoint: embed, search, insights
    body: bytes  # the raw JSON body
    status: int  # the status a correct server answers
    error: str | None = None  # hostile: the error code of the refusal
    field: str | None = None  # hostile: the field the refusal names

    @property
    def good(self) -> bool:
        return self.status == 200


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height and whose pixel data is a few bytes:
    what a decompression bomb looks like before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def flac_silence(seconds: float, rate: int = 48000) -> bytes:
    """`seconds` of silence as FLAC: 600 s compress to well under a megabyte."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="FLAC")
    return buffer.getvalue()


def image_bytes(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def tone_wav(seconds: float, pitch: float, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(int(rate * seconds)) / rate
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * pitch * t), rate, format="WAV")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def good_probes() -> list[Probe]:
    """Every endpoint and modality, small media (answers depend on the content)."""
    png = _b64(image_bytes((80, 60), (180, 40, 40)))
    wav = _b64(tone_wav(1.2, 220.0))
    return [
        Probe("embed text", "embed", _json({"text": "the mug arrived cracked"}), 200),
        Probe("embed image", "embed", _json({"image": png}), 200),
        Probe("embed audio", "embed", _json({"audio": wav}), 200),
        Probe(
            "insights all", "insights", _json({"text": "lovely", "image": png, "audio": wav}), 200
        ),
        Probe("insights voice", "insights", _json({"audio": _b64(tone_wav(0.8, 330.0))}), 200),
        Probe(
            "search",
            "search",
            _json({"query": {"text": "a red mug"}, "target": "text", "k": 3}),
            200,
        ),
    ]


def hostile_probes(max_request_bytes: int) -> list[Probe]:
    """Requests a correct server refuses, each with its own 4xx naming the problem.
    `max_request_bytes`: the server's body limit (settings.serving_max_request_bytes)."""
    over_limit = b'{"text": "' + b"a" * (max_request_bytes + 1024) + b'"}'
    return [
        Probe(
            "k is a superscript",
            "search",
            _json({"query": {"text": "mug"}, "target": "text", "k": "\u00b2"}),
            400,
            "bad_value",
            "k",
        ),
        Probe("100k nested brackets", "embed", b"[" * 100_000, 400, "too_deeply_nested"),
        Probe(
            "9000x9000 PNG bomb",
            "embed",
            _json({"image": _b64(png_bomb(9000, 9000))}),
            400,
            "image_size_out_of_bounds",
            "image",
        ),
        Probe(
            "600 s FLAC",
            "embed",
            _json({"audio": _b64(flac_silence(600))}),
            400,
            "audio_too_long",
            "audio",
        ),
        Probe(
            "BMP image",
            "embed",
            _json({"image": _b64(image_bytes((32, 32), (9, 9, 9), "BMP"))}),
            400,
            "image_format_not_supported",
            "image",
        ),
        Probe("bad base64", "insights", _json({"image": "%%%"}), 400, "bad_base64", "image"),
        Probe("unknown field", "embed", _json({"txt": "typo"}), 400, "unknown_field", "txt"),
        Probe("not JSON", "insights", b"{not json", 400, "not_json"),
        Probe("body over the limit", "embed", over_limit, 413, "payload_too_large"),
    ]


def judge(probe: Probe, status: int, answer: Any, alone: Any = None) -> str | None:
    """None when the server answered `probe` correctly, else what is wrong. `answer`: the
    decoded JSON body (None if it was not JSON); `alone`: a good probe's answer when sent
    by itself (compared value by value)."""
    if status != probe.status:
        return f"{probe.name}: HTTP {status}, expected {probe.status}"
    if not isinstance(answer, dict):
        return f"{probe.name}: the answer is not a JSON object"
    if not probe.good:
        if answer.get("error") != probe.error or answer.get("field") != probe.field:
            return (
                f"{probe.name}: error {answer.get('error')!r} field {answer.get('field')!r}, "
                f"expected {probe.error!r} {probe.field!r}"
            )
        return None
    if alone is not None and not _close(answer, alone):
        return f"{probe.name}: the answer differs from the one it gets alone"
    return None


def _close(a: Any, b: Any, tol: float = 1e-4) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return abs(a - b) <= tol
    return a == b
