"""Bring-your-own-data: check a local dataset folder against the contract and upload it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dualmedia.contract import DATASET_FILE, MANIFEST_FILE, ContractError, load_dataset_spec
from dualmedia.storage import ObjectStore, ProgressFn, S3Uri


def find_batches(folder: Path) -> list[str]:
    """Names of the batch folders (those holding a manifest.jsonl), sorted."""
    return sorted(p.parent.name for p in Path(folder).glob(f"*/{MANIFEST_FILE}"))


def check_dataset_folder(folder: Path) -> dict[str, Any]:
    """Validate a folder's layout before anything is uploaded; ContractError if wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ContractError(f"{folder}: not a folder")
    spec = load_dataset_spec(folder)
    batches = find_batches(folder)
    if not batches:
        raise ContractError(
            f"{folder}: no batch found; a batch is a sub-folder with a {MANIFEST_FILE} "
            f"(e.g. {folder}/batch-0001/{MANIFEST_FILE})"
        )
    return {"name": spec.name, "batches": batches}


def upload_dataset(
    folder: Path, uri: str, store: ObjectStore, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Upload a dataset folder to `s3://bucket/dataset`; unchanged files are skipped.

    `dataset.yaml` is uploaded last, so a reader never finds a spec whose batches are
    still on their way.
    """
    folder = Path(folder)
    info = check_dataset_folder(folder)
    target = S3Uri.parse(uri)
    if not target.key:
        raise ContractError(f"{uri}: give a dataset prefix, e.g. s3://{target.bucket}/my-dataset")
    store.ensure_bucket(target.bucket)
    uploaded = skipped = 0
    for batch in info["batches"]:
        counts = store.upload_dir(folder / batch, target.join(batch), progress=progress)
        uploaded += counts["uploaded"]
        skipped += counts["skipped"]
    store.upload_file(folder / DATASET_FILE, target.join(DATASET_FILE))
    return {
        "uri": str(target),
        "dataset": info["name"],
        "batches": info["batches"],
        "files_uploaded": uploaded + 1,
        "files_unchanged": skipped,
    }


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
