"""The packaged EfficientNet-Lite0: its weights really are ImageNet's (a real photo that
scikit-learn ships is classified as a building), the architecture takes any picture size,
and the image and video trunks load it by `pretrained:` (frozen, saved without it, its
batch-norm statistics never moved by training)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_images

from dualmedia import modalities
from dualmedia.contract import DatasetSpec
from dualmedia.modalities import MediaConfig
from dualmedia.modalities.trunks import efficientnet
from dualmedia.modalities.trunks.efficientnet import EfficientNetLite0
from training.config import REPO_CONFIGS, load_train_config
from training.models.factory import build_fused_model, load_fused_model_dir, save_fused_model

PRETRAINED = f"pkg:{efficientnet.PACKAGE}"
MEDIA = MediaConfig()
# ImageNet classes of buildings: bell cote, church, dome, monastery, mosque, palace, stupa.
BUILDINGS = {442, 497, 538, 663, 668, 698, 832}


@pytest.fixture(scope="module")
def network() -> EfficientNetLite0:
    return EfficientNetLite0.from_package()


def test_the_shipped_weights_classify_a_real_photo(network: EfficientNetLite0) -> None:
    # The classifier layer is not part of the trunk; it is read from the checkpoint here.
    path = Path(importlib.import_module(efficientnet.PACKAGE).__file__).parent
    state = torch.load(path / efficientnet.CHECKPOINT, map_location="cpu", weights_only=True)
    china = load_sample_images().images[0]  # a photo of a Chinese temple
    x = torch.from_numpy(china).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear")
    mean = torch.tensor(efficientnet.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(efficientnet.PIXEL_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        pooled = network(pixel_values=(x - mean) / std).last_hidden_state.mean(1)
    logits = pooled @ state["_fc.weight"].T + state["_fc.bias"]
    assert int(logits.argmax()) in BUILDINGS, logits.topk(5)


@pytest.mark.parametrize("side", [8, 37, 64, 224])
def test_any_picture_size_gives_a_ceil_over_32_feature_map(
    network: EfficientNetLite0, side: int
) -> None:
    with torch.no_grad():
        out = network(pixel_values=torch.randn(2, 3, side, side))
    cells = -(-side // 32)
    assert out.last_hidden_state.shape == (2, cells * cells, efficientnet.HEAD_SIZE)
    assert out.pooled_features.shape == (2, efficientnet.HIDDEN_SIZE)


def test_batch_norm_statistics_never_move_in_training(network: EfficientNetLite0) -> None:
    before = network._bn0.running_mean.clone()
    network.train()
    network(pixel_values=torch.randn(4, 3, 32, 32) * 5 + 3)
    assert network.training
    torch.testing.assert_close(network._bn0.running_mean, before)
    network.eval()


def spec(names: list[str]) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "t",
            "modalities": names,
            "labels": {"category": {"type": "categorical", "classes": ["a", "b"]}},
        }
    )


def test_image_and_video_trunks_load_it_frozen_and_save_without_it(tmp_path: Path) -> None:
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    pretrained = {"pretrained": PRETRAINED, "trainable_layers": 0}
    config.encoders.image = config.encoders.image.model_copy(update=pretrained)
    config.encoders.video = config.encoders.video.model_copy(update=pretrained)
    torch.manual_seed(0)
    model = build_fused_model(spec(["text", "image", "video"]), MEDIA, config).eval()
    image, video = model.encoder.trunk("image"), model.encoder.trunk("video")
    assert image.hidden_size == efficientnet.HIDDEN_SIZE
    assert image.frozen() and not any(p.requires_grad for p in video.model.parameters())
    # The video trunk projects the 1600 frame features to its own temporal width.
    assert video.hidden_size == config.encoders.video.hidden_size
    assert any(p.requires_grad for p in video.frame_projection.parameters())
    torch.testing.assert_close(image.pixel_mean.flatten(), torch.tensor(efficientnet.PIXEL_MEAN))
    rng = np.random.default_rng(0)
    photos = torch.from_numpy(np.stack([modalities.get("image").random_input(MEDIA, rng)] * 2))
    clips = torch.from_numpy(np.stack([modalities.get("video").random_input(MEDIA, rng)] * 2))
    saved = save_fused_model(model, tmp_path)
    weights = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    assert weights < 5_000_000, (saved, weights)  # the 18 MB checkpoint is not copied
    loaded = load_fused_model_dir(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder.trunk("image")(photos), image(photos))
        torch.testing.assert_close(loaded.encoder.trunk("video")(clips), video(clips))


def test_trainable_layers_tunes_only_the_last_blocks() -> None:
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    config.encoders.image = config.encoders.image.model_copy(
        update={"pretrained": PRETRAINED, "trainable_layers": 2}
    )
    model = build_fused_model(spec(["text", "image"]), MEDIA, config)
    blocks = model.encoder.trunk("image").model.layers
    tuned = [any(p.requires_grad for p in block.parameters()) for block in blocks]
    assert tuned == [False] * (len(blocks) - 2) + [True, True]
