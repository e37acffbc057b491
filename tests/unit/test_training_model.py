"""Encoders, projections, fusion heads built from the schema, and safetensors round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import ViTConfig, ViTModel

from dualmedia.contract import BinaryLabel, CategoricalLabel, DatasetSpec, Modality
from dualmedia.modalities import MediaConfig
from dualmedia.modalities.image import ImageEncoder
from synthetic import dataset_spec
from synthetic.fixtures import random_arrays
from training.config import REPO_CONFIGS, load_train_config
from training.data import MultimodalDataset, collate_with
from training.lit import label_loss
from training.models.config import ModelConfig
from training.models.factory import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_fused_model,
    load_fused_model_dir,
    save_fused_model,
)
from training.models.fusion import FusionHead

MEDIA = MediaConfig()


def tiny_model_config() -> ModelConfig:
    return load_train_config(REPO_CONFIGS / "tiny.yaml").model


def batch_of(spec: DatasetSpec, n: int = 6, seed: int = 0, missing: float = 0.3) -> dict:
    arrays = random_arrays(spec, n, MEDIA, missing_rate=missing, seed=seed)
    names = [m.value for m in spec.modalities]
    return collate_with(MEDIA, names)([MultimodalDataset(arrays, names)[i] for i in range(n)])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_fused_model(dataset_spec(), MEDIA, tiny_model_config()).eval()


def test_embeddings_are_unit_length_and_zero_where_a_modality_is_missing(model) -> None:
    batch = batch_of(dataset_spec())
    with torch.no_grad():
        embeddings = model.encoder(batch)
    assert set(embeddings) == {"text", "image", "audio"}
    for m, emb in embeddings.items():
        present = batch["present"][m]
        assert emb.shape == (6, model.config.embed_dim)
        assert torch.allclose(emb[present].norm(dim=1), torch.ones(int(present.sum())))
        assert torch.all(emb[~present] == 0)


def test_logit_scale_starts_at_log_one_over_0_07(model) -> None:
    assert float(model.encoder.logit_scale.detach()) == pytest.approx(
        torch.log(torch.tensor(1 / 0.07))
    )


def test_frozen_text_encoder_runs_minilm_once_per_text(model, monkeypatch) -> None:
    trunk = model.encoder.trunk("text")
    assert trunk.frozen() and trunk.hidden_size == 384  # all-MiniLM-L6-v2
    calls: list[int] = []
    original = trunk._encode
    monkeypatch.setattr(trunk, "_encode", lambda texts: calls.append(len(texts)) or original(texts))
    texts = ["a brand new text", "another new one", "a brand new text"]
    first = trunk(texts)
    second = trunk(texts)
    assert calls == [2]  # two distinct texts, encoded once, then served from the cache
    assert torch.equal(first, second)


def test_last_n_layers_of_the_text_encoder_can_be_tuned() -> None:
    config = tiny_model_config()
    config.encoders.text.trainable_layers = 2
    tuned = build_fused_model(
        DatasetSpec(name="t", modalities=[Modality.TEXT], labels={}), MEDIA, config
    )
    trunk = tuned.encoder.trunk("text")
    trainable = {n.split(".")[2] for n, p in trunk.model.named_parameters() if p.requires_grad}
    assert trainable == {"4", "5"}  # encoder.layer.4 and .5 of six
    assert not trunk.frozen()
    assert any(
        k.startswith("encoder.trunks.text.model.encoder.layer.5")
        for k in tuned.trainable_state_dict()
    )
    assert not any(".layer.0." in k for k in tuned.trainable_state_dict())


def test_an_encoder_loads_a_local_pretrained_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    saved = ViTModel(
        ViTConfig(
            image_size=64,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        add_pooling_layer=False,
    )
    saved.save_pretrained(tmp_path / "tiny-vit")
    config = tiny_model_config()
    config.encoders.image = ImageEncoder(pretrained=str(tmp_path / "tiny-vit"), trainable_layers=0)
    spec = DatasetSpec(name="img", modalities=[Modality.IMAGE], labels={})
    built = build_fused_model(spec, MEDIA, config)
    loaded = built.encoder.trunk("image").model
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # Frozen pretrained weights are restored from the source, not saved again.
    assert not any(
        k.startswith("encoder.trunks.image.model.") for k in built.trainable_state_dict()
    )


def test_a_missing_pretrained_source_fails_clearly() -> None:
    config = tiny_model_config()
    config.encoders.image = ImageEncoder(pretrained="/nonexistent/checkpoint", trainable_layers=0)
    spec = DatasetSpec(name="img", modalities=[Modality.IMAGE], labels={})
    with pytest.raises(ValueError, match="image encoder: cannot load pretrained"):
        build_fused_model(spec, MEDIA, config)


def test_heads_come_from_the_label_schema_not_from_names() -> None:
    spec = DatasetSpec(
        name="other",
        modalities=[Modality.IMAGE, Modality.AUDIO],
        labels={
            "colour": CategoricalLabel(type="categorical", classes=["red", "green", "blue", "x"]),
            "urgent": BinaryLabel(type="binary"),
        },
    )
    built = build_fused_model(spec, MEDIA, tiny_model_config())
    assert built.modalities == ["image", "audio"]  # no text encoder built
    out = built(batch_of(spec, n=5))
    assert {k: v.shape for k, v in out.logits.items()} == {
        "colour": (5, 4),
        "urgent": (5, 2),
    }
    assert set(out.unimodal) == {"image", "audio"}
    assert out.gates.shape == (5, 2)


@pytest.mark.parametrize("mode", ["gated", "early", "late", "hybrid"])
def test_fusion_masks_missing_modalities_and_gates_sum_to_one(mode: str) -> None:
    torch.manual_seed(0)
    config = tiny_model_config().fusion.model_copy(update={"mode": mode})
    classes = {"a": ["x", "y", "z"], "b": ["false", "true"]}
    head = FusionHead(["text", "image", "audio"], classes, 16, config).eval()
    embeddings = {m: torch.randn(4, 16) for m in ("text", "image", "audio")}
    present = {
        "text": torch.tensor([True, True, False, True]),
        "image": torch.tensor([True, False, False, True]),
        "audio": torch.tensor([True, True, True, False]),
    }
    out = head(embeddings, present)
    mask = torch.stack([present[m] for m in ("text", "image", "audio")], dim=1)
    assert torch.allclose(out.gates.sum(1), torch.ones(4), atol=1e-6)
    assert torch.all(out.gates[~mask] == 0)
    # Changing what sits in a missing modality's slot changes nothing.
    changed = {m: e.clone() for m, e in embeddings.items()}
    changed["image"][1] = torch.randn(16) * 5
    changed["text"][2] = torch.randn(16) * 5
    again = head(changed, present)
    for name in classes:
        assert torch.allclose(out.logits[name], again.logits[name], atol=1e-5)
    # ...while changing a present one does.
    changed["audio"][2] = torch.randn(16) * 5
    moved = head(changed, present)
    assert not torch.allclose(out.logits["a"][2], moved.logits["a"][2])


def test_gated_fusion_survives_an_item_with_nothing_present() -> None:
    config = tiny_model_config().fusion
    head = FusionHead(["text", "image"], {"a": ["x", "y"]}, 16, config).eval()
    embeddings = {m: torch.zeros(2, 16) for m in ("text", "image")}
    present = {"text": torch.tensor([True, False]), "image": torch.tensor([False, False])}
    out = head(embeddings, present)
    assert torch.isfinite(out.logits["a"]).all()
    assert torch.all(out.gates[1] == 0)


def test_label_loss_ignores_missing_labels() -> None:
    logits = {"a": torch.randn(4, 3)}
    labels = {"a": torch.tensor([0, -1, 2, -1])}
    expected = torch.nn.functional.cross_entropy(logits["a"][[0, 2]], torch.tensor([0, 2]))
    assert torch.allclose(label_loss(logits, labels, None), expected)
    nothing = label_loss(logits, {"a": torch.full((4,), -1)}, None)
    assert torch.isfinite(nothing) and float(nothing) == 0.0


def test_saved_weights_are_safetensors_and_rebuild_the_same_model(model, tmp_path: Path) -> None:
    files = save_fused_model(model, tmp_path / "saved")
    weights = load_file(str(files["weights"]))
    assert not any(".trunks.text.model." in k for k in weights)  # frozen MiniLM not copied
    assert "encoder.trunks.audio.norm_mean" in weights
    description = json.loads((tmp_path / "saved" / CONFIG_FILE).read_text())
    assert description["labels"]["sentiment"] == ["negative", "neutral", "positive"]
    assert description["media"]["image"]["size"] == MEDIA.image.size
    assert description["bounds"]["audio"]["min_duration_s"] == model.bounds.audio.min_duration_s
    assert (tmp_path / "saved" / WEIGHTS_FILE).read_bytes()[:8] != b"\x80\x04\x95"  # not pickle
    rebuilt = load_fused_model_dir(tmp_path / "saved")
    batch = batch_of(dataset_spec(), seed=3)
    with torch.no_grad():
        before, after = model(batch), rebuilt(batch)
    for name in before.logits:
        assert torch.allclose(before.logits[name], after.logits[name], atol=1e-6)
    assert torch.allclose(before.gates, after.gates, atol=1e-6)


def test_weights_that_do_not_fit_are_refused(model, tmp_path: Path) -> None:
    state = model.trainable_state_dict()
    state.pop("fusion.gate.weight")
    rebuilt = build_fused_model(dataset_spec(), MEDIA, tiny_model_config())
    with pytest.raises(ValueError, match="missing"):
        rebuilt.load_trainable_state_dict(state)


def test_the_audio_trunk_pools_only_over_patches_that_hold_audio() -> None:
    from dualmedia.modalities.audio import SILENCE, AudioEncoder
    from dualmedia.modalities.trunks.audio import AudioTrunk

    media = MediaConfig.model_validate({"audio": {"features": "logmel"}})  # 64 bands, 20 ms
    scratch = AudioEncoder(pretrained=None, trainable_layers=None, hidden_size=32, num_layers=1,
                           num_heads=2)  # fmt: skip
    trunk = AudioTrunk(scratch, media).eval()
    frames = media.audio.frames  # 201 frames: 12 time patches x 4 mel patches
    mask = trunk.token_mask(torch.tensor([15, 40, frames]))
    # A 0.3 s word: the 2 summary tokens and the 4 patches of the first time column.
    assert mask.sum(1).tolist() == [2 + 4, 2 + 4 * 3, 2 + 4 * 12]
    word = torch.randn(1, media.audio.n_mels, frames)
    word[..., 15:] = SILENCE
    with torch.no_grad():
        hidden = trunk.model(input_values=word.transpose(1, 2)).last_hidden_state
        pooled = trunk({"logmel": word, "valid_frames": torch.tensor([15])})
    assert hidden.shape[1] == mask.shape[1]
    # Not the mean over every token: the padding columns are left out.
    assert not torch.allclose(pooled, hidden.mean(1), atol=1e-4)
    assert torch.allclose(pooled, hidden[:, mask[0]].mean(1), atol=1e-5)
