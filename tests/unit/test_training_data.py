"""Modality dropout, balanced sampling, configuration files, and training on items that
have one modality only."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dualmedia.modalities import MediaConfig
from dualmedia.modalities.audio import SILENCE, augment_logmel
from dualmedia.modalities.image import shift_and_flip
from synthetic import GeneratorKnobs, dataset_spec, generate_dataset
from synthetic.fixtures import arrays_from_folder, random_arrays
from training.config import REPO_CONFIGS, TrainConfig, load_train_config
from training.data import (
    BalancedSampler,
    MultimodalDataset,
    SnapshotDataModule,
    drop_modalities,
    primary_label,
    sampling_groups,
    sampling_weights,
)
from training.evaluate import evaluate_arrays
from training.lit import AlignmentModule, FusionModule
from training.models.factory import build_fused_model

NAMES = ("text", "image", "audio")
# The frozen text trunk stays in eval mode on purpose (train() filters this warning too).
pytestmark = pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode:UserWarning")


def quiet_trainer(**options: Any) -> pl.Trainer:
    """A CPU Trainer that logs, checkpoints and prints nothing."""
    return pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        **options,
    )


def presence(rows: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    table = torch.tensor(rows, dtype=torch.bool)
    return {m: table[:, i] for i, m in enumerate(NAMES)}


def test_modality_dropout_never_drops_the_last_present_modality() -> None:
    present = presence([(1, 1, 1), (1, 0, 0), (0, 1, 1), (0, 0, 1)] * 50)
    kept = drop_modalities(present, p=1.0, generator=torch.Generator().manual_seed(0))
    table = torch.stack([kept[m] for m in NAMES], 1)
    original = torch.stack([present[m] for m in NAMES], 1)
    assert torch.all(table.sum(1) == 1)  # p=1: exactly one survivor per item
    assert not torch.any(table & ~original)  # never resurrects a missing modality


def test_modality_dropout_rate_and_off_switch() -> None:
    present = presence([(1, 1, 1)] * 2000)
    assert drop_modalities(present, p=0.0) is present
    kept = drop_modalities(present, p=0.3, generator=torch.Generator().manual_seed(1))
    dropped = 1 - torch.stack([kept[m] for m in NAMES]).float().mean()
    assert 0.25 < float(dropped) < 0.33


def test_sampler_balances_modality_combinations_and_classes() -> None:
    spec = dataset_spec()
    arrays = random_arrays(spec, 400, MediaConfig(), missing_rate=0.3, seed=2)
    label = primary_label(spec, None)
    assert label == "sentiment"  # the first categorical label of the schema
    groups = sampling_groups(arrays, list(NAMES), label)
    weights = sampling_weights(groups, power=1.0)
    mass = Counter()
    for group, w in zip(groups, weights, strict=True):
        mass[group] += w
    assert np.allclose(list(mass.values()), 1.0)  # every (combination, class) equally likely
    sampler = BalancedSampler(weights, 20000, seed=0)
    drawn = Counter(groups[i] for i in sampler)
    counts = np.array(list(drawn.values()))
    assert counts.max() < 2.0 * counts.min()  # raw frequencies differ by far more than that
    raw = Counter(groups)
    assert max(raw.values()) > 8 * min(raw.values())


def test_sampler_ranks_take_disjoint_slices_of_one_draw() -> None:
    weights = np.ones(10)
    ranks = [BalancedSampler(weights, 10, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(4)
    one = BalancedSampler(weights, 10, seed=3)
    one.set_epoch(4)
    both = list(ranks[0]) + list(ranks[1])
    assert sorted(both) == sorted(one)
    assert len(ranks[0]) == len(ranks[1]) == 5
    one.set_epoch(5)
    assert list(one) != sorted(both) or list(one) != both  # a new epoch draws anew


def test_no_batch_holds_an_item_twice_on_one_or_two_ranks() -> None:
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.01, 1.0, 40) ** 4  # a few items far likelier than the rest
    one = list(BalancedSampler(weights, 400, seed=1, batch_size=16))
    assert len(one) == 400
    global_batches = [one[i : i + 16] for i in range(0, 400, 16)]
    assert all(len(set(b)) == len(b) for b in global_batches)
    # Still weighted: the likeliest item is drawn far more often than the least likely.
    counts = Counter(one)
    assert counts[int(weights.argmax())] > 4 * counts.get(int(weights.argmin()), 0)
    # Without the rule, such weights repeat items within batches.
    free = torch.multinomial(torch.as_tensor(weights), 400, replacement=True).tolist()
    assert any(len(set(free[i : i + 16])) < 16 for i in range(0, 400, 16))
    # Two ranks: each rank's batch of 8 is a slice of one global batch of 16.
    ranks = [list(BalancedSampler(weights, 400, 1, r, 2, batch_size=16)) for r in (0, 1)]
    for r, drawn in enumerate(ranks):
        assert drawn == one[r::2]
        assert all(len(set(drawn[i : i + 8])) == 8 for i in range(0, 200, 8))


def test_spectrogram_masking_stays_inside_the_real_audio() -> None:
    rng = np.random.default_rng(0)
    logmel = rng.normal(size=(64, 201)).astype(np.float32)
    logmel[:, 100:] = SILENCE  # padding
    kept_lengths = set()
    for _ in range(50):
        out, valid = augment_logmel(logmel, 100, rng, time_mask_fraction=0.3)
        assert np.array_equal(out[:, 100:], logmel[:, 100:])
        assert out.shape == logmel.shape
        # Truncation: a prefix of at least 50 frames is kept, the rest becomes padding.
        padded = (out == np.float32(SILENCE)).all(axis=0)
        kept = int(padded.argmax())
        assert 50 <= kept <= 100 and padded[kept:].all() and valid == kept
        kept_lengths.add(kept)
    assert len(kept_lengths) > 10  # the length varies: it is no fingerprint


def test_spectrogram_masks_scale_with_a_short_word() -> None:
    """A 0.3 s word (15 frames) keeps all of itself and loses at most 10% to the time mask."""
    rng = np.random.default_rng(1)
    logmel = rng.normal(size=(64, 201)).astype(np.float32) + 5.0
    logmel[:, 15:] = SILENCE
    widest = 0
    for _ in range(200):
        out, valid = augment_logmel(logmel, 15, rng)
        assert valid == 15  # shorter than the 1 s floor: never truncated
        masked_columns = (out[:, :15] != logmel[:, :15]).all(axis=0)
        widest = max(widest, int(masked_columns.sum()))
    assert widest <= 1  # int(0.1 * 15) frames at most, not the fixed 20 of old


def test_configuration_files_load_and_partial_overrides_keep_defaults(tmp_path: Path) -> None:
    default = load_train_config(REPO_CONFIGS / "default.yaml")
    assert default == TrainConfig()  # the file spells out the defaults
    tiny = load_train_config(REPO_CONFIGS / "tiny.yaml")
    assert tiny.alignment.epochs <= 2 and tiny.fusion.epochs <= 2
    partial = tmp_path / "partial.yaml"
    partial.write_text("model:\n  encoders:\n    image: {hidden_size: 64}\n")
    config = load_train_config(partial)
    assert config.model.encoders.image.hidden_size == 64
    assert config.model.encoders.text.pretrained == TrainConfig().model.encoders.text.pretrained
    assert config.with_epochs(3).fusion.epochs == 3
    assert config.digest() != config.with_epochs(3).digest()
    bad = tmp_path / "bad.yaml"
    bad.write_text("alignment:\n  epochz: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: invalid training config: alignment.epochz"):
        load_train_config(bad)


@pytest.fixture(scope="module")
def one_modality_arrays(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A generated dataset where about half the items have one modality only."""
    folder = tmp_path_factory.mktemp("sparse")
    generate_dataset(folder, 48, seed=5, knobs=GeneratorKnobs(missing_modality_rate=0.6))
    return {s: arrays_from_folder(folder, s) for s in ("train", "val", "test")}


