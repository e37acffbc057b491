"""Per-record checks that need no storage: manifest lines and labels."""

from __future__ import annotations

import pytest

from dualmedia.contract import RejectReason, parse_dataset_spec
from ingestion.checks import ParsedRecord, Rejection, parse_line, split_for
from ingestion.config import IngestConfig

SPEC = parse_dataset_spec(
    """
name: t
modalities: [text, image, audio]
labels:
  sentiment: {type: categorical, classes: [negative, neutral, positive]}
  damaged: {type: binary}
"""
)


def check(line: bytes, seen: set[str] | None = None, **config: object) -> ParsedRecord | Rejection:
    return parse_line(line, 3, SPEC, IngestConfig(**config), seen if seen is not None else set())


@pytest.mark.parametrize(
    ("line", "reason", "fragment"),
    [
        (b"{not json", RejectReason.MANIFEST_NOT_JSON, "line 3: not JSON"),
        (b"[1, 2]", RejectReason.MANIFEST_NOT_JSON, "must be a JSON object"),
        # Python's parser would recurse 100,000 times (a RecursionError, not a reason).
        (b"[" * 100_000, RejectReason.MANIFEST_NOT_JSON, "line 3: nests deeper than 16"),
        (b'{"id": "a", "labels": ' + b"{" * 20, RejectReason.MANIFEST_NOT_JSON, "nests deeper"),
        (b'{"text": "hi", "labels": {}}', RejectReason.MISSING_ID, "field 'id'"),
        (b'{"id": "", "text": "hi"}', RejectReason.MISSING_ID, "field 'id'"),
        (b'{"id": "a", "labels": {}}', RejectReason.NO_MODALITY, "record 'a'"),
        (b'{"id": "a", "text": "  ", "labels": {}}', RejectReason.TEXT_EMPTY, "field 'text'"),
        (b'{"id": "a", "text": 5, "labels": {}}', RejectReason.TEXT_EMPTY, "field 'text'"),
        (b'{"id": "a", "text": "caf\xe9", "labels": {}}', RejectReason.TEXT_NOT_UTF8, "UTF-8"),
        (b'{"id": "a", "text": "ok"}', RejectReason.LABEL_MISSING, "field 'labels'"),
        (
            b'{"id": "a", "text": "ok", "labels": {"sentiment": "furious"}}',
            RejectReason.LABEL_UNKNOWN_CLASS,
            "labels.sentiment",
        ),
        (
            b'{"id": "a", "text": "ok", "labels": {"colour": "red"}}',
            RejectReason.LABEL_UNKNOWN_CLASS,
            "not declared",
        ),
        (
            b'{"id": "a", "text": "ok", "labels": {"damaged": "yes"}}',
            RejectReason.LABEL_WRONG_TYPE,
            "labels.damaged",
        ),
        (
            b'{"id": "a", "text": "ok", "labels": {"sentiment": 3}}',
            RejectReason.LABEL_WRONG_TYPE,
            "labels.sentiment",
        ),
    ],
)
def test_bad_lines_are_rejected_with_reason_and_place(
    line: bytes, reason: RejectReason, fragment: str
) -> None:
    outcome = check(line)
    assert isinstance(outcome, Rejection)
    assert outcome.reason == reason
    assert fragment in outcome.message
    assert outcome.line_no == 3


def test_text_length_bound_comes_from_config() -> None:
    line = b'{"id": "a", "text": "' + b"x" * 50 + b'", "labels": {}}'
    assert isinstance(check(line), ParsedRecord)
    outcome = check(line, bounds={"text": {"max_chars": 10}})
    assert isinstance(outcome, Rejection) and outcome.reason == RejectReason.TEXT_TOO_LONG


def test_duplicates_and_partial_labels() -> None:
    seen: set[str] = set()
    first = check(b'{"id": "a", "text": "ok", "labels": {"sentiment": null}}', seen)
    assert isinstance(first, ParsedRecord) and first.present == ["text"]
    again = check(b'{"id": "a", "text": "ok", "labels": {}}', seen)
    assert isinstance(again, Rejection) and again.reason == RejectReason.DUPLICATE_ID


def test_required_labels() -> None:
    outcome = check(b'{"id": "a", "text": "ok", "labels": {}}', required_labels=["sentiment"])
    assert isinstance(outcome, Rejection) and outcome.reason == RejectReason.LABEL_MISSING


def test_split_is_deterministic_and_roughly_proportional() -> None:
    splits = [split_for(f"id-{i}", (0.8, 0.1, 0.1)) for i in range(5000)]
    assert splits == [split_for(f"id-{i}", (0.8, 0.1, 0.1)) for i in range(5000)]
    share = splits.count("train") / len(splits)
    assert 0.77 < share < 0.83


def test_a_group_aware_split_keeps_each_speaker_in_one_split() -> None:
    grouped = parse_dataset_spec(
        "name: t\nmodalities: [text]\nsplit_by: speaker\n"
        "labels: {word: {type: categorical, classes: [a, b]}}\n"
    )
    records = [{"id": f"r{i}", "speaker": f"s{i % 7}"} for i in range(140)]
    by_speaker: dict[str, set[str]] = {}
    for record in records:
        split = split_for(grouped.split_key(record), (0.6, 0.2, 0.2))
        by_speaker.setdefault(record["speaker"], set()).add(split)
    assert all(len(splits) == 1 for splits in by_speaker.values())
    # By id, the same speakers' records spread over the splits.
    by_id = {split_for(grouped.split_key({"id": r["id"]}), (0.6, 0.2, 0.2)) for r in records}
    assert by_id == {"train", "val", "test"}
    assert grouped.split_key({"id": "x", "speaker": ""}) == "x"  # no group: its own
    assert SPEC.split_key({"id": "x", "speaker": "s1"}) == "x"  # not declared: by id
    with pytest.raises(ValueError, match="split_by names a field with another meaning"):
        parse_dataset_spec("name: t\nmodalities: [text]\nsplit_by: labels\n")
