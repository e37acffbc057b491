"""The modality registry: one module per modality in this package, found at import.

A module here that defines `SPEC` (a `ModalitySpec`) is a modality; adding one is
adding a file. Everything else asks the registry:

    from dualmedia import modalities
    modalities.get("audio").decode(data, bounds.audio)
    for spec in modalities.specs(dataset.modalities): ...

`MediaConfig` (preprocessing) and `MediaBounds` (what is accepted) have one section per
modality, built from the modules' `Preprocess` and `Bounds` classes; both are recorded
in snapshots and models, so ingestion, training and serving agree on every value.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from dualmedia.modalities.base import EncoderConfig, MediaError, ModalitySpec, Reading, Section

__all__ = [
    "REGISTRY",
    "EncoderConfig",
    "MediaBounds",
    "MediaConfig",
    "MediaError",
    "ModalitySpec",
    "Reading",
    "Section",
    "UnknownModality",
    "get",
    "item_reading",
    "names",
    "ordered",
    "specs",
]


class UnknownModality(ValueError):
    """A modality name that no module of the registry defines."""


_SUPPORT_MODULES = {"base", "batch"}  # shared code, not modalities


def _discover() -> dict[str, ModalitySpec]:
    found: list[ModalitySpec] = []
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg or info.name in _SUPPORT_MODULES or info.name.startswith("_"):
            continue
        spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, ModalitySpec):
            found.append(spec)
    return {s.name: s for s in sorted(found, key=lambda s: s.order)}


REGISTRY: dict[str, ModalitySpec] = _discover()


def names() -> list[str]:
    """Every modality the platform knows, in canonical order."""
    return list(REGISTRY)


def get(name: str) -> ModalitySpec:
    try:
        return REGISTRY[str(name)]
    except KeyError:
        raise UnknownModality(
            f"unknown modality {str(name)!r}; known: {', '.join(REGISTRY)}"
        ) from None


def ordered(modalities: Iterable[Any]) -> list[str]:
    """Names of `modalities` (validated) in canonical order."""
    wanted = {get(str(m)).name for m in modalities}
    return [m for m in REGISTRY if m in wanted]


def specs(modalities: Iterable[Any] | None = None) -> list[ModalitySpec]:
    return [REGISTRY[m] for m in (ordered(modalities) if modalities is not None else REGISTRY)]


def item_reading(readings: Mapping[str, Reading], wanted: Iterable[Any]) -> Reading:
    """One item's model inputs and statistics from the readings of its values (keyed by the
    value's modality), for the modalities in `wanted`: each from the item's own value, else
    from another value that carries it (a video's audio track when there is no audio)."""
    keep = set(ordered(wanted))
    merged = Reading()
    for own in (True, False):
        for source, reading in readings.items():
            for m, item in reading.inputs.items():
                if m in keep and m not in merged.inputs and (m == source) == own:
                    merged.inputs[m] = item
                    merged.stats[m] = reading.stats.get(m, {})
    return merged


class _Sections(BaseModel):
    """One section per modality; dict round trip for snapshot.json / model.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Any:
        return cls.model_validate(data or {})

    @classmethod
    def from_recorded(cls, data: dict[str, Any] | None) -> Any:
        """What a snapshot.json or model.json recorded (`to_dict`), each section read as it
        meant when written (`Section.recorded`), so an older snapshot or model loads as it
        was made."""
        data = dict(data or {})
        for name, field in cls.model_fields.items():
            if isinstance(data.get(name), dict):
                data[name] = field.annotation.recorded(data[name])
        return cls.model_validate(data)

    def section(self, modality: str) -> Any:
        return getattr(self, get(modality).name)


def _sections(model_name: str, attribute: str, doc: str) -> Any:
    fields: dict[str, Any] = {
        name: (getattr(spec, attribute), Field(default_factory=getattr(spec, attribute)))
        for name, spec in REGISTRY.items()
    }
    model = create_model(model_name, __base__=_Sections, **fields)
    model.__doc__ = doc
    return model


MediaConfig = _sections("MediaConfig", "Preprocess", "How media become model inputs, per modality.")
MediaBounds = _sections(
    "MediaBounds", "Bounds", "What media are accepted (sizes, durations), per modality."
)
