"""The audio trunks: an AST-style patch transformer over the log-mel spectrogram
(n_mels x frames), trained from scratch or loaded; Whisper's encoder over its own features."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ASTConfig, ASTModel

from dualmedia.modalities.audio import AudioEncoder
from dualmedia.modalities.trunks.base import Trunk, load_pretrained, masked_mean
from dualmedia.modalities.trunks.whisper import WIDTH as WHISPER_WIDTH


class AudioTrunk(Trunk):
    """An AST-style patch transformer over the log-mel spectrogram (n_mels x frames)."""

    def __init__(self, config: AudioEncoder, media: Any) -> None:
        super().__init__()
        self.pretrained = config.pretrained
        if config.pretrained is None:
            self.model = ASTModel(
                ASTConfig(
                    num_mel_bins=media.audio.n_mels,
                    max_length=media.audio.frames,
                    patch_size=config.patch_size,
                    frequency_stride=config.frequency_stride,
                    time_stride=config.time_stride,
                    **config.transformer_sizes(),
                )
            )
        else:
            self.model = load_pretrained(config.pretrained, "audio")
        model_mels = int(getattr(self.model.config, "num_mel_bins", media.audio.n_mels))
        if model_mels != media.audio.n_mels:
            raise ValueError(
                f"audio encoder {config.pretrained!r} expects {model_mels} mel bins, the "
                f"snapshot has {media.audio.n_mels}"
            )
        self.max_length = int(getattr(self.model.config, "max_length", media.audio.frames))
        model_config = self.model.config
        self.time_stride = int(getattr(model_config, "time_stride", config.time_stride))
        patch = int(getattr(model_config, "patch_size", config.patch_size))
        frequency_stride = int(getattr(model_config, "frequency_stride", config.frequency_stride))
        self.frequency_patches = (media.audio.n_mels - patch) // frequency_stride + 1
        self.time_patches = (self.max_length - patch) // self.time_stride + 1
        self.hidden_size = int(self.model.config.hidden_size)
        # Normalisation of the log-mel input, set from the training data before training
        # (`set_normalisation`); buffers, so they travel with the weights to serving.
        self.register_buffer("norm_mean", torch.tensor(0.0))
        self.register_buffer("norm_std", torch.tensor(1.0))
        self._set_trainable(config.trainable_layers)

    def prepare(self, items: list) -> None:
        """Mean and std of the log-mel values of real audio (padding frames excluded)."""
        values = [x["logmel"][:, : max(int(x["valid_frames"]), 1)].ravel() for x in items]
        if values:
            flat = np.concatenate(values)
            self.set_normalisation(float(flat.mean()), float(flat.std()))

    def set_normalisation(self, mean: float, std: float) -> None:
        self.norm_mean.fill_(mean)
        self.norm_std.fill_(max(std, 1e-6))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = (inputs["logmel"].float() - self.norm_mean) / self.norm_std
        x = x.transpose(1, 2)  # AST reads [B, time, mel]
        frames = x.shape[1]
        if frames < self.max_length:
            x = F.pad(x, (0, 0, 0, self.max_length - frames), value=0.0)
        x = x[:, : self.max_length]
        hidden = self.model(input_values=x).last_hidden_state
        return masked_mean(hidden, self.token_mask(inputs["valid_frames"]))

    def token_mask(self, valid_frames: torch.Tensor) -> torch.Tensor:
        """[B, tokens]: the two summary tokens and the patches that start within the audio.

        A half-second word in a 4 s window fills a few of the patch columns; a plain mean
        over all of them would be mostly padding, and would change with the clip's length."""
        starts = torch.arange(self.time_patches, device=valid_frames.device) * self.time_stride
        in_audio = starts[None, :] < valid_frames.clamp(min=1)[:, None]  # [B, time patches]
        patches = in_audio.repeat(1, self.frequency_patches)  # token order: f * T + t
        special = torch.ones(len(valid_frames), 2, dtype=torch.bool, device=valid_frames.device)
        return torch.cat([special, patches], dim=1)


class WhisperTrunk(Trunk):
    """Whisper's encoder over its own features, mean-pooled over the tokens that hold audio.

    Frozen (the default), it is a fixed function of the clip and costs ~15 ms a 1.5 s clip
    on a CPU core, ten times a from-scratch training step: pooled outputs are cached by the
    clip's features, so epochs after the first never run it again. Whisper features come
    without SpecAugment by default (`spec_augment`), or no clip would repeat. Serving sets
    `cache_outputs = False`: its clips rarely repeat and a server must not grow."""

    def __init__(self, config: AudioEncoder, media: Any) -> None:
        super().__init__()
        if media.audio.features != "whisper":
            raise ValueError(
                f"audio encoder {config.pretrained!r} reads Whisper's features: set "
                "`media: {audio: {features: whisper}}` in dataset.yaml (this snapshot has "
                f"{media.audio.features!r})"
            )
        self.pretrained = config.pretrained
        self.model = load_pretrained(str(config.pretrained), "audio")
        self.hidden_size = WHISPER_WIDTH
        self._set_trainable(config.trainable_layers)
        self.cache_outputs = not media.audio.spec_augment  # augmented clips never repeat

    def _encode(self, logmel: torch.Tensor, valid_frames: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_features=logmel.float()).last_hidden_state
        valid_tokens = (valid_frames.clamp(min=1) + 1) // 2  # the stride-2 convolution
        mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < valid_tokens[:, None]
        return masked_mean(hidden, mask)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        logmel, valid = inputs["logmel"], inputs["valid_frames"]
        keys = [_clip_key(x, int(n)) for x, n in zip(logmel.cpu(), valid.cpu(), strict=True)]

        def encode(rows: list[int]) -> torch.Tensor:
            index = torch.tensor(rows, device=logmel.device)
            return self._encode(logmel[index], valid[index])

        return self.cached(keys, encode)


def _clip_key(logmel: torch.Tensor, valid_frames: int) -> bytes:
    """A clip's identity: its features (all frames: the padding is the clip's own floor)."""
    digest = hashlib.blake2b(logmel.numpy().tobytes(), digest_size=16)
    digest.update(valid_frames.to_bytes(4, "little"))
    return digest.digest()
