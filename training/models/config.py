"""The architecture (`ModelConfig`): saved with the weights in model.json, so it must be
all that serving needs to rebuild the model. One encoder section per modality, each the
modality's own `Encoder` config class (dualmedia/modalities/<modality>.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from dualmedia import modalities


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Encoders(_Strict):
    def for_modality(self, modality: str) -> Any:
        return getattr(self, modalities.get(modality).name)


# One field per modality of the registry, so a YAML file can change one trunk alone.
EncodersConfig = create_model(
    "EncodersConfig",
    __base__=_Encoders,
    **{
        name: (spec.Encoder, Field(default_factory=spec.default_encoder))
        for name, spec in modalities.REGISTRY.items()
    },
)


class FusionConfig(_Strict):
    """How aligned embeddings become predictions (see training/fusion.py)."""

    mode: Literal["gated", "early", "late", "hybrid"] = "gated"
    num_layers: int = 1
    num_heads: int = 4
    hidden_size: int = 128
    dropout: float = 0.2


class ModelConfig(_Strict):
    """The architecture: saved with the weights, so it must be all serving needs."""

    embed_dim: int = 128
    projection: Literal["linear", "mlp"] = "mlp"
    encoders: EncodersConfig = Field(default_factory=EncodersConfig)  # type: ignore[valid-type]
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    init_logit_scale: float = 1.0 / 0.07
