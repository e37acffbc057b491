"""Per-modality trunks built with `transformers` (ImageBind style: one module per modality).

text  : a pretrained sentence encoder (all-MiniLM-L6-v2 by default), mean pooling, frozen or
        last-N-layers tuned; while frozen, pooled outputs are cached per text.
image : a small ViT from scratch (ViTConfig/ViTModel) on the snapshot's image size.
audio : a small AST (ASTConfig/ASTModel) on the snapshot's log-mel spectrogram.

Any trunk can instead load a checkpoint (`EncoderConfig.pretrained`: a local folder, a hub id
that is already cached, or `pkg:<module>` for a model shipped inside a Python package).
Nothing is ever downloaded: every load is `local_files_only=True`.
Each trunk maps its raw batch input to a pooled [B, hidden_size] float tensor.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    ASTConfig,
    ASTModel,
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    CLIPTextModel,
    CLIPVisionModel,
    PreTrainedModel,
    ViTConfig,
    ViTModel,
)
from transformers.utils import logging as hf_logging

from dualmedia.contract import Modality
from dualmedia.media import MediaConfig
from training.config import EncoderConfig

hf_logging.disable_progress_bar()


def resolve_pretrained(ref: str) -> str:
    """A `pretrained` reference as something `from_pretrained` accepts (folder or hub id)."""
    if ref.startswith("pkg:"):
        module = importlib.import_module(ref.removeprefix("pkg:"))
        getter = getattr(module, "get_model_path", None)
        folder = Path(getter()) if getter else Path(module.__file__).parent / "model"
        if not folder.is_dir():
            raise ValueError(f"{ref}: package {module.__name__} holds no model folder {folder}")
        return str(folder)
    return ref


def load_pretrained(ref: str, modality: Modality) -> PreTrainedModel:
    """Load a checkpoint from disk or the local hub cache; CLIP gives the modality's tower."""
    path = resolve_pretrained(ref)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type in ("clip", "clip_vision_model") and modality is Modality.IMAGE:
            return CLIPVisionModel.from_pretrained(path, local_files_only=True)
        if config.model_type in ("clip", "clip_text_model") and modality is Modality.TEXT:
            return CLIPTextModel.from_pretrained(path, local_files_only=True)
        return AutoModel.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise ValueError(
            f"{modality.value} encoder: cannot load pretrained {ref!r} without network "
            f"(a local folder, or a hub id already in the local cache): {exc}"
        ) from None


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    """The transformer's stack of layers (the longest ModuleList named *layer or *layers)."""
    stacks = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layer", "layers")
    ]
    return max(stacks, key=len, default=None)


def set_trainable_layers(model: nn.Module, trainable_layers: int | None) -> None:
    """None: everything trains; 0: frozen; N: only the last N layers train."""
    if trainable_layers is None:
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    if trainable_layers > 0:
        layers = _layer_list(model)
        if layers is None:
            raise ValueError(f"{type(model).__name__}: no layer stack to tune the last N of")
        for layer in list(layers)[-trainable_layers:]:
            layer.requires_grad_(True)


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)


class Trunk(nn.Module):
    """Common interface: `hidden_size`, and whether weights come from a frozen checkpoint."""

    hidden_size: int
    pretrained: str | None
    model: nn.Module

    def frozen(self) -> bool:
        return all(not p.requires_grad for p in self.parameters())

    def _set_trainable(self, trainable_layers: int | None) -> None:
        set_trainable_layers(self.model, trainable_layers)
        # What the configuration trains, fixed at build time: a later stage may freeze the
        # whole encoder, but weights tuned earlier must still be saved.
        self.tuned_keys = {n for n, p in self.model.named_parameters() if p.requires_grad}


