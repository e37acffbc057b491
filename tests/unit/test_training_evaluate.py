"""Retrieval recall@k, zero-shot prompts from the schema, evaluation report and figures,
and the pyfunc request format."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image

from dualmedia import modalities
from dualmedia.modalities import MediaConfig
from dualmedia.modalities.audio import log_mel
from synthetic import dataset_spec
from synthetic.fixtures import random_arrays
from training.config import REPO_CONFIGS, EvalConfig, load_train_config
from training.evaluate import evaluate_arrays, flat_metrics
from training.metrics import classification_scores, retrieval_recall
from training.models.factory import build_fused_model, load_fused_model_dir, save_fused_model
from training.models.pyfunc import (
    encode_input,
    frame_items,
    input_example,
    model_signature,
    predict_frame,
)
from training.models.scoring import class_prompt_embeddings

MEDIA = MediaConfig()


def test_recall_at_k_counts_a_hit_when_the_same_id_is_in_the_top_k() -> None:
    queries = F.normalize(torch.eye(4)[:3], dim=1)
    # Candidate "b" is the best match of query "b"; query "a"'s own candidate ranks 3rd.
    candidates = F.normalize(
        torch.tensor([[0.2, 0, 0, 1], [0, 1, 0, 0], [0.9, 0, 1, 0], [0.95, 0, 0, 0.1]]), dim=1
    )
    recall = retrieval_recall(queries, candidates, ["a", "b", "c"], ["a", "b", "c", "d"], [1, 3])
    # a: ranks d, c, a -> miss@1, hit@3; b: hit@1; c: c is first -> hit@1.
    assert recall == {1: pytest.approx(2 / 3), 3: 1.0}


def test_recall_counts_any_positive_with_the_query_id() -> None:
    queries = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    assert retrieval_recall(queries, candidates, ["x"], ["y", "x", "x"], [1])[1] == 1.0
    assert retrieval_recall(queries, candidates, ["x"], ["x", "y", "y"], [2])[2] == 0.0


def test_classification_scores_skip_missing_labels() -> None:
    scores = classification_scores(np.array([0, 1, -1, 1]), np.array([0, 1, 0, 0]), 2)
    assert scores["n"] == 3
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert 0 < scores["macro_f1"] < 1


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    return build_fused_model(dataset_spec(), MEDIA, config).eval()


def test_zero_shot_uses_the_templates_the_model_stores(tmp_path: Path, monkeypatch) -> None:
    spec = dataset_spec().model_copy(update={"prompt_templates": ["it is {cls}"]})
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    save_fused_model(build_fused_model(spec, MEDIA, config), tmp_path)
    loaded = load_fused_model_dir(tmp_path).eval()
    assert loaded.spec.prompt_templates == ["it is {cls}"]
    seen: list[str] = []
    original = loaded.encoder.encode_prompts
    monkeypatch.setattr(
        loaded.encoder, "encode_prompts", lambda texts: seen.extend(texts) or original(texts)
    )
    arrays = random_arrays(dataset_spec(), 12, MEDIA, seed=3)
    result = evaluate_arrays(loaded, arrays, EvalConfig())
    assert set(result["zero_shot"]) == {"sentiment", "category"}
    assert "it is mug" in seen and all(text.startswith("it is ") for text in seen)


def test_zero_shot_prompts_are_built_from_the_schema(model, monkeypatch) -> None:
    seen: list[list[str]] = []
    original = model.encoder.encode_prompts
    monkeypatch.setattr(
        model.encoder, "encode_prompts", lambda texts: seen.append(texts) or original(texts)
    )
    embeddings = class_prompt_embeddings(model, "colour", ["red", "blue"], ["{label}: {cls}"])
    assert seen == [["colour: red"], ["colour: blue"]]
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2))


def test_evaluation_covers_every_pair_label_and_ablation(model, tmp_path: Path) -> None:
    arrays = random_arrays(dataset_spec(), 40, MEDIA, missing_rate=0.2, seed=7)
    result = evaluate_arrays(model, arrays, EvalConfig(), plots_dir=tmp_path)
    assert set(result["retrieval"]) == {
        "text_to_image", "text_to_audio", "image_to_text",
        "image_to_audio", "audio_to_text", "audio_to_image",
    }  # fmt: skip
    assert set(result["retrieval"]["text_to_image"]) == {
        "R@1", "R@5", "R@10", "chance_R@1", "by_sentiment", "by_category",
    }  # fmt: skip
    by_class = result["retrieval"]["image_to_audio"]["by_category"]
    # A hit is any item of the query's class: at least as often as the same item.
    assert by_class["R@1"] >= result["retrieval"]["image_to_audio"]["R@1"]
    assert 0.0 < by_class["chance_R@1"] < 1.0 and by_class["R@10"] >= by_class["R@1"]
    # Zero-shot only for categorical labels, against the non-text modalities.
    assert set(result["zero_shot"]) == {"sentiment", "category"}
    assert set(result["zero_shot"]["category"]) == {"image", "audio"}
    assert set(result["fusion"]) == {"sentiment", "category", "damaged", "mismatch"}
    assert set(result["ablation"]) == {
        f"{kind}_{m}" for kind in ("with", "without", "only") for m in ("text", "image", "audio")
    }
    # Ablations count only the items that have the modality; the gain compares the same items.
    has_image = int(result["present"]["image"])
    assert 0 < has_image < 40
    assert result["ablation"]["only_image"]["damaged"]["n"] <= has_image
    assert (
        result["ablation"]["with_image"]["damaged"]["n"]
        == (result["ablation"]["only_image"]["damaged"]["n"])
    )
    assert result["fusion"]["damaged"]["n"] > result["ablation"]["with_image"]["damaged"]["n"]
    gain = result["gain"]["damaged"]["over_only_image"]
    only = result["ablation"]["only_image"]["damaged"]["macro_f1"]
    assert gain == pytest.approx(result["ablation"]["with_image"]["damaged"]["macro_f1"] - only)
    for png in ("confusion_matrices.png", "retrieval_examples.png"):
        with Image.open(tmp_path / png) as image:
            assert image.format == "PNG" and image.width > 200
    flat = flat_metrics(result)
    assert "test/retrieval/text_to_image/R_at_5" in flat
    assert "test/ablation/without_audio/mismatch/macro_f1" in flat
    assert all(isinstance(v, float) for v in flat.values())


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _wav(seconds: float = 1.0, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buffer.getvalue()


def test_requests_decode_like_the_media_pipeline_and_name_bad_cells(model) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    wav = _wav()
    frame = pd.DataFrame(
        [
            {"text": "great mug", "image": _png(pixels), "audio": base64.b64encode(wav).decode()},
            {"text": None, "image_input": encode_input(pixels)},
        ]
    )
    items = frame_items(frame, model)
    assert [sorted(i) for i in items] == [["audio", "image", "text"], ["image"]]
    assert np.array_equal(items[0]["image"], pixels)
    assert np.array_equal(items[1]["image"], pixels)
    decoded = modalities.get("audio").decode(wav, model.bounds.audio)
    expected = log_mel(decoded, MEDIA.audio)[0]
    assert np.allclose(items[0]["audio"]["logmel"], expected)

    broken = pd.DataFrame([{"text": "ok"}, {"image": base64.b64encode(b"not an image").decode()}])
    with pytest.raises(ValueError, match=r"row 1: image: .*not a decodable"):
        frame_items(broken, model)
    with pytest.raises(ValueError, match="row 0: no modality"):
        frame_items(pd.DataFrame([{"text": None}]), model)
    with pytest.raises(ValueError, match="unknown input columns"):
        frame_items(pd.DataFrame([{"txt": "typo"}]), model)


def test_predictions_name_classes_gates_driver_and_per_modality_guesses(model) -> None:
    arrays = random_arrays(dataset_spec(), 3, MEDIA, missing_rate=0.0, seed=2)
    frame = input_example(arrays, n=3)
    frame.loc[1, "image_input"] = None  # the second item has no photo
    out = predict_frame(model, frame)
    assert len(out) == 3
    assert set(out["sentiment"]) <= {"negative", "neutral", "positive"}
    assert set(out["damaged"]) <= {"false", "true"}
    gates = out[["gate_text", "gate_image", "gate_audio"]].to_numpy()
    assert np.allclose(gates.sum(1), 1.0) and gates[1, 1] == 0.0
    assert out.loc[1, "damaged_by_image"] is None and out.loc[0, "damaged_by_image"] is not None
    assert set(out["driver"]) <= {"text", "image", "audio"}
    signature = model_signature(model)
    assert set(signature.outputs.input_names()) == set(out.columns)
    assert all(not spec.required for spec in signature.inputs.inputs)


def test_scoring_sets_eval_mode_even_when_only_one_submodule_is_training() -> None:
    from torch import nn

    from training.models.scoring import eval_mode

    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.5))).eval()
    model[1][0].train()  # the root says eval; a dropout inside would still drop
    eval_mode(model)
    assert not any(module.training for module in model.modules())
