"""Preprocessing that follows the data: a sample of each media modality's values is
decoded and its statistics handed to the modality (`ModalitySpec.derive_media`), which
chooses e.g. the audio sample rate and clip length. The plan step runs this once per
recipe: a later snapshot that carries rows over keeps the values its rows were made with."""

from __future__ import annotations

import json
from typing import Any

from dualmedia import modalities
from dualmedia.contract import DatasetSpec
from dualmedia.modalities import ModalitySpec
from ingestion.checks import Reject, _fetch
from ingestion.config import IngestConfig
from ingestion.source import Batch, DatasetSource


def derives(spec: ModalitySpec) -> bool:
    """Whether the modality chooses anything from data (skip sampling when not)."""
    return type(spec).derive_media is not ModalitySpec.derive_media


def sample_stats(
    source: DatasetSource,
    batches: list[Batch],
    modality: ModalitySpec,
    bounds: Any,
    limit: int,
) -> list[dict[str, float]]:
    """Statistics of the first `limit` values of `modality` that decode within `bounds`
    (MediaBounds), fetched as ingestion fetches them, in
    batch and line order (deterministic). Values ingestion would refuse are skipped: they
    are quarantined later with their reason, and must not shape the preprocessing."""
    found: list[dict[str, float]] = []
    for batch in sorted(batches, key=lambda b: b.name):
        for raw in source.manifest_lines(batch):
            if len(found) >= limit:
                return found
            try:
                value = json.loads(raw).get(modality.name)
                if value is None:
                    continue
                data = _fetch(value, modality, bounds, batch, source)  # ingestion's own fetch
                found.append(modality.stats(modality.decode(data, bounds.section(modality.name))))
            except (ValueError, AttributeError, Reject):
                continue  # not JSON, not an object, refused (missing, too large, undecodable)
    return found


def derive_media(
    source: DatasetSource, batches: list[Batch], spec: DatasetSpec, config: IngestConfig
) -> dict[str, dict[str, Any]]:
    """{modality: {field: value}} chosen from the data (only the fields a modality derives)."""
    bounds = config.media_bounds(spec)
    derived: dict[str, dict[str, Any]] = {}
    for modality in modalities.specs(spec.modalities):
        if modality.inline or not derives(modality):
            continue
        stats = sample_stats(source, batches, modality, bounds, config.derive_sample)
        declared = {**spec.media.get(modality.name, {}), **config.media.get(modality.name, {})}
        fields = modality.derive_media(stats, declared)
        if fields:
            derived[modality.name] = fields
    return derived
