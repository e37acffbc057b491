import json
import re
from pathlib import Path

import pytest

from dualmedia.contract import (
    LABEL_NAME_PATTERN,
    RESERVED_LABEL_NAMES,
    BinaryLabel,
    CategoricalLabel,
    ContractError,
    Modality,
    load_dataset_spec,
    parse_dataset_spec,
)

GOOD = """
name: customer-feedback
modalities: [text, image, audio]
labels:
  sentiment: {type: categorical, classes: [negative, neutral, positive]}
  damaged:   {type: binary}
"""


def test_parses_the_design_example() -> None:
    spec = parse_dataset_spec(GOOD)
    assert spec.modalities == [Modality.TEXT, Modality.IMAGE, Modality.AUDIO]
    assert isinstance(spec.labels["sentiment"], CategoricalLabel)
    assert isinstance(spec.labels["damaged"], BinaryLabel)
    assert spec.encode_label("sentiment", "positive") == 2
    assert spec.encode_label("damaged", True) == 1
    assert parse_dataset_spec(spec.to_yaml()) == spec


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: x\nmodalities: [text, smell]\n", "modalities.1"),
        ("name: x\nmodalities: []\n", "modalities"),
        ("modalities: [text]\n", "name"),
        ("name: x\nmodalities: [text]\nlabels: {a: {type: ordinal}}\n", "labels.a"),
        (
            "name: x\nmodalities: [text]\nlabels: {a: {type: categorical, classes: [p]}}\n",
            "classes",
        ),
        ("name: x\nmodalities: [text, text]\n", "unique"),
        ("name: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: x\nmodalities: [text]\nextra: 1\n", "extra"),
        ("name: x\nmodalities: [text]\nprompt_templates: ['a photo']\n", "must contain {cls}"),
        ("name: x\nmodalities: [text]\nprompt_templates: ['{cls} {id}']\n", "no field but"),
        ("name: x\nmodalities: [text]\nprompt_templates: ['{cls']\n", "prompt_templates"),
        ("name: x\nmodalities: [text]\nprompt_templates: []\n", "prompt_templates"),
    ],
)
def test_invalid_specs_name_the_field(text: str, fragment: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_dataset_spec(text, where="s3://b/d/dataset.yaml")
    assert "s3://b/d/dataset.yaml" in str(info.value)
    assert fragment in str(info.value)


def test_prompt_templates_default_to_generic_ones_and_round_trip() -> None:
    spec = parse_dataset_spec(GOOD)
    assert spec.prompt_templates[0] == "{cls}"
    assert not any("review" in t for t in spec.prompt_templates)  # nothing demo-specific
    assert "prompt_templates" not in spec.to_yaml()  # defaults are not written out
    own = parse_dataset_spec(GOOD + "prompt_templates: ['a scan of the digit {cls}']\n")
    assert own.prompt_templates == ["a scan of the digit {cls}"]
    assert parse_dataset_spec(own.to_yaml()) == own


def test_label_values_are_checked() -> None:
    spec = parse_dataset_spec(GOOD)
    with pytest.raises(ValueError, match="no class 'furious'"):
        spec.encode_label("sentiment", "furious")
    with pytest.raises(ValueError, match="binary"):
        spec.encode_label("damaged", "yes")
    with pytest.raises(ValueError, match="needs one of"):
        spec.encode_label("sentiment", 3)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match=r"dataset\.yaml: missing"):
        load_dataset_spec(tmp_path)


# ---- label and class names (issue 14: they become nn.ModuleDict keys, columns, metrics) ----
def _spec_with_label(name: str, label: str = "{type: binary}") -> str:
    return f"name: x\nmodalities: [text]\nlabels:\n  {json.dumps(name)}: {label}\n"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("a.b", "letters, digits and '_'"),  # a dot: nn.ModuleDict refuses it
        ("training", "nn.Module"),  # an attribute of every nn.Module
        ("forward", "nn.Module"),
        ("keys", "nn.Module"),  # an nn.ModuleDict method
        ("class", "keyword"),
        ("", "letters, digits and '_'"),
        ("_hidden", "letters, digits and '_'"),
        ("2nd", "letters, digits and '_'"),
        ("with space", "letters, digits and '_'"),
        ("x" * 65, "at most 64"),
    ],
)
def test_bad_label_names_are_refused_naming_the_field(name: str, fragment: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_dataset_spec(_spec_with_label(name), where="s3://b/d/dataset.yaml")
    message = str(info.value)
    assert "s3://b/d/dataset.yaml" in message and fragment in message
    assert f"labels.{name}" in message


def test_identifier_like_label_names_pass() -> None:
    for name in ("sentiment", "damaged", "Category2", "is_training", "star_rating"):
        assert name in parse_dataset_spec(_spec_with_label(name)).labels


@pytest.mark.parametrize(
    ("classes", "fragment"),
    [
        (["ok", " padded"], "surrounding spaces"),
        (["ok", ""], "non-empty"),
        (["ok", "tab\there"], "printable"),
        (["ok", "x" * 65], "at most 64"),
        ([f"c{i}" for i in range(1001)], "at most 1000"),
    ],
)
def test_bad_class_names_and_counts_are_refused(classes: list[str], fragment: str) -> None:
    label = "{type: categorical, classes: " + json.dumps(classes) + "}"
    with pytest.raises(ContractError) as info:
        parse_dataset_spec(_spec_with_label("level", label))
    assert "labels.level" in str(info.value) and fragment in str(info.value)


def test_real_class_names_pass() -> None:
    # Spoken digits, ratings, words with accents and spaces.
    classes = [str(d) for d in range(10)] + ["5-star", "très négatif", "not sure"]
    label = "{type: categorical, classes: " + json.dumps(classes, ensure_ascii=False) + "}"
    assert parse_dataset_spec(_spec_with_label("digit", label)).labels["digit"].classes == classes
    many = [f"c{i}" for i in range(1000)]
    label = "{type: categorical, classes: " + json.dumps(many) + "}"
    assert len(parse_dataset_spec(_spec_with_label("big", label)).labels["big"].classes) == 1000


def test_reserved_names_cover_every_nn_module_dict_attribute() -> None:
    """The contract lists them without importing torch; this keeps the list complete."""
    torch_nn = pytest.importorskip("torch.nn")
    # Building a transformers model adds methods to every nn.Module (smart_apply): the
    # list must hold for the modules training actually builds, so build one first.
    transformers = pytest.importorskip("transformers")
    tiny = transformers.ViTConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
        image_size=8, patch_size=4,
    )  # fmt: skip
    transformers.ViTModel(tiny)
    public = {n for n in dir(torch_nn.ModuleDict()) if not n.startswith("_")}
    assert public <= RESERVED_LABEL_NAMES, sorted(public - RESERVED_LABEL_NAMES)
    for name in sorted(public):
        if re.match(LABEL_NAME_PATTERN, name):
            with pytest.raises(ContractError):
                parse_dataset_spec(_spec_with_label(name))
