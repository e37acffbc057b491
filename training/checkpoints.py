"""Checkpoints in object storage, and the state that lets a killed training resume.

    s3://<lake>/checkpoints/<run-name>/run.json            RunState (MLflow run ids, stages)
    s3://<lake>/checkpoints/<run-name>/<stage>/last.ckpt   Lightning checkpoint, every N steps
    s3://<lake>/checkpoints/<run-name>/<stage>/final.ckpt  the stage's end state

Lightning writes each checkpoint to a local folder and `ObjectStoreCheckpointIO` uploads it
right after (Lightning's own s3:// support needs s3fs; this goes through ObjectStore, the
same client and settings as the rest of the platform). A single PUT replaces `last.ckpt`
atomically, so a kill mid-upload leaves the previous one intact.

Nothing read back from object storage is trusted as code: whoever can write the lake
bucket must not run code in the trainer. Checkpoints are only ever loaded with
`torch.load(weights_only=True)` (tensors and plain data; a pickle that names any other
callable is refused before anything runs), and `run.json` is parsed as JSON and validated
against the RunState schema. Either failing stops a resume with `CheckpointRefused`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pydantic import ConfigDict, StringConstraints, TypeAdapter, ValidationError

from dualmedia.storage import ObjectStore, S3Uri

RUN_STATE_FILE = "run.json"
LAST_CHECKPOINT = "last.ckpt"
FINAL_CHECKPOINT = "final.ckpt"
MAX_RUN_STATE_BYTES = 4 * 1024 * 1024  # a run.json is a few KB; refuse absurd ones unread


# Stage names become object keys (`<root>/<stage>/last.ckpt`): plain names only.
StageName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class CheckpointRefused(RuntimeError):
    """A checkpoint or run state read back from storage cannot be loaded safely."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded as tensors and plain data only (weights_only=True).

    Raises CheckpointRefused when the file holds anything else (a tampered pickle is
    refused before any of its code can run) or is not a checkpoint at all."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to load untrusted bytes is a refusal
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointRefused(
            f"{path}: refused to load this checkpoint: it holds more than tensors and plain "
            f"data (tampered, or not written by dualmedia), or is damaged ({first[:300]}). "
            "Nothing in it was run. Delete the run's checkpoints or train without --resume."
        ) from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(state, Mapping)
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
        or not isinstance(step, int)
        or isinstance(step, bool)
        or step < 0
    ):
        raise CheckpointRefused(
            f"{path}: not a training checkpoint (needs a state_dict of tensors and a "
            "global_step); delete the run's checkpoints or train without --resume"
        )
    return checkpoint


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

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """What `Trainer.fit(ckpt_path=...)` resumes from: always weights_only=True."""
        return load_checkpoint(path)


@dataclass
class RunState:
    """What a resumed training needs to continue where a killed one stopped."""

    run_name: str
    snapshot_uri: str
    config_digest: str
    parent_run_id: str | None = None
    stage_run_ids: dict[StageName, str] = field(default_factory=dict)
    completed_stages: list[StageName] = field(default_factory=list)
    stage_results: dict[StageName, dict[str, Any]] = field(default_factory=dict)
    finished: bool = False
    summary: dict[str, Any] | None = None

    # Read back from storage: validated as data (types, no unknown fields).
    __pydantic_config__ = ConfigDict(extra="forbid")

    def save(self, store: ObjectStore, root: S3Uri) -> None:
        store.write_json(root.join(RUN_STATE_FILE), asdict(self))

    @classmethod
    def load(cls, store: ObjectStore, root: S3Uri) -> RunState | None:
        uri = root.join(RUN_STATE_FILE)
        info = store.head(uri)
        if info is None:
            return None
        if info.size > MAX_RUN_STATE_BYTES:
            raise CheckpointRefused(
                f"{uri}: {info.size} bytes, more than a run state ever holds "
                f"({MAX_RUN_STATE_BYTES}); not read. Delete it or train without --resume."
            )
        try:
            return _RUN_STATE.validate_json(store.read_bytes(uri))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
                for err in exc.errors()[:5]
            )
            raise CheckpointRefused(
                f"{uri}: not a valid run state ({problems}); delete it or train without --resume"
            ) from None

    def check_matches(self, snapshot_uri: str, config_digest: str) -> None:
        if self.snapshot_uri != snapshot_uri or self.config_digest != config_digest:
            raise ValueError(
                f"cannot resume run {self.run_name!r}: it was started on {self.snapshot_uri} "
                f"with config {self.config_digest[:12]}, not {snapshot_uri} with "
                f"{config_digest[:12]}; train without --resume to start over"
            )


_RUN_STATE = TypeAdapter(RunState)


def download_checkpoint(
    store: ObjectStore, root: S3Uri, stage: str, name: str, local_dir: Path
) -> Path | None:
    """Fetch `<root>/<stage>/<name>` into `local_dir/<stage>/`; None when it does not exist."""
    uri = root.join(stage, name)
    if not store.exists(uri):
        return None
    return store.download_file(uri, Path(local_dir) / stage / name)