class TextTrunk(Trunk):
    """A pretrained text transformer with mean pooling over real tokens."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if config.pretrained is None:
            raise ValueError("text encoder: needs `pretrained` (no from-scratch text model)")
        self.pretrained = config.pretrained
        path = resolve_pretrained(config.pretrained)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = load_pretrained(config.pretrained, Modality.TEXT)
        self.max_tokens = config.max_tokens
        self.hidden_size = int(self.model.config.hidden_size)
        self._set_trainable(config.trainable_layers)
        # A frozen trunk is a fixed function of the text: pooled outputs are cached so
        # epochs after the first never run MiniLM again (it dominates CPU time). Serving
        # sets `cache_texts = False`: its texts rarely repeat and a server must not grow.
        self._cache: dict[str, torch.Tensor] = {}
        self.cache_texts = True

    def train(self, mode: bool = True) -> TextTrunk:
        super().train(mode)
        if self.frozen():
            self.model.eval()  # no dropout in a frozen trunk, so cached outputs stay valid
        return self

    def _encode(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state
        return _masked_mean(hidden, tokens["attention_mask"])

    def forward(self, texts: list[str]) -> torch.Tensor:
        if not self.frozen():
            return self._encode(texts)
        if not self.cache_texts:
            with torch.no_grad():
                return self._encode(texts)
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            with torch.no_grad():
                for start in range(0, len(missing), 256):
                    chunk = missing[start : start + 256]
                    pooled = self._encode(chunk).float().cpu()
                    self._cache.update(zip(chunk, pooled, strict=True))
        device = next(self.model.parameters()).device
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def cache_size(self) -> int:
        return len(self._cache)


class ImageTrunk(Trunk):
    """A ViT (from scratch or pretrained) over uint8 RGB images, mean-pooled tokens."""

    def __init__(self, config: EncoderConfig, media: MediaConfig) -> None:
        super().__init__()
        self.pretrained = config.pretrained
        mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
        if config.pretrained is None:
            self.model = ViTModel(
                ViTConfig(
                    image_size=media.image_size,
                    patch_size=config.patch_size,
                    num_channels=3,
                    hidden_size=config.hidden_size,
                    num_hidden_layers=config.num_layers,
                    num_attention_heads=config.num_heads,
                    intermediate_size=config.hidden_size * config.mlp_ratio,
                    hidden_dropout_prob=config.dropout,
                    attention_probs_dropout_prob=config.dropout,
                ),
                add_pooling_layer=False,
            )
        else:
            self.model = load_pretrained(config.pretrained, Modality.IMAGE)
            mean, std = _image_normalisation(config.pretrained, mean, std)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.input_size = int(getattr(self.model.config, "image_size", media.image_size))
        self.hidden_size = int(self.model.config.hidden_size)
        self._set_trainable(config.trainable_layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear")
        x = (x - self.pixel_mean) / self.pixel_std
        return self.model(pixel_values=x).last_hidden_state.mean(dim=1)


def _image_normalisation(ref: str, mean: list[float], std: list[float]) -> tuple[list, list]:
    """The checkpoint's own pixel normalisation when it ships a preprocessor config."""
    path = Path(resolve_pretrained(ref)) / "preprocessor_config.json"
    if path.is_file():
        pre: dict[str, Any] = json.loads(path.read_text())
        return list(pre.get("image_mean", mean)), list(pre.get("image_std", std))
    return mean, std


class AudioTrunk(Trunk):
    """An AST-style patch transformer over the log-mel spectrogram (n_mels x frames)."""

    def __init__(self, config: EncoderConfig, media: MediaConfig) -> None:
        super().__init__()
        self.pretrained = config.pretrained
        if config.pretrained is None:
            self.model = ASTModel(
                ASTConfig(
                    num_mel_bins=media.n_mels,
                    max_length=media.audio_frames,
                    patch_size=config.patch_size,
                    frequency_stride=config.frequency_stride,
                    time_stride=config.time_stride,
                    hidden_size=config.hidden_size,
                    num_hidden_layers=config.num_layers,
                    num_attention_heads=config.num_heads,
                    intermediate_size=config.hidden_size * config.mlp_ratio,
                    hidden_dropout_prob=config.dropout,
                    attention_probs_dropout_prob=config.dropout,
                )
            )
        else:
            self.model = load_pretrained(config.pretrained, Modality.AUDIO)
        model_mels = int(getattr(self.model.config, "num_mel_bins", media.n_mels))
        if model_mels != media.n_mels:
            raise ValueError(
                f"audio encoder {config.pretrained!r} expects {model_mels} mel bins, the "
                f"snapshot has {media.n_mels}"
            )
        self.max_length = int(getattr(self.model.config, "max_length", media.audio_frames))
        self.hidden_size = int(self.model.config.hidden_size)
        # Normalisation of the log-mel input, set from the training data before training
        # (`set_normalisation`); buffers, so they travel with the weights to serving.
        self.register_buffer("norm_mean", torch.tensor(0.0))
        self.register_buffer("norm_std", torch.tensor(1.0))
        self._set_trainable(config.trainable_layers)

    def set_normalisation(self, mean: float, std: float) -> None:
        self.norm_mean.fill_(mean)
        self.norm_std.fill_(max(std, 1e-6))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = (logmel.float() - self.norm_mean) / self.norm_std
        x = x.transpose(1, 2)  # AST reads [B, time, mel]
        frames = x.shape[1]
        if frames < self.max_length:
            x = F.pad(x, (0, 0, 0, self.max_length - frames), value=0.0)
        x = x[:, : self.max_length]
        return self.model(input_values=x).last_hidden_state.mean(dim=1)


def build_trunk(modality: Modality, config: EncoderConfig, media: MediaConfig) -> Trunk:
    if modality is Modality.TEXT:
        return TextTrunk(config)
    if modality is Modality.IMAGE:
        return ImageTrunk(config, media)
    return AudioTrunk(config, media)
