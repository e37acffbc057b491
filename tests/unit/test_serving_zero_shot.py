"""Served zero-shot: `insights` names, per label and modality, the class whose prompts (the
templates stored with the model) are nearest, exactly as evaluation scores it."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from dualmedia.modalities import MediaConfig
from serving.protocol import parse_request
from serving.runtime import InferenceRuntime
from synthetic import dataset_spec
from training.config import REPO_CONFIGS, load_train_config
from training.metrics import zero_shot_predictions
from training.models.factory import build_fused_model
from training.models.scoring import class_prompt_embeddings, embed_items

MEDIA = MediaConfig()


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_insights_answer_zero_shot_from_the_stored_prompt_templates() -> None:
    torch.manual_seed(0)
    spec = dataset_spec().model_copy(update={"prompt_templates": ["a photo of a {cls}"]})
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    model = build_fused_model(spec, MEDIA, config).eval()
    runtime = InferenceRuntime(model, None, "7")
    fields = {"text": "it arrived broken", "image": png((200, 30, 30))}
    request = parse_request("insights", fields, MEDIA, [], model.bounds)
    answer = runtime.answer("insights", [request])[0]
    zero_shot = answer["zero_shot"]
    categorical = [n for n, c in model.classes.items() if n in ("sentiment", "category")]
    assert set(categorical) <= set(zero_shot)
    assert "damaged" not in zero_shot  # binary labels have no class prompts
    for label in categorical:
        assert set(zero_shot[label]) == {"image"}  # not the prompts' own modality (text)
        # The same class evaluation predicts, with the model's own templates.
        prompts = class_prompt_embeddings(model, label, model.classes[label], spec.prompt_templates)
        embedding = embed_items(model, [request.inputs.items], batch_size=1)[0]["image"]
        expected = zero_shot_predictions(torch.from_numpy(embedding), prompts)[0]
        assert zero_shot[label]["image"]["class"] == model.classes[label][expected]
        assert -1.0 <= zero_shot[label]["image"]["similarity"] <= 1.0
    # Other templates, other prompt embeddings: the stored ones are what serving uses.
    other = class_prompt_embeddings(model, "category", model.classes["category"], ["{cls}"])
    assert not torch.allclose(runtime.prompts["category"], other)
    assert np.isfinite(runtime.prompts["category"].numpy()).all()
