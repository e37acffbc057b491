"""The CLI as users run it: exit codes, messages without tracebacks, --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore
from synthetic import generate_dataset

pytestmark = pytest.mark.integration


def run_cli(
    settings: Settings, *args: str, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """`dualmedia ARGS` with these settings as DUALMEDIA_* variables, minus `unset`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUALMEDIA_")}
    env.update(settings.child_env())
    for name in unset:
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "dualmedia.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_help_explains_every_command(s3_settings: Settings) -> None:
    result = run_cli(s3_settings, "--help")
    assert result.returncode == 0
    for command in ("up", "down", "status", "upload", "generate", "ingest"):
        assert command in result.stdout


def test_upload_refuses_a_folder_without_dataset_yaml(
    s3_settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "batch-1").mkdir()
    (tmp_path / "batch-1" / "manifest.jsonl").write_text("{}\n")
    result = run_cli(s3_settings, "upload", str(tmp_path), f"s3://{s3_settings.raw_bucket}/x")
    assert result.returncode == 1
    assert "dataset.yaml: missing" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(ObjectStore(s3_settings).list(f"s3://{s3_settings.raw_bucket}/x"))


def test_upload_refuses_an_invalid_dataset_yaml(s3_settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "dataset.yaml").write_text("name: x\nmodalities: [text, smell]\n")
    result = run_cli(s3_settings, "upload", str(tmp_path), f"s3://{s3_settings.raw_bucket}/y")
    assert result.returncode == 1
    assert "modalities.1" in result.stderr and "Traceback" not in result.stderr


def test_upload_then_upload_again_skips_unchanged(s3_settings: Settings, tmp_path: Path) -> None:
    generate_dataset(tmp_path / "ds", 20, seed=1)
    target = f"s3://{s3_settings.raw_bucket}/cli-upload"
    first = run_cli(s3_settings, "upload", str(tmp_path / "ds"), target, "--json")
    assert first.returncode == 0, first.stderr
    body = json.loads(first.stdout)
    assert body["batches"] == ["batch-0001"] and body["files_unchanged"] == 0
    second = json.loads(
        run_cli(s3_settings, "upload", str(tmp_path / "ds"), target, "--json").stdout
    )
    assert second["files_uploaded"] == 1  # only dataset.yaml, written last on purpose
    assert second["files_unchanged"] == body["files_uploaded"] - 1


def test_generate_to_s3_then_ingest(s3_settings: Settings) -> None:
    target = f"s3://{s3_settings.raw_bucket}/cli-generated"
    gen = run_cli(s3_settings, "generate", target, "--n", "40", "--seed", "4", "--json")
    assert gen.returncode == 0, gen.stderr
    assert json.loads(gen.stdout)["n_records"] == 40
    ingested = run_cli(s3_settings, "ingest", target, "--json")
    assert ingested.returncode == 0, ingested.stderr
    summary = json.loads(ingested.stdout)
    assert summary["accepted"] == 40 and summary["quarantined"] == 0
    assert summary["snapshot_uri"].startswith(f"s3://{s3_settings.lake_bucket}/snapshots/")
    human = run_cli(s3_settings, "ingest", target)
    assert "up to date" in human.stderr
    assert summary["snapshot_id"] in human.stdout


def test_ingest_of_a_missing_dataset_is_one_clear_line(s3_settings: Settings) -> None:
    result = run_cli(s3_settings, "ingest", f"s3://{s3_settings.raw_bucket}/nothing-here")
    assert result.returncode == 1
    assert "nothing-here/dataset.yaml: missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_errors_are_json_with_json_and_tracebacks_only_with_debug(
    s3_settings: Settings, tmp_path: Path
) -> None:
    missing = str(tmp_path / "nowhere")
    target = f"s3://{s3_settings.raw_bucket}/z"
    result = run_cli(s3_settings, "upload", missing, target, "--json")
    assert result.returncode == 1
    error = json.loads(result.stdout)  # the whole stdout is one JSON object
    assert error["error"] == "ContractError" and error["command"] == "upload"
    assert "not a folder" in error["message"] and error["hint"]
    assert "Traceback" not in result.stderr
    debug = run_cli(s3_settings, "upload", missing, target, "--debug")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "not a folder" in debug.stderr
