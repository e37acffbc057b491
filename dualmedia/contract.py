"""The dataset contract: `dataset.yaml`, manifest records and rejection reasons.

A dataset is a prefix holding `dataset.yaml` and batches, each batch a folder with
`manifest.jsonl` and the media it names (see DESIGN.md, "The dataset contract").
Model heads are built from the label schema declared here, so no label name is
hard-coded anywhere else in the platform.
"""

from __future__ import annotations

import json
import string
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dualmedia import modalities
from dualmedia.modalities import MediaBounds, MediaConfig

DATASET_FILE = "dataset.yaml"
MANIFEST_FILE = "manifest.jsonl"


# The modalities the platform knows (one module each in dualmedia/modalities); the order
# is the canonical order everywhere.
Modality = StrEnum("Modality", {name.upper(): name for name in modalities.names()})


class ContractError(ValueError):
    """A dataset does not follow the contract; the message names what and where."""


# Label names become nn.ModuleDict keys, Parquet columns, MLflow metric names and Feast
# fields: identifier-like, and never an attribute nn.Module/nn.ModuleDict already has
# (`training`, `forward`, ...: ModuleDict refuses them, or worse, shadows them). The set is
# the public names of `dir(nn.ModuleDict())` (torch is not imported here; a unit test
# checks the list against the installed torch).
LABEL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
MAX_LABELS = 64
MAX_CLASSES = 1000
MAX_CLASS_NAME_CHARS = 64
# Zero-shot prompt templates when dataset.yaml names none: the class name alone and a few
# that fit any data ({label}: the label's name, {cls}: a class name).
DEFAULT_PROMPT_TEMPLATES = ("{cls}", "{label}: {cls}", "the {label} is {cls}", "this is {cls}")
MAX_PROMPT_TEMPLATE_CHARS = 200
RESERVED_LABEL_NAMES = frozenset(
    """T_destination add_module apply bfloat16 buffers call_super_init children clear compile
    cpu cuda double dump_patches eval extra_repr float forward get_buffer get_extra_state
    get_parameter get_submodule half ipu items keys load_state_dict modules mtia
    named_buffers named_children named_modules named_parameters parameters pop
    register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
    register_parameter register_state_dict_post_hook register_state_dict_pre_hook
    requires_grad_ set_extra_state set_submodule share_memory smart_apply state_dict to
    to_empty train training type update values xpu zero_grad""".split()  # noqa: SIM905
)


def check_label_name(name: str) -> None:
    """ValueError naming the label when `name` cannot be a label name."""
    import keyword
    import re

    where = f"label name {name!r} (labels.{name})"
    if not isinstance(name, str) or not re.match(LABEL_NAME_PATTERN, name):
        raise ValueError(
            f"{where}: must start with a letter and hold only letters, digits and '_' "
            "(at most 64 characters)"
        )
    if keyword.iskeyword(name):
        raise ValueError(f"{where}: is a Python keyword; choose another name")
    if name in RESERVED_LABEL_NAMES:
        raise ValueError(
            f"{where}: clashes with an attribute of torch's nn.Module/nn.ModuleDict that the "
            f"model's label heads live in; choose another name (e.g. is_{name})"
        )


def check_class_name(value: str) -> None:
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(f"class {value!r}: must be a non-empty name without surrounding spaces")
    if len(value) > MAX_CLASS_NAME_CHARS or not value.isprintable():
        raise ValueError(
            f"class {value[:80]!r}: must be printable and at most {MAX_CLASS_NAME_CHARS} characters"
        )


class CategoricalLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["categorical"]
    classes: list[str] = Field(min_length=2, max_length=MAX_CLASSES)

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        for value in classes:
            check_class_name(value)
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique, got {classes}")
        return classes


class BinaryLabel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["binary"]

    @property
    def classes(self) -> list[str]:
        return ["false", "true"]


LabelSpec = Annotated[CategoricalLabel | BinaryLabel, Field(discriminator="type")]


