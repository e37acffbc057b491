"""What ingestion accepts: bounds, thresholds and preprocessing, in one object."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from dualmedia.media import MediaConfig


class IngestConfig(BaseModel):
    """Every bound and threshold of ingestion (defaults suit the demo dataset).

    Values that change what a snapshot contains are part of the snapshot id, so a new
    bound yields a new snapshot instead of silently reusing an old one."""

    model_config = ConfigDict(extra="forbid")

    # Per-record bounds.
    max_text_chars: int = 5000
    min_image_side: int = 16
    max_image_side: int = 4096
    max_media_bytes: int = 50 * 1024 * 1024
    min_audio_s: float = 0.25
    max_audio_s: float = 30.0
    silent_peak: float = Field(1e-3, description="peak |sample| below this is silence")
    clip_level: float = 0.999
    max_clipped_fraction: float = 0.05
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
    media: MediaConfig = Field(default_factory=MediaConfig)

    @classmethod
    def from_yaml(cls, path: Path) -> IngestConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})

    def content_key(self) -> dict[str, object]:
        """The settings that shape a snapshot's content (not its speed)."""
        return self.model_dump(mode="json", exclude={"fetch_workers"})