def test_training_works_when_items_have_one_modality_only(one_modality_arrays: dict) -> None:
    train = one_modality_arrays["train"]
    counts = np.stack([train.present[m] for m in NAMES], 1).sum(1)
    assert (counts == 1).sum() >= 10 and (counts > 1).sum() >= 3
    config = load_train_config(REPO_CONFIGS / "tiny.yaml")
    pl.seed_everything(0, verbose=False)
    model = build_fused_model(dataset_spec(), MediaConfig(), config.model)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    data = SnapshotDataModule(
        train, one_modality_arrays["val"], dataset_spec(), list(NAMES), config.data, MediaConfig()
    )
    losses = {}
    for name, module in (
        ("alignment", AlignmentModule(model, config.alignment)),
        ("fusion", FusionModule(model, config.fusion)),
    ):
        trainer = quiet_trainer(max_epochs=1)
        trainer.fit(module, datamodule=data)
        losses[name] = float(trainer.callback_metrics["train/loss"])
    assert all(np.isfinite(v) for v in losses.values()), losses
    after = model.trainable_state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    for part in ("trunks.image", "trunks.audio", "projections.text", "fusion.unimodal"):
        assert any(part in k for k in changed), part
    # The temperature was clamped after every step and is still in range.
    assert 0.0 <= float(model.encoder.logit_scale.detach()) <= float(np.log(100)) + 1e-6
    result = evaluate_arrays(model, one_modality_arrays["test"], config.eval)
    assert set(result["fusion"]) == set(dataset_spec().labels)