class DatasetSpec(BaseModel):
    """What `dataset.yaml` declares: the modalities present and the label schema."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    modalities: list[Modality] = Field(min_length=1)
    labels: dict[str, LabelSpec] = Field(default_factory=dict, max_length=MAX_LABELS)
    description: str = ""
    # Per-modality bounds and preprocessing that differ from the defaults, e.g.
    # `bounds: {audio: {min_duration_s: 0.05}}` (every field: README, "The dataset contract").
    bounds: dict[str, dict[str, Any]] = Field(default_factory=dict)
    media: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Zero-shot prompts: each template names the class ({cls}) and may name the label
    # ({label}); a class's prompt embedding is the mean over them. Stored with the model
    # (model.json holds this spec), so evaluation of any later snapshot uses these.
    prompt_templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROMPT_TEMPLATES), min_length=1, max_length=32
    )
    # Group-aware split: records sharing this manifest field's value (a speaker, a product)
    # land in the same split, so "test" means unseen speakers. Records without the field,
    # and records whose manifest names a split, are split as usual (by id / as named).
    split_by: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    # How an item's modalities belong together: "item", they show the same thing (a
    # review's photo, words and voice); "label", they were put together by class only (a
    # scan and a recording of the same digit). Training's contrastive positives follow it
    # (`positives: dataset`): with "label", items of the same class are not negatives.
    paired_by: Literal["item", "label"] = "item"

    @field_validator("split_by")
    @classmethod
    def _split_field(cls, field_name: str | None) -> str | None:
        reserved = {"id", "labels", "split", "created_at", *modalities.names()}
        if field_name in reserved:
            raise ValueError(f"split_by names a field with another meaning: {field_name!r}")
        return field_name

    def split_key(self, record: dict[str, Any]) -> str:
        """What a record's split is drawn from: its `split_by` group, else its id."""
        group = record.get(self.split_by) if self.split_by else None
        if isinstance(group, (str, int)) and not isinstance(group, bool) and str(group):
            return f"{self.split_by}={group}"
        return str(record["id"])

    @field_validator("prompt_templates")
    @classmethod
    def _templates(cls, templates: list[str]) -> list[str]:
        for template in templates:
            if len(template) > MAX_PROMPT_TEMPLATE_CHARS:
                raise ValueError(f"prompt template over {MAX_PROMPT_TEMPLATE_CHARS} characters")
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as exc:
                raise ValueError(f"prompt template {template!r}: {exc}") from None
            if "cls" not in fields or not fields <= {"cls", "label"}:
                raise ValueError(
                    f"prompt template {template!r} must contain {{cls}} and no field but "
                    f"{{cls}} and {{label}}"
                )
        return templates

    @field_validator("labels", mode="before")
    @classmethod
    def _label_names(cls, labels: Any) -> Any:
        if isinstance(labels, dict):
            for name in labels:
                check_label_name(name)
        return labels

    @field_validator("bounds", "media")
    @classmethod
    def _known_sections(cls, value: dict[str, dict[str, Any]], info: Any) -> dict:
        model = MediaBounds if info.field_name == "bounds" else MediaConfig
        try:
            model.from_dict(value)
        except ValidationError as exc:
            raise ValueError(validation_problems(exc)) from None
        return value

    def media_bounds(self, overrides: dict[str, dict[str, Any]] | None = None) -> Any:
        """The bounds records of this dataset are checked against (defaults < dataset.yaml
        < `overrides`, e.g. an ingestion config)."""
        return _sections("bounds", _key(_merge(self.bounds, overrides or {})))

    def media_config(
        self,
        overrides: dict[str, dict[str, Any]] | None = None,
        derived: dict[str, dict[str, Any]] | None = None,
    ) -> Any:
        """How this dataset's media are preprocessed: defaults < `derived` (what ingestion
        chose from the data's own statistics) < dataset.yaml < `overrides`."""
        layered = _merge(_merge(derived or {}, self.media), overrides or {})
        return _sections("media", _key(layered))

    @model_validator(mode="after")
    def _unique_modalities(self) -> DatasetSpec:
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be unique, got {[m.value for m in self.modalities]}")
        return self

    def encode_label(self, name: str, value: Any) -> int:
        """Class index of `value` for label `name`; raises ValueError when it does not fit."""
        spec = self.labels[name]
        if isinstance(spec, BinaryLabel):
            if not isinstance(value, bool):
                raise ValueError(f"label {name!r} is binary and needs true/false, got {value!r}")
            return int(value)
        if not isinstance(value, str):
            raise ValueError(f"label {name!r} needs one of {spec.classes}, got {value!r}")
        if value not in spec.classes:
            raise ValueError(f"label {name!r} has no class {value!r}; classes: {spec.classes}")
        return spec.classes.index(value)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def _merge(base: dict[str, dict[str, Any]], top: dict[str, dict[str, Any]]) -> dict:
    return {m: {**base.get(m, {}), **top.get(m, {})} for m in {*base, *top}}


