"""Ingestion's storage boundary: manifest lines in one linear, bounded pass; media only
from allowed buckets; storage faults retried and then failing the step (never a
quarantine). Faults S3 cannot be made to produce on demand (a 500, a 403, a body cut
short) come from a stand-in client here; tests/integration/test_hardening_ingestion.py
runs the same paths against a real S3 server."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

import ingestion.source as source_module
from dualmedia.contract import RejectReason
from dualmedia.storage import S3Uri
from ingestion.source import (
    READ_CHUNK,
    SHOWN_BYTES,
    Batch,
    DatasetSource,
    LineTooLong,
    MediaMissing,
    MediaNotAllowed,
    MediaUnavailable,
    split_lines,
)
from tests.conftest import make_settings

MB = 1024 * 1024


class CountingStream:
    """A byte stream that records every read call (size asked, size returned)."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)
        self.calls: list[tuple[int, int]] = []

    def read(self, n: int) -> bytes:
        chunk = self.buffer.read(n)
        self.calls.append((n, len(chunk)))
        return chunk


def test_lines_are_split_like_a_jsonl_reader() -> None:
    data = b'{"a": 1}\n\n{"b": 2}\r\n{"c": 3}'  # blank line, CRLF, no final newline
    assert list(split_lines(io.BytesIO(data).read, 1024, chunk_size=3)) == [
        b'{"a": 1}',
        b"",
        b'{"b": 2}',
        b'{"c": 3}',
    ]


def test_a_long_line_costs_one_pass_and_bounded_memory() -> None:
    # One 8 MB line between two normal ones, with the default 1 MB bound.
    long_line = b'{"id": "x", "text": "' + b"a" * (8 * MB) + b'"}'
    data = b'{"id": "first"}\n' + long_line + b'\n{"id": "last"}\n'
    stream = CountingStream(data)
    tracemalloc.start()
    lines = list(split_lines(stream.read, 1 * MB))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert lines[0] == b'{"id": "first"}' and lines[2] == b'{"id": "last"}'
    marker = lines[1]
    assert isinstance(marker, LineTooLong) and marker.reason == RejectReason.MANIFEST_LINE_TOO_LONG
    assert marker.length == len(long_line) and marker.limit == 1 * MB
    assert bytes(marker) == long_line[:SHOWN_BYTES]  # only the head is kept
    assert "line 2" in marker.message(2) and str(len(long_line)) in marker.message(2)
    # The work: the stream is read once, front to back, in fixed chunks (no byte is read
    # or re-joined twice: botocore's iter_lines re-splits the pending line per 1 KB).
    assert all(asked == READ_CHUNK for asked, _ in stream.calls)
    assert sum(got for _, got in stream.calls) == len(data)
    assert len(stream.calls) == len(data) // READ_CHUNK + 2  # full chunks, the rest, EOF
    # The memory: the over-long line is never assembled (its 8 MB would be ~8 MB here).
    assert peak < 1 * MB + 4 * READ_CHUNK + 64 * 1024


def test_a_line_at_the_bound_is_kept_whole() -> None:
    line = b"x" * 2048
    assert list(split_lines(io.BytesIO(line + b"\n").read, 2048, chunk_size=100)) == [line]
    (marker,) = split_lines(io.BytesIO(line + b"y\n").read, 2048, chunk_size=100)
    assert isinstance(marker, LineTooLong) and marker.length == 2049


# ---- media fetches --------------------------------------------------------------------
class Body:
    def __init__(self, data: bytes, cut: bool = False) -> None:
        self.data, self.cut = data, cut

    def read(self, n: int | None = None) -> bytes:
        return self.data[: len(self.data) // 2] if self.cut else self.data[:n]

    def close(self) -> None:
        pass


class ScriptedClient:
    """get_object answers from a script: an exception to raise or (data, cut)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[str] = []

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self.calls.append(f"s3://{Bucket}/{Key}")
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        data, cut = step
        return {"ContentLength": len(data), "Body": Body(data, cut)}


class StubStore:
    def __init__(self, settings: Any, client: ScriptedClient) -> None:
        self.settings = settings
        self.client = client


def _error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


def _source(tmp_path: Path, script: list[Any], **settings: Any) -> tuple[DatasetSource, Any]:
    client = ScriptedClient(script)
    store = StubStore(make_settings(tmp_path / "s", **settings), client)
    return DatasetSource(store, "s3://raw/ds"), client  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source_module, "FETCH_BACKOFF_S", 0.0)


URI = S3Uri("raw", "ds/b1/images/a.png")


def test_transient_errors_are_retried_then_the_object_is_read(tmp_path: Path) -> None:
    script = [_error("InternalError", 500), EndpointConnectionError(endpoint_url="x"),
              (b"png", True), (b"png", False)]  # fmt: skip
    source, client = _source(tmp_path, script)
    assert source.fetch(URI, 100) == b"png"
    assert len(client.calls) == 4


@pytest.mark.parametrize(
    "failure",
    [_error("ServiceUnavailable", 503), EndpointConnectionError(endpoint_url="http://s3")],
)
def test_storage_that_stays_down_fails_the_step(tmp_path: Path, failure: Exception) -> None:
    source, client = _source(tmp_path, [failure] * source_module.FETCH_ATTEMPTS)
    with pytest.raises(MediaUnavailable, match=r"did not answer after \d attempts") as info:
        source.fetch(URI, 100)
    assert not isinstance(info.value, MediaMissing)  # never a quarantine reason
    assert str(URI) in str(info.value) and "nothing was quarantined" in str(info.value)
    assert len(client.calls) == source_module.FETCH_ATTEMPTS


def test_access_denied_fails_at_once_and_only_a_missing_key_is_missing(tmp_path: Path) -> None:
    source, client = _source(tmp_path, [_error("AccessDenied", 403)])
    with pytest.raises(MediaUnavailable, match="AccessDenied"):
        source.fetch(URI, 100)
    assert len(client.calls) == 1
    source, _ = _source(tmp_path, [_error("NoSuchKey", 404)])
    with pytest.raises(MediaMissing, match="does not exist"):
        source.fetch(URI, 100)


def test_media_outside_the_allowed_buckets_is_never_requested(tmp_path: Path) -> None:
    source, client = _source(tmp_path, [], media_buckets=["shared-media"])
    batch = Batch("b1", S3Uri("raw", "ds/b1"), "f")
    with pytest.raises(MediaNotAllowed, match="bucket 'dualmedia-mlflow'") as info:
        source.media_uri(batch, "s3://dualmedia-mlflow/0/artifacts/model.safetensors")
    assert info.value.reason == RejectReason.MEDIA_BUCKET_NOT_ALLOWED
    assert "DUALMEDIA_MEDIA_BUCKETS" in str(info.value)
    with pytest.raises(MediaNotAllowed):
        source.fetch(S3Uri("dualmedia-lake", "snapshots/x"), 100)
    assert client.calls == []
    # The dataset's own bucket and the listed ones are fine.
    assert source.media_uri(batch, "s3://raw/other/a.png") == S3Uri("raw", "other/a.png")
    assert source.media_uri(batch, "s3://shared-media/a.png") == S3Uri("shared-media", "a.png")
    assert source.media_uri(batch, "images/a.png") == S3Uri("raw", "ds/b1/images/a.png")


def test_media_buckets_setting_reaches_child_processes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "s", media_buckets=["a", "b"])
    env = settings.child_env()
    assert json.loads(env["DUALMEDIA_MEDIA_BUCKETS"]) == ["a", "b"]
