"""Model archives (.mar) for TorchServe, built with torch-model-archiver.

An archive holds the weights (safetensors), the model description (architecture,
label schema, media preprocessing), the text tokenizer and `archive.json` naming the
registered model version, its MLflow run, its snapshot and its search catalogue in
object storage (`search_uri`; serving/search_store.py). The file is named
`<model>-v<version>.mar`, so what is served traces back to a run and a snapshot. The
frozen pretrained encoders' weights are not copied: the serving environment has them
installed (their packages), as training.models.factory explains.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from serving.served_log import ARCHIVE_INFO

HANDLER = Path(__file__).resolve().parent / "handler.py"


class ArchiveError(RuntimeError):
    """torch-model-archiver failed; the message carries its output."""


def archive_name(model_name: str, version: str) -> str:
    return f"{model_name}-v{version}"


def build_archive(
    model_dir: Path,
    info: dict[str, Any],
    export_dir: Path,
    model_name: str,
    version: str,
    tokenizer: Any | None = None,
) -> Path:
    """Write `<export_dir>/<model_name>-v<version>.mar` (replacing one of that name)."""
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    name = archive_name(model_name, version)
    with tempfile.TemporaryDirectory(prefix="dualmedia-mar-") as tmp:
        staging = Path(tmp)
        # torch-model-archiver copies a folder's *contents* to the archive root, so the
        # payload folder holds everything but the weights, sub-folders included.
        payload = staging / "payload"
        payload.mkdir()
        shutil.copy(Path(model_dir) / "weights.safetensors", staging / "weights.safetensors")
        shutil.copy(Path(model_dir) / "model.json", payload / "model.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(payload / "tokenizer"))
        (payload / ARCHIVE_INFO).write_text(
            json.dumps({**info, "model_name": model_name, "version": version}, indent=2)
        )
        extra = [payload]
        command = [
            str(Path(sys.executable).parent / "torch-model-archiver"),
            "--model-name", name,
            "--version", version,
            "--handler", str(HANDLER),
            "--serialized-file", str(staging / "weights.safetensors"),
            "--extra-files", ",".join(str(p) for p in extra),
            "--export-path", str(export_dir),
            "--archive-format", "default",
            "--force",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ArchiveError(f"torch-model-archiver failed: {result.stderr[-2000:]}")
    path = export_dir / f"{name}.mar"
    if not path.exists():
        raise ArchiveError(f"torch-model-archiver wrote no {path}")
    return path
