"""Checkpoints in object storage, and the state that lets a killed training resume.

    s3://<lake>/checkpoints/<run-name>/run.json            RunState (MLflow run ids, stages)
    s3://<lake>/checkpoints/<run-name>/<stage>/last.ckpt   Lightning checkpoint, every N steps
    s3://<lake>/checkpoints/<run-name>/<stage>/final.ckpt  the stage's end state

Lightning writes each checkpoint to a local folder and `ObjectStoreCheckpointIO` uploads it
right after (Lightning's own s3:// support needs s3fs; this goes through ObjectStore, the
same client and settings as the rest of the platform). A single PUT replaces `last.ckpt`
atomically, so a kill mid-upload leaves the previous one intact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from dualmedia.storage import ObjectStore, S3Uri

RUN_STATE_FILE = "run.json"
LAST_CHECKPOINT = "last.ckpt"
FINAL_CHECKPOINT = "final.ckpt"


class ObjectStoreCheckpointIO(TorchCheckpointIO):
    """Save locally (torch format, as Lightning does), then mirror to object storage."""

    def __init__(self, store: ObjectStore, local_root: Path, remote_root: S3Uri) -> None:
        super().__init__()
        self.store = store
        self.local_root = Path(local_root)
        self.remote_root = remote_root

    def remote(self, path: str | Path) -> S3Uri:
        return self.remote_root.join(
            Path(path).resolve().relative_to(self.local_root.resolve()).as_posix()
        )

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        self.store.upload_file(Path(path), self.remote(path))

    def remove_checkpoint(self, path: str | Path) -> None:
        super().remove_checkpoint(path)
        self.store.delete(self.remote(path))


@dataclass
class RunState:
    """What a resumed training needs to continue where a killed one stopped."""

    run_name: str
    snapshot_uri: str
    config_digest: str
    parent_run_id: str | None = None
    stage_run_ids: dict[str, str] = field(default_factory=dict)
    completed_stages: list[str] = field(default_factory=list)
    stage_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished: bool = False
    summary: dict[str, Any] | None = None

    def save(self, store: ObjectStore, root: S3Uri) -> None:
        store.write_json(root.join(RUN_STATE_FILE), asdict(self))

    @classmethod
    def load(cls, store: ObjectStore, root: S3Uri) -> RunState | None:
        uri = root.join(RUN_STATE_FILE)
        if not store.exists(uri):
            return None
        return cls(**json.loads(store.read_text(uri)))

    def check_matches(self, snapshot_uri: str, config_digest: str) -> None:
        if self.snapshot_uri != snapshot_uri or self.config_digest != config_digest:
            raise ValueError(
                f"cannot resume run {self.run_name!r}: it was started on {self.snapshot_uri} "
                f"with config {self.config_digest[:12]}, not {snapshot_uri} with "
                f"{config_digest[:12]}; train without --resume to start over"
            )


def download_checkpoint(
    store: ObjectStore, root: S3Uri, stage: str, name: str, local_dir: Path
) -> Path | None:
    """Fetch `<root>/<stage>/<name>` into `local_dir/<stage>/`; None when it does not exist."""
    uri = root.join(stage, name)
    if not store.exists(uri):
        return None
    return store.download_file(uri, Path(local_dir) / stage / name)