def _key(sections: dict[str, dict[str, Any]]) -> str:
    return json.dumps(sections, sort_keys=True)


@lru_cache(maxsize=64)
def _sections(kind: str, key: str) -> Any:
    """Validated MediaBounds / MediaConfig, once per distinct value: ingestion asks for
    them for every record (they are frozen, so sharing one object is safe)."""
    model = MediaBounds if kind == "bounds" else MediaConfig
    return model.from_dict(json.loads(key))


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line: `field.path: message; ...`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
    )


M = TypeVar("M", bound=BaseModel)


def parse_yaml_model(model: type[M], text: str, where: str, what: str) -> M:
    """Parse YAML text into `model` (an empty file is all defaults); ContractError naming
    `where`, what the file is, and the offending field. The one YAML loader of the
    platform (dataset.yaml, training and ingestion configurations)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ContractError(f"{where}: not valid YAML: {exc}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ContractError(f"{where}: expected a mapping ({what}), got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ContractError(f"{where}: invalid {what}: {validation_problems(exc)}") from None


def read_yaml_model(model: type[M], path: str | Path, what: str) -> M:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ContractError(f"{path}: cannot read {what}: {exc}") from None
    return parse_yaml_model(model, text, str(path), what)


def parse_dataset_spec(text: str, where: str = DATASET_FILE) -> DatasetSpec:
    """Parse `dataset.yaml` text; errors name `where` and the offending field."""
    return parse_yaml_model(DatasetSpec, text, where, "dataset spec")


def load_dataset_spec(folder: Path) -> DatasetSpec:
    """Load and validate `<folder>/dataset.yaml`."""
    path = Path(folder) / DATASET_FILE
    if not path.is_file():
        raise ContractError(f"{path}: missing; a dataset folder needs a {DATASET_FILE} at its root")
    return parse_dataset_spec(path.read_text(encoding="utf-8"), where=str(path))


_GENERIC_REASONS = {
    "MANIFEST_NOT_JSON": "manifest_not_json",
    "MISSING_ID": "missing_id",
    "DUPLICATE_ID": "duplicate_id",
    "NO_MODALITY": "no_modality",
    "LABEL_MISSING": "label_missing",
    "LABEL_UNKNOWN_CLASS": "label_unknown_class",
    "LABEL_WRONG_TYPE": "label_wrong_type",
    "MANIFEST_LINE_TOO_LONG": "manifest_line_too_long",
    "MEDIA_BUCKET_NOT_ALLOWED": "media_bucket_not_allowed",
}
# Why a record was quarantined: the generic reasons above and every modality's own
# (registry modules' `reasons`). Shared by ingestion and the data generator.
RejectReason = StrEnum(
    "RejectReason",
    {
        **_GENERIC_REASONS,
        **{r.upper(): r for spec in modalities.specs() for r in spec.reasons},
    },
)
