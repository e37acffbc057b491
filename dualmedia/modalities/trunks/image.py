"""The image trunk: a ViT (from scratch on the snapshot's image size, or pretrained) over
uint8 RGB images, mean-pooled tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig, ViTModel

from dualmedia.modalities.base import EncoderConfig
from dualmedia.modalities.trunks.base import Trunk, load_pretrained, resolve_pretrained


class ImageTrunk(Trunk):
    """A ViT (from scratch or pretrained) over uint8 RGB images, mean-pooled tokens."""

    # A ViT from scratch with `patch_size: null` cuts a picture into this many patches a side.
    patches_per_side = 8

    def __init__(self, config: EncoderConfig, image_size: int) -> None:
        """`config`: the image encoder's fields (`patch_size` among them); `image_size`: the
        side of the square uint8 inputs."""
        super().__init__()
        self.pretrained = config.pretrained
        mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
        if config.pretrained is None:
            self.model = ViTModel(
                ViTConfig(
                    image_size=image_size,
                    patch_size=patch_side(config, image_size, self.patches_per_side),
                    num_channels=3,
                    **config.transformer_sizes(),
                ),
                add_pooling_layer=False,
            )
        else:
            self.model = load_pretrained(config.pretrained, "image")
            mean, std = _image_normalisation(config.pretrained, self.model, mean, std)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.input_size = int(getattr(self.model.config, "image_size", image_size))
        self.hidden_size = int(self.model.config.hidden_size)
        self._set_trainable(config.trainable_layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear")
        x = (x - self.pixel_mean) / self.pixel_std
        out = self.model(pixel_values=x)
        # A model that pools its own features says so (the packaged EfficientNet's
        # multi-scale ones); a ViT's tokens are averaged.
        pooled = getattr(out, "pooled_features", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(dim=1)


def patch_side(config: EncoderConfig, image_size: int, per_side: int = 8) -> int:
    """The encoder's `patch_size`, or when it is None the picture's side / `per_side`."""
    stated = getattr(config, "patch_size", None)
    return int(stated) if stated is not None else max(1, image_size // per_side)


def _image_normalisation(
    ref: str, model: nn.Module, mean: list[float], std: list[float]
) -> tuple[list, list]:
    """The checkpoint's own pixel normalisation: the model's config states it, or the
    checkpoint folder ships a preprocessor config."""
    stated = getattr(model.config, "image_mean", None), getattr(model.config, "image_std", None)
    if stated[0] is not None and stated[1] is not None:
        return list(stated[0]), list(stated[1])
    path = Path(resolve_pretrained(ref)) / "preprocessor_config.json"
    if path.is_file():
        pre: dict[str, Any] = json.loads(path.read_text())
        return list(pre.get("image_mean", mean)), list(pre.get("image_std", std))
    return mean, std
