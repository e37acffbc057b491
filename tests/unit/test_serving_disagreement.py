"""The disagreement flag: confident, reliable modalities predicting different classes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from serving.runtime import InferenceRuntime


class FakeModel:
    def __init__(self) -> None:
        self.classes = {
            "sentiment": ["negative", "neutral", "positive"],
            "damaged": ["false", "true"],
        }
        self.media = None
        self.bounds = None
        self.modalities: list[str] = []  # no trunks: only the disagreement rule is tested
        # No zero-shot prompts, no trunks whose caches to turn off.
        self.encoder = SimpleNamespace(prompt_modality=None, cache_outputs=lambda enabled: None)

    def eval(self) -> FakeModel:
        return self


def runtime(reliability: dict | None) -> InferenceRuntime:
    return InferenceRuntime(FakeModel(), None, "1", reliability=reliability)


UNIMODAL = {
    "text": {
        "sentiment": np.array([[0.05, 0.05, 0.9]]),  # kind words
        "damaged": np.array([[0.9, 0.1]]),
    },
    "audio": {
        "sentiment": np.array([[0.85, 0.1, 0.05]]),  # angry voice
        "damaged": np.array([[0.1, 0.9]]),
    },
}


def test_kind_words_angry_voice_is_flagged() -> None:
    flag = runtime(None)._disagreement(0, ["text", "audio"], UNIMODAL)
    assert flag["flag"] is True
    labels = {c["label"]: c["by_modality"] for c in flag["labels"]}
    assert labels["sentiment"] == {"text": "positive", "audio": "negative"}


def test_unreliable_modalities_do_not_vote() -> None:
    reliability = {
        "text": {"sentiment": 0.8, "damaged": 0.7},
        "audio": {"sentiment": 0.75, "damaged": 0.5},  # a voice cannot see a crack
    }
    flag = runtime(reliability)._disagreement(0, ["text", "audio"], UNIMODAL)
    assert [c["label"] for c in flag["labels"]] == ["sentiment"]


def test_unsure_predictions_do_not_vote() -> None:
    unsure = {"text": UNIMODAL["text"], "audio": {"sentiment": np.array([[0.5, 0.3, 0.2]])}}
    flag = runtime(None)._disagreement(0, ["text", "audio"], unsure)
    assert flag == {"flag": False, "labels": []}


def test_one_modality_never_disagrees() -> None:
    assert runtime(None)._disagreement(0, ["text"], UNIMODAL)["flag"] is False
