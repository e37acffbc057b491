"""Ingestion step 2, validate: per batch, then one step that joins the batches.

    validate_batch(plan_uri, batch, settings)  -> the batch's summary   (any worker)
    finish_validation(plan_uri, settings)       -> the validation summary (once)
    validate_batches(plan_uri, settings)        -> both, in a row          (CLI, tests)

`validate_batch` checks every record of one new batch, quarantines the bad ones with a
reason, runs the batch's Great Expectations suite and stages the accepted rows. Batches
are independent, so the training DAG maps one task over each (Airflow dynamic task
mapping: each on whichever worker is free). What only the whole can decide is left to
`finish_validation`, which walks the batches in the plan's order:

- an id claimed by an earlier batch (or a carried-over one) is a duplicate: its record
  is moved to the quarantine (reason `duplicate_id`, as a serial pass would say);
- a batch's reject rate (duplicates included) against `max_reject_rate`;
- the Data Docs site is rendered from every batch's stored GX result.

Serial and mapped runs execute the same two functions, so they publish the same snapshot
(records, quarantine, id). Under the run prefix, each batch leaves:

    records/<batch>/part-*.parquet   accepted rows
    quarantine/<batch>.jsonl         rejected lines, in line order
    batches/<batch>.json             its summary, the ids it claimed, its GX result
"""

from __future__ import annotations

import io
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dualmedia.contract import DatasetSpec, parse_dataset_spec
from dualmedia.settings import Settings
from dualmedia.snapshot import Snapshot, record_schema
from dualmedia.storage import ObjectStore, S3Uri
from ingestion.checks import ParsedRecord, Rejection, check_media, parse_line
from ingestion.config import IngestConfig
from ingestion.expectations import Validator, record_table, summary_row
from ingestion.runs import IngestError, load_plan
from ingestion.shards import ShardWriter
from ingestion.source import Batch, DatasetSource

CHUNK = 64  # records whose media are fetched concurrently
DONE = "validated.json"  # written last by finish_validation: the step is done

Progress = Callable[[int], None]


def validate_batches(
    plan_uri: str,
    settings: Settings,
    progress: Progress | None = None,
    docs_dir: Path | None = None,
) -> dict[str, Any]:
    """Every new batch, one after the other, then `finish_validation`.

    Raises IngestError when a batch rejects more than the configured share of records
    or fails its suite; the quarantine and Data Docs are written either way."""
    store = ObjectStore(settings)
    plan = load_plan(store, plan_uri)
    if not _already_validated(store, plan):
        for name in plan["new_batches"]:
            validate_batch(plan_uri, name, settings, progress=progress)
    return finish_validation(plan_uri, settings, docs_dir=docs_dir)


def _already_validated(store: ObjectStore, plan: dict[str, Any]) -> bool:
    return bool(plan["up_to_date"]) or store.exists(S3Uri.parse(plan["run_uri"]).join(DONE))


def _batch_result_uri(run: S3Uri, batch: str) -> S3Uri:
    return run.join("batches", f"{batch}.json")


def validate_batch(
    plan_uri: str, batch: str, settings: Settings, progress: Progress | None = None
) -> dict[str, Any]:
    """Check one new batch of the plan and stage its rows, quarantine and GX result.
    Idempotent: a batch already validated returns its stored summary."""
    store = ObjectStore(settings)
    plan = load_plan(store, plan_uri)
    run = S3Uri.parse(plan["run_uri"])
    if batch not in plan["new_batches"]:
        raise IngestError(f"{plan_uri}: {batch!r} is not a new batch of this plan")
    result_uri = _batch_result_uri(run, batch)
    if _already_validated(store, plan) or store.exists(result_uri):
        if not store.exists(result_uri):
            return {"batch": batch, "skipped": True}
        return {**json.loads(store.read_text(result_uri))["summary"], "skipped": True}
    config = IngestConfig.model_validate(plan["config"])
    spec = parse_dataset_spec(plan["spec_text"])
    source = DatasetSource(store, plan["dataset_uri"])
    found = {b.name: b for b in source.batches()}.get(batch)
    if found is None or found.fingerprint != plan["batches"][batch]:
        raise IngestError(
            f"{plan['dataset_uri']}: batch {batch!r} changed since planning; run the plan again"
        )
    with tempfile.TemporaryDirectory(prefix="dualmedia-ingest-") as tmp:
        work = Path(tmp)
        summary, claimed, gx_result = _validate_batch(found, source, spec, config, work, progress)
        # A retry of this step replaces what an interrupted try left.
        store.delete_prefix(run.join("records", batch))
        store.upload_dir(work / "records" / batch, run.join("records", batch))
        store.upload_file(work / "quarantine.jsonl", run.join("quarantine", f"{batch}.jsonl"))
    # Written last: its presence means the batch is done.
    store.write_json(result_uri, {"summary": summary, "claimed": claimed, "gx": gx_result})
    return summary