def test_temperature_is_clamped_after_an_optimizer_step() -> None:
    spec = dataset_spec()
    config = load_train_config(REPO_CONFIGS / "tiny.yaml")
    model = build_fused_model(spec, MediaConfig(), config.model)
    with torch.no_grad():
        model.encoder.logit_scale.fill_(9.0)  # far above log(100) = 4.6
    arrays = random_arrays(spec, 32, MediaConfig(), seed=4)
    data = SnapshotDataModule(arrays, arrays, spec, list(NAMES), config.data, MediaConfig())
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(AlignmentModule(model, config.alignment), datamodule=data)
    assert float(model.encoder.logit_scale.detach()) == pytest.approx(float(np.log(100)))


def test_label_positives_and_pair_weights_train_and_unknown_pairs_are_refused() -> None:
    spec = dataset_spec()
    config = load_train_config(REPO_CONFIGS / "tiny.yaml")
    model = build_fused_model(spec, MediaConfig(), config.model)
    arrays = random_arrays(spec, 32, MediaConfig(), seed=4)
    data = SnapshotDataModule(arrays, arrays, spec, list(NAMES), config.data, MediaConfig())
    stage = config.alignment.model_copy(
        update={"positives": "label", "pair_weights": {"image_audio": 0.2}}
    )
    module = AlignmentModule(model, stage, data.primary_label)
    assert module.positive_label == data.primary_label == "sentiment"
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))
    wrong = config.alignment.model_copy(update={"pair_weights": {"audio_image": 0.2}})
    with pytest.raises(ValueError, match=r"no modality pair \['audio_image'\].*image_audio"):
        AlignmentModule(model, wrong)
    with pytest.raises(ValueError, match="positives: label needs a label"):
        AlignmentModule(model, stage, None)


def test_positives_follow_how_the_dataset_pairs_its_modalities() -> None:
    config = load_train_config(REPO_CONFIGS / "tiny.yaml")
    assert config.alignment.positives == config.fusion.positives == "dataset"
    for paired_by in ("item", "label"):
        spec = dataset_spec().model_copy(update={"paired_by": paired_by})
        model = build_fused_model(spec, MediaConfig(), config.model)
        module = AlignmentModule(model, config.alignment, "sentiment")
        assert module.positives == paired_by
        assert module.positive_label == (None if paired_by == "item" else "sentiment")
    # An explicit choice wins over the dataset's.
    stage = config.alignment.model_copy(update={"positives": "item_and_label"})
    assert AlignmentModule(model, stage, "sentiment").positives == "item_and_label"
    with pytest.raises(ValueError, match="positives: label needs a label"):
        AlignmentModule(model, config.alignment, None)


def test_validation_scores_the_loss_of_the_stages_positives() -> None:
    # The saved epoch is selected on val/loss, so it must be the loss the stage trains.
    # Cross-entropy is linear in its target: half item, half label is the mean of the two.
    spec = dataset_spec()
    config = load_train_config(REPO_CONFIGS / "tiny.yaml")
    model = build_fused_model(spec, MediaConfig(), config.model)
    arrays = random_arrays(spec, 48, MediaConfig(), seed=5)
    data = SnapshotDataModule(arrays, arrays, spec, list(NAMES), config.data, MediaConfig())
    val = {}
    for positives in ("item", "label", "item_and_label"):
        stage = config.alignment.model_copy(update={"positives": positives})
        module = AlignmentModule(model, stage, data.primary_label)
        val[positives] = quiet_trainer().validate(module, datamodule=data)[0]["val/loss"]
    assert abs(val["item"] - val["label"]) > 1e-3, val
    assert val["item_and_label"] == pytest.approx((val["item"] + val["label"]) / 2, rel=1e-4)


@pytest.mark.parametrize("flip", [False, True])
def test_pictures_are_mirrored_in_training_only_where_the_dataset_allows(flip: bool) -> None:
    media = MediaConfig.from_dict({"image": {"flip": flip}})
    assert MediaConfig().image.flip is False  # the default: scans and digits keep their sides
    picture = np.zeros((64, 64, 3), dtype=np.uint8)
    picture[:, :20] = 255  # a bright band on the left only
    arrays = random_arrays(dataset_spec(), 1, media, missing_rate=0.0, seed=0)
    arrays.inputs["image"][0] = picture
    dataset = MultimodalDataset(arrays, ["image"], augment=True, media=media)
    torch.manual_seed(0)
    # The shift moves the band by at most 4 pixels: a mirror puts it on the right.
    right_side = [int(dataset[0]["inputs"]["image"][:, 40:].mean() > 100) for _ in range(40)]
    assert (sum(right_side) > 5) is flip, right_side


@pytest.mark.parametrize("side", [32, 64])
def test_the_shift_augmentation_moves_a_sixteenth_of_the_picture_at_most(side: int) -> None:
    picture = np.zeros((side, side, 3), dtype=np.uint8)
    picture[side // 2, side // 2] = 255  # one bright pixel in the middle
    rng = np.random.default_rng(0)
    moves = set()
    for _ in range(200):
        y, x = np.argwhere(shift_and_flip(picture, rng)[..., 0] == 255)[0]
        moves |= {abs(int(y) - side // 2), abs(int(x) - side // 2)}
    assert max(moves) == side // 16, moves
