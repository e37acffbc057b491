"""What a modality is to the platform: one `ModalitySpec` subclass per modality.

Every stage asks the registry (`dualmedia.modalities`) for a modality's spec and calls
these methods; none of them names a modality. A spec says, for its modality:

- the contract: manifest field (= its name), accepted formats, rejection reasons, whether
  the manifest holds the value inline (text) or a path to a media object (everything else);
- decoding and bounds (`Bounds`, checked from the header before decoding where possible),
  the one implementation that ingestion and serving both call;
- preprocessing to model input (`Preprocess`), the snapshot columns that store it, and how
  a batch stacks it with its padding and presence mask;
- raw-field statistics for data-quality monitoring and the GX expectations on them;
- the trunk (`Encoder` config section and builder) and the Feast field.

Items travel as "model inputs": a dict of numpy arrays (or a str for inline text) for one
item, None where the item lacks the modality.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class MediaError(ValueError):
    """A media value cannot be used; `reason` is a rejection reason of the contract."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Reading:
    """What one media value gives, keyed by modality: model inputs and raw-field statistics.
    Usually only the value's own modality; a value may carry another one too (a video's
    audio track is audio), which the item uses when it has none of its own."""

    inputs: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)


class Section(BaseModel):
    """A per-modality configuration section (strict: a typo is an error, not a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def recorded(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A section as a snapshot or model recorded it (a full dump), read as what it meant
        when it was written: a field added later gets the value that was implied then."""
        return data


class EncoderConfig(BaseModel):
    """Fields every trunk has: a checkpoint (`pretrained`) or a small transformer from
    scratch. Modalities subclass it with their own fields."""

    model_config = ConfigDict(extra="forbid")
    pretrained: str | None = Field(
        default=None,
        description="local folder, hub id (needs a local cache) or pkg:<module>; None = scratch",
    )
    # None: every layer trains; 0: frozen; N: only the last N transformer layers train.
    trainable_layers: int | None = None
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _scratch_trains_every_layer(cls, data: Any) -> Any:
        """From scratch (`pretrained: null`) every layer trains: a modality's default
        `trainable_layers: 0`, meant for its packaged checkpoint, must not freeze a random
        network."""
        if not isinstance(data, dict):
            return data
        if data.get("pretrained", cls.model_fields["pretrained"].default) is not None:
            return data
        if data.get("trainable_layers") is not None:
            raise ValueError(
                "trainable_layers applies to a pretrained encoder; from scratch "
                "(pretrained: null) every layer trains"
            )
        return {**data, "trainable_layers": None}

    def transformer_sizes(self) -> dict[str, Any]:
        """These sizes as Hugging Face transformer config arguments (ViT, AST, ...)."""
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.hidden_size * self.mlp_ratio,
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": self.dropout,
        }


