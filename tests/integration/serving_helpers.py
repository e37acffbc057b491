"""Building small model archives for serving tests (no training needed)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from dualmedia.modalities import MediaConfig
from dualmedia.settings import Settings
from dualmedia.storage import ObjectStore
from serving.archive import build_archive
from serving.catalogue import Catalogue, CatalogueItem
from serving.search_store import publish_catalogue, search_prefix
from synthetic import dataset_spec
from training.config import load_train_config
from training.models.factory import build_fused_model, load_fused_model_dir, save_fused_model

TINY = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny.yaml"


def tiny_model_dir(folder: Path, seed: int) -> Path:
    """A randomly initialised tiny fused model saved as weights + model.json."""
    torch.manual_seed(seed)
    model = build_fused_model(dataset_spec(), MediaConfig(), load_train_config(TINY).model)
    save_fused_model(model, folder)
    return folder


SENTIMENTS = ("negative", "neutral", "positive")


def random_catalogue(
    dim: int, n: int = 30, seed: int = 0, index_config: str = "exact"
) -> Catalogue:
    rng = np.random.default_rng(seed)
    vectors = {}
    for m in ("text", "image", "audio"):
        v = rng.normal(size=(n, dim)).astype(np.float32)
        vectors[m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    ids = [f"item-{i:03d}" for i in range(n)]
    items = {
        i: CatalogueItem(
            text=f"review {i}",
            labels={"damaged": ["false", "true"][n % 2], "sentiment": SENTIMENTS[n % 3]},
            predicted={"sentiment": SENTIMENTS[(n + 1) % 3]},
            batch=f"batch-{n // 10:04d}",
            created_at=f"2026-11-{1 + n // 10:02d}T00:00:00Z",
        )
        for n, i in enumerate(ids)
    }
    vectors["fused"] = vectors["text"] + vectors["image"]
    vectors["fused"] /= np.linalg.norm(vectors["fused"], axis=1, keepdims=True)
    return Catalogue({t: ids for t in vectors}, vectors, items, "test", index_config)


def tiny_archive(tmp: Path, settings: Settings, version: str, seed: int) -> tuple[Path, Path]:
    """A tiny random model's archive in the model store, its search catalogue (the
    random one) published to object storage as the publish step would."""
    model_dir = tiny_model_dir(tmp / f"model-{version}", seed)
    dim = load_train_config(TINY).model.embed_dim
    prefix = search_prefix(settings, "customer-feedback", version)
    search = publish_catalogue(ObjectStore(settings), random_catalogue(dim), prefix)
    info = {"dataset": "customer-feedback", "run_id": f"run-{version}", "snapshot_id": "s",
            "search_uri": search["uri"]}  # fmt: skip
    tokenizer = load_fused_model_dir(model_dir).encoder.trunk("text").tokenizer
    store = settings.torchserve_model_store
    assert store is not None
    archive = build_archive(model_dir, info, store, "customer-feedback", version, tokenizer)
    return archive, model_dir


def b64_png(size: tuple[int, int] = (80, 60), colour: tuple[int, int, int] = (180, 40, 40)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def b64_wav(seconds: float = 1.5, rate: int = 16000, pitch: float = 220.0) -> str:
    buf = io.BytesIO()
    t = np.arange(int(rate * seconds)) / rate
    sf.write(buf, 0.3 * np.sin(2 * np.pi * pitch * t), rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()