def _carried_ids(store: ObjectStore, plan: dict[str, Any]) -> set[str]:
    """Ids of records kept from the previous snapshot (for duplicate detection)."""
    if not plan["previous_snapshot_uri"]:
        return set()
    carried = set(plan["carried_batches"])
    previous = Snapshot(store, plan["previous_snapshot_uri"])
    ids: set[str] = set()
    for table in previous.iter_tables(columns=["id", "batch"]):
        for record_id, batch in zip(
            table.column("id").to_pylist(), table.column("batch").to_pylist(), strict=True
        ):
            if batch in carried:
                ids.add(record_id)
    return ids


def _validate_batch(
    batch: Batch,
    source: DatasetSource,
    spec: DatasetSpec,
    config: IngestConfig,
    work: Path,
    progress: Progress | None,
) -> tuple[dict[str, Any], list[tuple[str, int]], dict[str, Any] | None]:
    """The batch's summary, the (id, line) pairs it claimed first, and its GX result.

    Only ids repeated within the batch are caught here; ids of earlier or carried-over
    batches are finish_validation's (it reads the previous snapshot once, not per task)."""
    seen_ids: set[str] = set()
    writer = ShardWriter(work / "records" / batch.name, record_schema(spec), config.shard_rows)
    reasons: Counter[str] = Counter()
    table_rows: list[dict[str, Any]] = []  # metadata only (no media): small
    claimed: list[tuple[str, int]] = []
    read = 0

    def outcomes() -> Iterator[dict[str, Any] | Rejection]:
        nonlocal read
        lines = (
            (n, raw) for n, raw in enumerate(source.manifest_lines(batch), start=1) if raw.strip()
        )
        with ThreadPoolExecutor(max_workers=config.fetch_workers) as pool:
            while chunk := list(islice(lines, CHUNK)):
                read += len(chunk)
                parsed = []
                for n, raw in chunk:
                    before = len(seen_ids)
                    p = parse_line(raw, n, spec, config, seen_ids)
                    if len(seen_ids) > before:  # the line claimed its id
                        claimed.append((p.id if isinstance(p, ParsedRecord) else p.record_id, n))
                    parsed.append(p)
                futures = [
                    pool.submit(check_media, p, batch, source, spec, config)
                    if isinstance(p, ParsedRecord)
                    else None
                    for p in parsed
                ]
                for p, future in zip(parsed, futures, strict=True):
                    yield future.result() if future is not None else p
                if progress:
                    progress(len(chunk))

    with open(work / "quarantine.jsonl", "w", encoding="utf-8") as quarantine:
        for outcome in outcomes():
            if isinstance(outcome, Rejection):
                reasons[outcome.reason.value] += 1
                quarantine.write(json.dumps(outcome.to_dict(batch.name), ensure_ascii=False) + "\n")
            else:
                writer.add(outcome)
                table_rows.append(summary_row(outcome, spec))
    writer.close()
    accepted = writer.written
    quarantined = sum(reasons.values())
    if accepted + quarantined != read:  # a real check: `python -O` drops asserts
        raise IngestError(
            f"batch {batch.name!r}: {read} records read but {accepted} accepted + "
            f"{quarantined} quarantined; nothing is published when a record would be lost"
        )
    suite_problems: list[str] = []
    expectations = gx_result = None
    if accepted:
        validator = Validator(work / "data_docs")
        outcome, gx_result = validator.validate(
            batch.name, record_table(table_rows, spec), spec, config
        )
        expectations = outcome.to_dict()
        if not outcome.success:
            failed = ", ".join(
                f"{f.expectation}({f.column}){' ' + json.dumps(f.detail) if f.detail else ''}"
                for f in outcome.failed
            )
            suite_problems.append(
                f"batch {batch.name!r} failed {len(outcome.failed)} expectations: {failed}"
            )
    summary = {
        "batch": batch.name,
        "read": read,
        "accepted": accepted,
        "quarantined": quarantined,
        "reasons": dict(sorted(reasons.items())),
        "expectations": expectations,
        "suite_problems": suite_problems,
    }
    return summary, claimed, gx_result


