from pathlib import Path

import pytest

from dualmedia.contract import (
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
    ],
)
def test_invalid_specs_name_the_field(text: str, fragment: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_dataset_spec(text, where="s3://b/d/dataset.yaml")
    assert "s3://b/d/dataset.yaml" in str(info.value)
    assert fragment in str(info.value)


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
