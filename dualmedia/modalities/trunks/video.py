"""The video trunk: the image trunk on every sampled frame, then a small temporal
transformer over the frame tokens (a learned embedding per frame position), mean-pooled.

The frame encoder is the image trunk's architecture (from scratch or `pretrained`, as the
image one); with `share_image_trunk` the frames go through the model's image trunk itself,
so a photo and a clip's frames are seen by the same weights. The temporal transformer is
`hidden_size` wide: a frame encoder of another width (a pretrained CNN's 1600 features)
is projected to it first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dualmedia.modalities.trunks.base import Trunk
from dualmedia.modalities.trunks.image import ImageTrunk
from dualmedia.modalities.video import VideoEncoder


class VideoTrunk(ImageTrunk):
    """Frames [B, T, S, S, 3] uint8 -> [B, hidden]: per-frame ViT, temporal transformer."""

    patches_per_side = 4  # 16 tokens a frame from scratch: 8 frames cost about 2 photos

    def __init__(self, config: VideoEncoder, media: Any) -> None:
        super().__init__(config, media.video.size)
        self.share_image_trunk = config.share_image_trunk
        self.shared_frames: ImageTrunk | None = None  # set by `attach`, not a submodule
        self.frame_projection = _frame_projection(self.hidden_size, config.hidden_size)
        self.hidden_size = config.hidden_size
        self.time_embedding = nn.Parameter(torch.zeros(1, media.video.frames, self.hidden_size))
        nn.init.normal_(self.time_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=self.hidden_size,
            nhead=config.temporal_heads,
            dim_feedforward=self.hidden_size * config.mlp_ratio,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.temporal = (
            nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False)
            if config.temporal_layers > 0
            else nn.Identity()
        )

    def attach(self, trunks: Mapping[str, Trunk]) -> None:
        """With `share_image_trunk`, drop the own frame encoder for the image trunk's.

        The image trunk is kept as a plain attribute, not a submodule, so its weights are
        saved, counted and optimised once (under the image trunk)."""
        image = trunks.get("image")
        if not self.share_image_trunk or not isinstance(image, ImageTrunk):
            return
        self.__dict__["shared_frames"] = image
        self.frame_projection = _frame_projection(image.hidden_size, self.hidden_size)
        self.model = nn.Identity()  # the own ViT is never used: no weights to save
        self.pretrained = None  # the image trunk's checkpoint is the image trunk's to skip
        self.tuned_keys = set()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        batch, steps = frames.shape[:2]
        flat = frames.flatten(0, 1)  # [B*T, S, S, 3]
        encode = self.shared_frames if self.shared_frames is not None else super().forward
        tokens = self.frame_projection(encode(flat)).view(batch, steps, -1)
        tokens = tokens + self.time_embedding[:, :steps].to(tokens.dtype)
        return self.temporal(tokens).mean(dim=1)


def _frame_projection(frame_size: int, width: int) -> nn.Module:
    return nn.Identity() if frame_size == width else nn.Linear(frame_size, width)
