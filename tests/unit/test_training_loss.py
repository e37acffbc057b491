"""ClipLoss over every modality pair with missing items, and OpenCLIP's optimiser rules."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from training.lit import (
    class_weights,
    label_class_counts,
    label_loss,
    no_weight_decay,
    param_groups,
)
from training.models.loss import ClipLoss, symmetric_clip_loss


def unit_rows(n: int, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


SCALE = torch.tensor(math.log(1 / 0.07))


def test_matched_pairs_cost_less_than_shuffled_ones() -> None:
    a = unit_rows(8)
    assert symmetric_clip_loss(a, a, SCALE) < symmetric_clip_loss(a, a.roll(1, 0), SCALE) - 1.0


def test_loss_is_symmetric_in_its_two_modalities() -> None:
    a, b = unit_rows(6, seed=1), unit_rows(6, seed=2)
    assert torch.allclose(symmetric_clip_loss(a, b, SCALE), symmetric_clip_loss(b, a, SCALE))


def test_every_pair_of_present_modalities_counts() -> None:
    features = {m: unit_rows(6, seed=i) for i, m in enumerate(("text", "image", "audio"))}
    present = {m: torch.ones(6, dtype=torch.bool) for m in features}
    total, pairs = ClipLoss()(features, present, SCALE)
    assert set(pairs) == {"text_image", "text_audio", "image_audio"}
    assert torch.allclose(total, torch.stack(list(pairs.values())).mean())


def test_missing_items_are_left_out_of_a_pair_not_zero_filled() -> None:
    text, image = unit_rows(6, seed=3), unit_rows(6, seed=4)
    present = {
        "text": torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool),
        "image": torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool),
    }
    loss, _ = ClipLoss()({"text": text, "image": image}, present, SCALE)
    both = present["text"] & present["image"]
    expected = symmetric_clip_loss(text[both], image[both], SCALE)
    assert torch.allclose(loss, expected)
    # Whatever sits in the rows of missing items has no effect...
    noisy_text = text.clone()
    noisy_text[2] = unit_rows(1, seed=99)[0]
    again, _ = ClipLoss()({"text": noisy_text, "image": image}, present, SCALE)
    assert torch.allclose(loss, again)
    # ...and zero-filling them instead would give a different (wrong) loss.
    zero_filled = symmetric_clip_loss(text * present["text"][:, None], image, SCALE)
    assert not torch.allclose(loss, zero_filled)


def test_a_pair_with_fewer_than_two_shared_items_is_skipped_but_stays_differentiable() -> None:
    text = unit_rows(4, seed=5).requires_grad_(True)
    audio = unit_rows(4, seed=6)
    present = {
        "text": torch.tensor([1, 1, 1, 0], dtype=torch.bool),
        "audio": torch.tensor([0, 0, 1, 1], dtype=torch.bool),
    }
    scale = SCALE.clone().requires_grad_(True)
    loss, pairs = ClipLoss()({"text": text, "audio": audio}, present, scale)
    assert pairs == {}
    assert float(loss.detach()) == 0.0
    loss.backward()  # no error: the graph is connected
    assert scale.grad is not None


def test_with_label_positives_same_class_items_are_pulled_together_not_apart() -> None:
    # Four items, two classes. "close": item 0's photo sits near item 1's text (same class);
    # "far": it sits near item 2's (the other class). Item positives (CLIP) dislike both;
    # label positives prefer the same-class neighbour.
    eye = torch.eye(4)
    texts = eye
    close = F.normalize(eye + 0.9 * eye[[1, 0, 3, 2]], dim=1)
    far = F.normalize(eye + 0.9 * eye[[2, 3, 0, 1]], dim=1)
    classes = torch.tensor([0, 0, 1, 1])
    by_item = {
        name: symmetric_clip_loss(x, texts, SCALE) for name, x in (("close", close), ("far", far))
    }
    by_label = {
        name: symmetric_clip_loss(x, texts, SCALE, classes)
        for name, x in (("close", close), ("far", far))
    }
    assert torch.isclose(by_item["close"], by_item["far"])  # CLIP cannot tell them apart
    assert by_label["close"] < by_label["far"] - 0.5
    # An unknown class (-1) is its own group only: the item loss again.
    unknown = torch.full((4,), -1)
    assert torch.isclose(symmetric_clip_loss(close, texts, SCALE, unknown), by_item["close"])


def test_item_and_label_positives_keep_the_items_own_partner_first() -> None:
    # Item 0's photo sits exactly between its own text and item 1's (same class). Label
    # positives are indifferent to which of the two it is nearer; with half the target on
    # the item itself, nearer its own text is better, and the other class stays a negative.
    eye = torch.eye(4)
    texts = eye
    classes = torch.tensor([0, 0, 1, 1])
    own = F.normalize(eye + 0.5 * eye[[1, 0, 3, 2]], dim=1)  # nearer its own text
    swapped = F.normalize(0.5 * eye + eye[[1, 0, 3, 2]], dim=1)  # nearer the neighbour's

    def loss(x: torch.Tensor, share: float) -> float:
        return float(symmetric_clip_loss(x, texts, SCALE, classes, share))

    assert abs(loss(own, 0.0) - loss(swapped, 0.0)) < 1e-5
    assert loss(own, 0.5) < loss(swapped, 0.5) - 0.1
    far = F.normalize(eye + 0.9 * eye[[2, 3, 0, 1]], dim=1)  # near the other class
    assert loss(far, 0.5) > loss(own, 0.5) + 0.5
    # item_share 1: the item loss.
    assert abs(loss(own, 1.0) - float(symmetric_clip_loss(own, texts, SCALE))) < 1e-5


def test_pair_weights_make_a_weighted_mean_of_the_pairs() -> None:
    features = {m: unit_rows(6, seed=i) for i, m in enumerate(("text", "image", "audio"))}
    present = {m: torch.ones(6, dtype=torch.bool) for m in features}
    _, pairs = ClipLoss()(features, present, SCALE)
    total, _ = ClipLoss({"image_audio": 0.0, "text_audio": 3.0})(features, present, SCALE)
    expected = (pairs["text_image"] + 3.0 * pairs["text_audio"]) / 4.0
    assert torch.isclose(total, expected)


def test_temperature_and_norms_and_biases_get_no_weight_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.logit_scale = torch.nn.Parameter(torch.tensor(2.0))  # type: ignore[assignment]
    named = list(model.named_parameters())
    groups = param_groups(named, lr=0.1, weight_decay=0.2)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in named}
    assert {names[i] for i in decayed} == {"0.weight"}
    assert all(g["lr"] == 0.1 for g in groups)
    assert no_weight_decay("encoder.logit_scale", model.logit_scale)


def test_rare_classes_weigh_more_in_the_label_loss() -> None:
    counts = label_class_counts(
        {"flag": np.array([0, 0, 0, 0, 0, 0, 1, 1, -1])}, {"flag": ["n", "y"]}
    )
    assert counts["flag"].tolist() == [6, 2]
    weights = class_weights(counts["flag"], power=1.0)
    assert weights.tolist() == [4 / 6, 4 / 2]  # mean count / class count
    assert class_weights(counts["flag"], power=0.0).tolist() == [1.0, 1.0]
    logits = {"flag": torch.tensor([[2.0, 0.0], [2.0, 0.0]])}  # both predicted "n"
    labels = {"flag": torch.tensor([0, 1])}
    plain = label_loss(logits, labels, None)
    weighted = label_loss(logits, labels, None, {"flag": torch.tensor(weights, dtype=torch.float)})
    assert weighted > plain  # the missed rare item costs more
