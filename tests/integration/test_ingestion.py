"""Ingestion against a real S3 server: quarantine reasons, idempotence, new batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualmedia import modalities
from dualmedia.contract import ContractError, RejectReason
from dualmedia.datasets import upload_dataset
from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot
from dualmedia.storage import ObjectStore
from ingestion.config import IngestConfig
from ingestion.pipeline import IngestError, ingest, plan_ingest
from synthetic import GeneratorKnobs, generate_dataset

pytestmark = pytest.mark.integration


def _upload(folder: Path, settings: Settings, name: str) -> str:
    uri = f"s3://{settings.raw_bucket}/{name}"
    upload_dataset(folder, uri, ObjectStore(settings))
    return uri


def _quarantine(store: ObjectStore, snapshot_uri: str) -> list[dict]:
    text = store.read_text(f"{snapshot_uri}/quarantine/quarantine.jsonl")
    return [json.loads(line) for line in text.splitlines()]


def test_every_bad_kind_is_quarantined_with_its_reason(
    s3_settings: Settings, tmp_path: Path
) -> None:
    gen = generate_dataset(tmp_path / "ds", 260, seed=7, knobs=GeneratorKnobs(corrupt_rate=0.1))
    # Every kind the dataset's modalities can have is injected (this one declares no video).
    undeclared = set(modalities.get("video").reasons)
    assert set(gen.expected_rejects.values()) == {r.value for r in RejectReason} - undeclared
    uri = _upload(tmp_path / "ds", s3_settings, "bad-kinds")
    summary = ingest(uri, s3_settings)
    store = ObjectStore(s3_settings)

    got = {}
    for q in _quarantine(store, summary["snapshot_uri"]):
        key = f"line:{q['line']}" if f"line:{q['line']}" in gen.expected_rejects else q["id"]
        got[key] = q["reason"]
        assert q["message"]  # names the record and the field
        assert (q["id"] or f"line {q['line']}") in q["message"]
    assert got == gen.expected_rejects

    snap = Snapshot(store, summary["snapshot_uri"])
    table = snap.table(columns=["id"])
    accepted = set(table.column("id").to_pylist())
    assert summary["read"] == 260
    assert summary["accepted"] + summary["quarantined"] == summary["read"]
    assert len(accepted) == summary["accepted"] == 260 - len(gen.expected_rejects)
    assert not accepted & {k for k in gen.expected_rejects if not k.startswith("line:")}
    assert sum(summary["reasons"].values()) == summary["quarantined"]
    assert store.exists(summary["data_docs_uri"])


def test_rerun_is_a_noop_and_new_batch_makes_a_new_snapshot(
    s3_settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "ds"
    generate_dataset(folder, 120, seed=3)
    uri = _upload(folder, s3_settings, "growing")
    first = ingest(uri, s3_settings)
    assert first["reused"] is False

    again = ingest(uri, s3_settings)
    assert again["reused"] is True
    assert again["snapshot_id"] == first["snapshot_id"]

    generate_dataset(folder, 80, seed=3, batch="batch-0002", start_index=120)
    _upload(folder, s3_settings, "growing")
    plan = plan_ingest(uri, s3_settings)
    assert plan["new_batches"] == ["batch-0002"]  # only the new batch is fetched
    assert plan["carried_batches"] == ["batch-0001"]
    second = ingest(uri, s3_settings)
    assert second["snapshot_id"] != first["snapshot_id"]
    store = ObjectStore(s3_settings)
    old_ids = set(Snapshot(store, first["snapshot_uri"]).table(["id"]).column("id").to_pylist())
    new = Snapshot(store, second["snapshot_uri"]).table(["id", "batch"])
    new_ids = set(new.column("id").to_pylist())
    assert old_ids < new_ids
    assert set(new.column("batch").to_pylist()) == {"batch-0001", "batch-0002"}
    assert second["read"] == 200


def test_same_split_for_the_same_id_across_snapshots(s3_settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    generate_dataset(folder, 100, seed=5)
    uri = _upload(folder, s3_settings, "splits")
    summary = ingest(uri, s3_settings)
    store = ObjectStore(s3_settings)
    table = Snapshot(store, summary["snapshot_uri"]).table(["id", "split"])
    splits = dict(
        zip(table.column("id").to_pylist(), table.column("split").to_pylist(), strict=True)
    )
    assert set(splits.values()) == {"train", "val", "test"}
    # A stricter config is a different recipe: a new snapshot, the same splits.
    stricter = ingest(uri, s3_settings, IngestConfig(bounds={"text": {"max_chars": 4000}}))
    assert stricter["snapshot_id"] != summary["snapshot_id"]
    table2 = Snapshot(store, stricter["snapshot_uri"]).table(["id", "split"])
    assert (
        dict(zip(table2.column("id").to_pylist(), table2.column("split").to_pylist(), strict=True))
        == splits
    )


def test_missing_or_invalid_dataset_yaml_fails_before_reading(
    s3_settings: Settings, tmp_path: Path
) -> None:
    store = ObjectStore(s3_settings)
    store.write_bytes(f"s3://{s3_settings.raw_bucket}/no-spec/batch-1/manifest.jsonl", b"{}\n")
    with pytest.raises(ContractError, match=r"no-spec/dataset\.yaml: missing"):
        ingest(f"s3://{s3_settings.raw_bucket}/no-spec", s3_settings)
    store.write_bytes(
        f"s3://{s3_settings.raw_bucket}/bad-spec/dataset.yaml", b"name: x\nmodalities: [smell]\n"
    )
    with pytest.raises(
        ContractError, match=r"bad-spec/dataset\.yaml: invalid dataset spec: modalities"
    ):
        ingest(f"s3://{s3_settings.raw_bucket}/bad-spec", s3_settings)


def test_too_many_rejects_fail_the_step_but_reports_are_written(
    s3_settings: Settings, tmp_path: Path
) -> None:
    generate_dataset(tmp_path / "ds", 60, seed=11, knobs=GeneratorKnobs(corrupt_rate=0.5))
    uri = _upload(tmp_path / "ds", s3_settings, "mostly-bad")
    with pytest.raises(IngestError, match=r"rejected \d+ of 60 records") as info:
        ingest(uri, s3_settings)
    plan = plan_ingest(uri, s3_settings)
    store = ObjectStore(s3_settings)
    assert not store.is_committed(plan["snapshot_uri"])  # no half-written snapshot
    report = json.loads(
        store.read_text(plan["plan_uri"].replace("plan.json", "validation-failed.json"))
    )
    assert report["status"] == "failed"
    assert report["accepted"] + report["quarantined"] == report["read"] == 60
    assert store.exists(report["data_docs_uri"])
    assert report["quarantine_uri"] in str(info.value)


def test_failing_expectations_fail_the_step(s3_settings: Settings, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "ds", 120, seed=2)
    uri = _upload(tmp_path / "ds", s3_settings, "imbalanced")
    # Bounds no real batch meets: every class must hold at least 60% of the records.
    strict = IngestConfig(min_class_share=0.6)
    with pytest.raises(IngestError, match=r"failed .* expectations: .*class_share_min"):
        ingest(uri, s3_settings, strict)


def test_media_by_absolute_s3_uri(s3_settings: Settings, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "ds", 30, seed=9, knobs=GeneratorKnobs(missing_modality_rate=0.0))
    uri = _upload(tmp_path / "ds", s3_settings, "absolute")
    store = ObjectStore(s3_settings)
    lines = store.read_text(f"{uri}/batch-0001/manifest.jsonl").splitlines()
    rewritten = []
    for line in lines[:10]:
        record = json.loads(line)
        record["id"] = "abs-" + record["id"]
        for modality in ("image", "audio"):
            record[modality] = f"{uri}/batch-0001/{record[modality]}"
        rewritten.append(json.dumps(record))
    store.write_bytes(f"{uri}/batch-abs/manifest.jsonl", ("\n".join(rewritten) + "\n").encode())
    summary = ingest(uri, s3_settings)
    assert summary["quarantined"] == 0
    table = Snapshot(store, summary["snapshot_uri"]).table(["id", "image", "audio"])
    rows = {r["id"]: r for r in table.to_pylist()}
    for line in lines[:10]:
        original = rows[json.loads(line)["id"]]
        copy = rows["abs-" + json.loads(line)["id"]]
        assert copy["image"] == original["image"] and copy["audio"] == original["audio"]


def test_batches_validated_apart_publish_the_serial_snapshot(
    s3_settings: Settings, tmp_path: Path
) -> None:
    """The DAG validates each batch in its own mapped task, in any order, on any worker;
    `finish_validation` then joins them. The snapshot is the serial one: same id, same
    rows, same quarantine, including ids repeated across batches."""
    from ingestion.pipeline import publish_snapshot
    from ingestion.validation import finish_validation, validate_batch

    folder = tmp_path / "ds"
    for i in range(3):
        generate_dataset(folder, 30, seed=4, batch=f"batch-000{i + 1}", start_index=30 * i)
    first = [
        json.loads(x)
        for x in (folder / "batch-0001" / "manifest.jsonl").read_text().split("\n")
        if x
    ]
    third = folder / "batch-0003" / "manifest.jsonl"
    lines = [json.loads(x) for x in third.read_text().splitlines() if x]
    lines[5]["id"] = first[0]["id"]  # good media, id of an earlier batch
    lines.append(first[1])  # id of an earlier batch, and media this batch does not have
    third.write_text("".join(json.dumps(x) + "\n" for x in lines))
    uri = _upload(folder, s3_settings, "apart")

    serial_settings = s3_settings.model_copy(update={"lake_bucket": "lake-serial"})
    mapped_settings = s3_settings.model_copy(update={"lake_bucket": "lake-mapped"})
    for lake in ("lake-serial", "lake-mapped"):
        ObjectStore(s3_settings).ensure_bucket(lake)
    serial = ingest(uri, serial_settings)

    plan = plan_ingest(uri, mapped_settings)
    assert plan["new_batches"] == ["batch-0001", "batch-0002", "batch-0003"]
    for batch in reversed(plan["new_batches"]):  # the order workers happen to finish in
        validate_batch(plan["plan_uri"], batch, mapped_settings)
    assert validate_batch(plan["plan_uri"], "batch-0002", mapped_settings)["skipped"]
    finish_validation(plan["plan_uri"], mapped_settings)
    mapped = publish_snapshot(plan["plan_uri"], mapped_settings)

    assert mapped["snapshot_id"] == serial["snapshot_id"]
    for key in ("read", "accepted", "quarantined", "reasons", "splits"):
        assert mapped[key] == serial[key], key
    assert serial["reasons"] == {"duplicate_id": 2} and serial["read"] == 91
    duplicates = {
        (q["batch"], q["id"]) for q in _quarantine(ObjectStore(s3_settings), mapped["snapshot_uri"])
    }
    assert duplicates == {("batch-0003", first[0]["id"]), ("batch-0003", first[1]["id"])}
    store = ObjectStore(s3_settings)
    assert _quarantine(store, mapped["snapshot_uri"]) == _quarantine(store, serial["snapshot_uri"])
    tables = [Snapshot(store, s["snapshot_uri"]).table().sort_by("id") for s in (serial, mapped)]
    assert tables[0].equals(tables[1])
    assert tables[0].num_rows == 89
