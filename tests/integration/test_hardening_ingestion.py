"""Ingestion faults and trust against a real S3 server (rclone serve s3): storage going
away mid-run fails the step and quarantines nothing; media in other buckets is never
read; an over-long manifest line is refused without being assembled; the count check
is a real error."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import ingestion.source as source_module
from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot
from dualmedia.stack import Stack
from dualmedia.storage import ObjectStore, S3Uri
from ingestion.pipeline import IngestError, ingest, plan_ingest, publish_snapshot
from ingestion.source import SHOWN_BYTES, DatasetSource, LineTooLong, MediaUnavailable
from ingestion.validation import validate_batches
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

SPEC = """name: {name}
modalities: [text, image]
labels:
  sentiment: {{type: categorical, classes: [negative, positive]}}
"""


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def record(i: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"r-{i:04d}",
        "text": f"the parcel number {i} arrived {'broken' if i % 2 else 'fine'}",
        "image": f"images/r-{i:04d}.png",
        "labels": {"sentiment": "negative" if i % 2 else "positive"},
        **fields,
    }


def upload(store: ObjectStore, uri: str, lines: list[bytes], images: range) -> None:
    name = uri.rsplit("/", 1)[-1]
    store.write_bytes(f"{uri}/dataset.yaml", SPEC.format(name=name).encode())
    for i in images:
        store.write_bytes(f"{uri}/b1/images/r-{i:04d}.png", png(i))
    store.write_bytes(f"{uri}/b1/manifest.jsonl", b"".join(line + b"\n" for line in lines))


def dataset(
    store: ObjectStore, settings: Settings, n: int, extra: dict[int, dict] | None = None
) -> str:
    uri = f"s3://{settings.raw_bucket}/ds-{uuid.uuid4().hex[:8]}"
    extra = extra or {}
    lines = [json.dumps(record(i, **extra.get(i, {}))).encode() for i in range(n)]
    upload(store, uri, lines, range(n))
    return uri


def quarantine(store: ObjectStore, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    text = store.read_text(summary["quarantine_uri"])
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {row["id"] or f"line:{row['line']}": row for row in rows}


# ---- S3 unreachable mid-ingestion -----------------------------------------------------
@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[tuple[Settings, Stack]]:
    """A private S3 server this test may stop (one S3 call attempt: faults show at once)."""
    settings = make_settings(tmp_path / "stack", s3_max_attempts=1)
    stack = Stack(settings, only=["s3"])
    stack.up()
    yield settings, stack
    stack.down()


def test_s3_going_away_mid_ingestion_fails_the_step_and_quarantines_nothing(
    own_stack: tuple[Settings, Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, stack = own_stack
    monkeypatch.setattr(source_module, "FETCH_BACKOFF_S", 0.01)
    store = ObjectStore(settings)
    uri = dataset(store, settings, 150)  # three chunks of media fetches
    plan = plan_ingest(uri, settings)
    calls = []

    def progress(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            stack.down()  # S3 goes away after the first 64 records
        elif len(calls) == 2:
            stack.up()  # ...and is back before the step would write its reports

    with pytest.raises(MediaUnavailable, match=r"did not answer after \d attempts") as info:
        validate_batches(plan["plan_uri"], settings, progress=progress)
    assert "nothing was quarantined" in str(info.value) and uri in str(info.value)
    assert len(calls) == 1  # the step stopped at the first record it could not fetch
    stack.up()
    store = ObjectStore(settings)
    run = S3Uri.parse(plan["plan_uri"].rsplit("/", 1)[0])
    written = [o.key[len(run.prefix) :] for o in store.list(run)]
    assert written == ["plan.json"]  # no quarantine, no records, no report

    # Once storage is back, the same step accepts every record.
    summary = validate_batches(plan["plan_uri"], settings)
    assert (summary["read"], summary["accepted"], summary["quarantined"]) == (150, 150, 0)
    assert publish_snapshot(plan["plan_uri"], settings)["accepted"] == 150


# ---- media in other buckets -----------------------------------------------------------
@pytest.fixture
def cross_bucket(s3_settings: Settings) -> tuple[Settings, dict[str, Any], str]:
    shared = "dualmedia-shared-media"
    settings = s3_settings.model_copy(update={"media_buckets": [shared]})
    store = ObjectStore(settings)
    store.ensure_bucket(shared)
    secret = f"s3://{settings.artifacts_bucket}/0/secret/{uuid.uuid4().hex}.png"
    store.write_bytes(secret, png(999))
    store.write_bytes(f"s3://{shared}/ok.png", png(998))
    lake = f"s3://{settings.lake_bucket}/snapshots/other.png"
    store.write_bytes(lake, png(997))
    extra = {5: {"image": secret}, 6: {"image": f"s3://{shared}/ok.png"}, 7: {"image": lake}}
    uri = dataset(store, settings, 30, extra)
    return settings, ingest(uri, settings), secret


def test_media_outside_the_allowed_buckets_is_quarantined_never_copied(
    cross_bucket: tuple[Settings, dict[str, Any], str],
) -> None:
    settings, summary, _ = cross_bucket
    store = ObjectStore(settings)
    rejected = quarantine(store, summary)
    assert set(rejected) == {"r-0005", "r-0007"}
    assert f"bucket '{settings.artifacts_bucket}'" in rejected["r-0005"]["message"]
    assert f"bucket '{settings.lake_bucket}'" in rejected["r-0007"]["message"]
    assert "may not read media" in rejected["r-0005"]["message"]
    ids = set(Snapshot(store, summary["snapshot_uri"]).table(["id"]).column("id").to_pylist())
    assert "r-0006" in ids  # a listed bucket (DUALMEDIA_MEDIA_BUCKETS) is fine
    assert not ids & {"r-0005", "r-0007"}
    assert summary["read"] == 30 == summary["accepted"] + summary["quarantined"]


def test_media_outside_the_allowed_buckets_has_its_own_reason(
    cross_bucket: tuple[Settings, dict[str, Any], str],
) -> None:
    settings, summary, _ = cross_bucket
    rejected = quarantine(ObjectStore(settings), summary)
    assert {r["reason"] for r in rejected.values()} == {"media_bucket_not_allowed"}


# ---- long manifest lines --------------------------------------------------------------
@pytest.fixture
def long_line(s3_settings: Settings) -> tuple[str, int]:
    store = ObjectStore(s3_settings)
    uri = f"s3://{s3_settings.raw_bucket}/ds-{uuid.uuid4().hex[:8]}"
    lines = [json.dumps(record(i)).encode() for i in range(30)]
    huge = json.dumps(record(99, text="a" * (3 * 1024 * 1024))).encode()  # 3 MB > 1 MB
    lines.insert(2, huge)
    upload(store, uri, lines, range(30))
    return uri, len(huge)


def test_an_over_long_manifest_line_is_refused_without_being_assembled(
    s3_settings: Settings, long_line: tuple[str, int]
) -> None:
    uri, size = long_line
    store = ObjectStore(s3_settings)
    source = DatasetSource(store, uri)
    (batch,) = source.batches()
    lines = list(source.manifest_lines(batch))
    assert len(lines) == 31
    marker = lines[2]
    assert isinstance(marker, LineTooLong) and marker.length == size
    assert len(marker) == SHOWN_BYTES  # the rest of the 3 MB line was never kept
    assert not any(isinstance(line, LineTooLong) for i, line in enumerate(lines) if i != 2)

    summary = ingest(uri, s3_settings)
    rejected = quarantine(store, summary)
    assert list(rejected) == ["line:3"]
    assert len(rejected["line:3"]["manifest_line"]) <= 2 * SHOWN_BYTES
    assert summary["read"] == 31 and summary["accepted"] == 30


def test_an_over_long_manifest_line_has_its_own_reason(
    s3_settings: Settings, long_line: tuple[str, int]
) -> None:
    uri, size = long_line
    summary = ingest(uri, s3_settings)
    row = quarantine(ObjectStore(s3_settings), summary)["line:3"]
    assert row["reason"] == "manifest_line_too_long"
    assert str(size) in row["message"]


# ---- the count check ------------------------------------------------------------------
def test_a_lost_record_is_a_real_error_not_an_assert(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ingestion.validation as validation

    class LosesOneRow(validation.ShardWriter):  # type: ignore[misc,name-defined]
        lost = False

        def add(self, row: dict[str, Any]) -> None:
            if not LosesOneRow.lost:
                LosesOneRow.lost = True
                return
            super().add(row)

    store = ObjectStore(s3_settings)
    uri = dataset(store, s3_settings, 20)
    monkeypatch.setattr(validation, "ShardWriter", LosesOneRow)
    with pytest.raises(IngestError, match=r"20 records read but 19 accepted \+ 0 quarantined"):
        ingest(uri, s3_settings)
    assert not store.is_committed(plan_ingest(uri, s3_settings)["snapshot_uri"])
