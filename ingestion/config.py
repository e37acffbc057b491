"""What ingestion accepts: bounds, thresholds and preprocessing, in one object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dualmedia.contract import DatasetSpec, read_yaml_model


class IngestConfig(BaseModel):
    """Every bound and threshold of ingestion (defaults suit the demo dataset).

    Values that change what a snapshot contains are part of the snapshot id, so a new
    bound yields a new snapshot instead of silently reusing an old one."""

    model_config = ConfigDict(extra="forbid")

    # Per-record bounds and preprocessing, per modality, over the dataset's own
    # (dataset.yaml `bounds:` / `media:`) and the registry's defaults, e.g.
    # {"audio": {"min_duration_s": 0.05}}.
    bounds: dict[str, dict[str, Any]] = Field(default_factory=dict)
    media: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Preprocessing chosen from the data itself (ModalitySpec.derive_media): on by default;
    # what dataset.yaml or `media` sets wins field by field.
    derive_media: bool = True
    # What the plan derived (filled in by plan_ingest, recorded in the snapshot).
    derived_media: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Media sampled per modality to derive from (the first ones in batch order).
    derive_sample: int = Field(200, ge=1)
    required_labels: list[str] = Field(default_factory=list)

    # Batch-level gates.
    max_reject_rate: float = Field(0.2, description="a batch rejecting more fails the step")
    max_missing_rate: float = Field(0.6, description="per modality, in the GX suite")
    min_class_share: float = 0.02
    max_class_share: float = 0.9
    balance_min_records: int = Field(
        100, description="class-balance expectations only for batches at least this large"
    )

    # Output.
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    shard_rows: int = 512
    fetch_workers: int = 8

    @classmethod
    def from_yaml(cls, path: Path) -> IngestConfig:
        return read_yaml_model(cls, path, "ingestion config")

    def media_bounds(self, spec: DatasetSpec) -> Any:
        """The bounds records are checked against: MediaBounds, one section per modality."""
        return spec.media_bounds(self.bounds)

    def media_config(self, spec: DatasetSpec) -> Any:
        """How accepted media are preprocessed: MediaConfig, one section per modality."""
        return spec.media_config(self.media, self.derived_media)

    def content_key(self) -> dict[str, object]:
        """The settings that shape a snapshot's content (not its speed)."""
        return self.model_dump(mode="json", exclude={"fetch_workers"})