def finish_validation(
    plan_uri: str, settings: Settings, docs_dir: Path | None = None
) -> dict[str, Any]:
    """Join the validated batches: cross-batch duplicates, reject rates, Data Docs; write
    `validated.json` (or `validation-failed.json` and raise IngestError)."""
    store = ObjectStore(settings)
    plan = load_plan(store, plan_uri)
    run = S3Uri.parse(plan["run_uri"])
    done = run.join(DONE)
    if _already_validated(store, plan):
        summary = json.loads(store.read_text(done)) if store.exists(done) else {"status": "ok"}
        return {**summary, "skipped": True}
    missing = [b for b in plan["new_batches"] if not store.exists(_batch_result_uri(run, b))]
    if missing:
        raise IngestError(f"{plan['run_uri']}: batches {missing} are not validated yet")
    config = IngestConfig.model_validate(plan["config"])
    spec = parse_dataset_spec(plan["spec_text"])
    source = DatasetSource(store, plan["dataset_uri"])
    batches = {b.name: b for b in source.batches()}
    seen = _carried_ids(store, plan)
    per_batch = []
    with tempfile.TemporaryDirectory(prefix="dualmedia-docs-") as tmp:
        validator = Validator(Path(docs_dir) if docs_dir else Path(tmp) / "data_docs")
        for name in plan["new_batches"]:
            result = json.loads(store.read_text(_batch_result_uri(run, name)))
            claimed = result["claimed"]
            repeated = {record_id: line for record_id, line in claimed if record_id in seen}
            seen.update(record_id for record_id, _ in claimed)
            summary = result["summary"]
            if repeated:
                summary = _quarantine_duplicates(
                    store, run, batches[name], source, spec, config, summary, repeated
                )
            per_batch.append({**summary, "problems": _problems(summary, config)})
            if result["gx"] is not None:
                validator.add_result(name, result["gx"], spec, config)
        docs_index = validator.index()
        store.upload_dir(validator.docs_dir, run.join("data_docs"), skip_unchanged=False)
    problems = [p for b in per_batch for p in b["problems"]]
    summary = {
        "status": "failed" if problems else "ok",
        "dataset": plan["dataset"],
        "snapshot_id": plan["snapshot_id"],
        "batches": per_batch,
        "read": sum(b["read"] for b in per_batch),
        "accepted": sum(b["accepted"] for b in per_batch),
        "quarantined": sum(b["quarantined"] for b in per_batch),
        "reasons": dict(sum((Counter(b["reasons"]) for b in per_batch), Counter())),
        "quarantine_uri": str(run.join("quarantine")),
        "data_docs_uri": str(run.join("data_docs", "index.html")),
        "data_docs_local": str(docs_index) if docs_dir else None,
        "problems": problems,
    }
    if problems:
        store.write_json(run.join("validation-failed.json"), summary)
        raise IngestError(
            "ingestion refused the data: "
            + "; ".join(problems)
            + f". Quarantine: {summary['quarantine_uri']}; Data Docs: {summary['data_docs_uri']}"
        )
    store.write_json(done, summary)
    return summary


def _problems(summary: dict[str, Any], config: IngestConfig) -> list[str]:
    """Why a batch is refused: its reject rate, no acceptable record, its GX suite."""
    name, read, quarantined = summary["batch"], summary["read"], summary["quarantined"]
    problems = []
    reject_rate = quarantined / read if read else 0.0
    summary["reject_rate"] = round(reject_rate, 4)
    if reject_rate > config.max_reject_rate:
        problems.append(
            f"batch {name!r} rejected {quarantined} of {read} records "
            f"({reject_rate:.0%} > the {config.max_reject_rate:.0%} allowed)"
        )
    if read and not summary["accepted"]:
        problems.append(f"batch {name!r} has no acceptable record")
    return problems + summary["suite_problems"]


def _quarantine_duplicates(
    store: ObjectStore,
    run: S3Uri,
    batch: Batch,
    source: DatasetSource,
    spec: DatasetSpec,
    config: IngestConfig,
    summary: dict[str, Any],
    repeated: dict[str, int],
) -> dict[str, Any]:
    """Move the lines whose id an earlier batch claimed to the quarantine as duplicates
    (replacing another reason they had: a serial pass stops at the id), rewriting the
    batch's records and quarantine. Returns the batch's corrected summary."""
    lines = set(repeated.values())
    raw_lines = {
        n: raw for n, raw in enumerate(source.manifest_lines(batch), start=1) if n in lines
    }
    duplicates = {
        n: parse_line(raw_lines[n], n, spec, config, {record_id}).to_dict(batch.name)
        for record_id, n in repeated.items()
    }
    quarantine_uri = run.join("quarantine", f"{batch.name}.jsonl")
    kept = [
        json.loads(line)
        for line in store.read_text(quarantine_uri).splitlines()
        if line.strip() and json.loads(line)["line"] not in duplicates
    ]
    rows = sorted([*kept, *duplicates.values()], key=lambda r: r["line"])
    store.write_bytes(
        quarantine_uri,
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(),
    )
    schema = record_schema(spec)
    records = run.join("records", batch.name)
    dropped = pa.array(list(repeated), type=pa.string())
    with tempfile.TemporaryDirectory(prefix="dualmedia-dedup-") as tmp:
        writer = ShardWriter(Path(tmp), schema, config.shard_rows)
        for obj in list(store.list(records)):
            table = pq.read_table(io.BytesIO(store.read_bytes(S3Uri(records.bucket, obj.key))))
            keep = pc.invert(pc.is_in(table.column("id"), value_set=dropped))
            writer.add_table(table.filter(keep).cast(schema))
        writer.close()
        store.delete_prefix(records)
        store.upload_dir(Path(tmp), records)
        accepted = writer.written
    reasons = Counter(r["reason"] for r in rows)
    return {
        **summary,
        "accepted": accepted,
        "quarantined": len(rows),
        "reasons": dict(sorted(reasons.items())),
    }