class ModalitySpec(ABC):
    """One modality. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    order: ClassVar[int]  # canonical position (batches, fusion tokens, reports)
    # Zero-shot classification embeds text prompts with the modality that sets this.
    encodes_prompts: ClassVar[bool] = False
    # Manifest value: True = the value itself (text), False = a path/URI to fetch.
    inline: ClassVar[bool] = False
    formats: ClassVar[tuple[str, ...]] = ()  # accepted containers, for docs and errors
    reasons: ClassVar[tuple[str, ...]] = ()  # rejection reasons of this modality
    too_large_reason: ClassVar[str] = ""  # a media file over `max_bytes`
    # Snapshot statistics (float columns) and which one is null when the modality is absent
    # (the GX suite's missing-rate check reads it).
    stat_columns: ClassVar[tuple[str, ...]] = ()
    presence_column: ClassVar[str]
    # The statistics the drift monitor compares (default: all of stat_columns).
    monitored_columns: ClassVar[tuple[str, ...] | None] = None
    Bounds: ClassVar[type[Section]]
    Preprocess: ClassVar[type[Section]]
    Encoder: ClassVar[type[EncoderConfig]]

    # ---- contract ------------------------------------------------------------------------
    @property
    def feast_view(self) -> str:
        """The Feast feature view (and feature) holding this modality's embeddings."""
        return f"{self.name}_embedding"

    @property
    def has_column(self) -> str:
        """Monitoring's boolean column: does the item have this modality."""
        return f"has_{self.name}"

    @property
    def monitored(self) -> tuple[str, ...]:
        return self.stat_columns if self.monitored_columns is None else self.monitored_columns

    def max_bytes(self, bounds: Any) -> int | None:
        """The largest media file accepted (fetches stop there); None for inline values."""
        return getattr(bounds, "max_bytes", None)

    def file_bytes(self, value: Any, bounds: Any, empty_reason: str) -> bytes:
        """A media file's bytes, refused when empty or over the bound before anything reads it."""
        data = bytes(value)
        if len(data) == 0:
            raise MediaError(empty_reason, f"{self.name} file is empty (0 bytes)")
        limit = self.max_bytes(bounds)
        if limit is not None and len(data) > limit:
            raise MediaError(
                self.too_large_reason,
                f"{self.name} file is {len(data)} bytes; the bound is {limit}",
            )
        return data

    def default_encoder(self) -> EncoderConfig:
        return self.Encoder()

    # ---- decoding and bounds --------------------------------------------------------------
    def read(self, value: Any, bounds: Any, media: Any, carry: Collection[str] = ()) -> Reading:
        """The one entry that ingestion, serving and the pyfunc model call: decode a value
        within `bounds` and preprocess it with `media` (MediaError(reason) when refused).

        `carry`: modalities the item wants but has no value of; a value that holds one
        (a clip's audio track) reads it too. Nothing else is decoded."""
        decoded = self.decode(value, bounds)
        return Reading(
            inputs={self.name: self.preprocess(decoded, media)},
            stats={self.name: self.stats(decoded)},
        )

    @abstractmethod
    def decode(self, value: Any, bounds: Any) -> Any:
        """Decode a manifest/request value (bytes of a file, or the inline value) into the
        modality's decoded form, enforcing `bounds` (header first); MediaError(reason)."""

    @abstractmethod
    def stats(self, decoded: Any) -> dict[str, float]:
        """Raw-field statistics of a decoded value (keys: `stat_columns`)."""

    def derive_media(
        self, stats: list[dict[str, float]], declared: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Preprocessing fields chosen from a sample of the dataset's own media (`stats`:
        one `stats()` dict per sampled value), e.g. audio at its native rate when that is
        below the model's; `declared`: this modality's fields that dataset.yaml and the
        ingest configuration set (they may decide what applies). Ingestion records them
        in the snapshot; the declared fields override any of them. Default: nothing."""
        return {}

    # ---- model input ----------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, decoded: Any, media: Any) -> Any:
        """The model input of one item, exactly as snapshots store it."""

    @abstractmethod
    def record_fields(self) -> list[tuple[str, str]]:
        """Snapshot columns holding the model input: (column, arrow type name)."""

    @abstractmethod
    def to_record(self, item: Any) -> dict[str, Any]:
        """Model input -> snapshot column values."""

    @abstractmethod
    def from_record(self, row: dict[str, Any], media: Any) -> Any:
        """Snapshot column values -> model input (None when the item lacks the modality)."""

    @abstractmethod
    def collate(self, items: list[Any], media: Any) -> Any:
        """Stack one batch's model inputs (None where absent, padded) into the trunk's input."""

    @abstractmethod
    def select(self, batch_input: Any, rows: Any) -> Any:
        """The rows `rows` (a LongTensor) of a collated input."""

    def augment(self, item: Any, rng: np.random.Generator, config: Any = None) -> Any:
        """A training-time random variation of one model input (default: none); `config` is
        the modality's media section (what the dataset allows, e.g. image `flip`)."""
        return item

    # ---- monitoring and validation ----------------------------------------------------------
    def expectations(self, bounds: Any) -> list[tuple[str, dict[str, Any]]]:
        """GX expectations specific to this modality: (expectation class name, kwargs)."""
        return []

    # ---- model --------------------------------------------------------------------------------
    @abstractmethod
    def build_trunk(self, config: EncoderConfig, media: Any) -> Any:
        """The trunk (a torch module mapping `collate`'s output to [B, hidden] floats)."""

    # ---- synthetic data ---------------------------------------------------------------------
    @abstractmethod
    def random_input(self, media: Any, rng: np.random.Generator) -> Any:
        """A noise model input (unit tests and benchmarks: the right shape, no meaning)."""

    @abstractmethod
    def example_value(self) -> Any:
        """A small valid value of this modality's request field (the smoke test's)."""

    def preview(self, item: Any) -> tuple[str, Any]:
        """How a figure shows one item: ("picture", HxWx3 or HxW array) or ("caption", str)."""
        return ("caption", "")
