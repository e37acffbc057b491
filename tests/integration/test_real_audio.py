"""Real recordings through the real ingestion: Asterisk's telephone prompts (8 kHz speech,
two speakers; `make real-audio` fetches them from Debian's packages). Every recording is
accepted, the preprocessing follows the recordings (their 8 kHz rate, a clip length from
their durations) unless dataset.yaml says otherwise, and `split_by` keeps a group of
records in one split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dualmedia.datasets import upload_dataset
from dualmedia.modalities.audio import SILENCE, AudioPreprocess, DecodedAudio, log_mel
from dualmedia.settings import Settings
from dualmedia.snapshot import SPLITS, Snapshot
from dualmedia.storage import ObjectStore
from ingestion.pipeline import ingest

pytestmark = pytest.mark.integration
SOUNDS = Path(__file__).resolve().parents[2] / ".cache/real-audio/usr/share/asterisk/sounds"
SPEAKERS = {"en": "en_US_f_Allison", "fr": "fr_CA_f_June"}


def recordings() -> list[tuple[str, Path]]:
    """(speaker, file) for every spoken number and word of the two `digits/` folders."""
    if not SOUNDS.is_dir():
        pytest.fail(f"{SOUNDS} is missing: run `make real-audio` (make test does)")
    return [
        (speaker, path)
        for speaker, folder in SPEAKERS.items()
        for path in sorted((SOUNDS / folder / "digits").glob("*.wav"))
    ]


def write_dataset(folder: Path, media: str = "") -> int:
    """[audio] with the speaker as the label; `split_by: word` keeps "7" of both speakers
    together."""
    files = recordings()
    batch = folder / "batch-0001"
    (batch / "audio").mkdir(parents=True)
    lines = []
    for speaker, path in files:
        name = f"{speaker}-{path.stem}.wav"
        shutil.copy(path, batch / "audio" / name)
        record = {"id": name, "audio": f"audio/{name}", "word": path.stem,
                  "labels": {"speaker": speaker}}  # fmt: skip
        lines.append(json.dumps(record))
    (batch / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "dataset.yaml").write_text(
        "name: real-telephone\nmodalities: [audio]\nsplit_by: word\n"
        "labels: {speaker: {type: categorical, classes: [en, fr]}}\n" + media
    )
    return len(files)


def test_real_recordings_are_accepted_and_preprocessed_at_their_own_rate(
    s3_settings: Settings, tmp_path: Path
) -> None:
    store = ObjectStore(s3_settings)
    total = write_dataset(tmp_path / "calls")
    uri = f"s3://{s3_settings.raw_bucket}/real-telephone"
    upload_dataset(tmp_path / "calls", uri, store)
    summary = ingest(uri, s3_settings)
    assert summary["accepted"] == total > 150 and summary["quarantined"] == 0, summary
    snapshot = Snapshot(store, summary["snapshot_uri"])
    durations = [sf.info(str(path)).duration for _, path in recordings()]
    assert {sf.info(str(path)).samplerate for _, path in recordings()} == {8000}
    media = snapshot.media.audio
    # The recordings' own rate (no empty bands above 4 kHz), a clip that fits them.
    assert snapshot.info.derived_media["audio"]["sample_rate"] == media.sample_rate == 8000
    assert summary["derived_media"] == snapshot.info.derived_media  # what ingest prints
    assert (media.hop_length, media.n_fft) == (160, 256)
    assert np.percentile(durations, 95) <= media.clip_s < AudioPreprocess().clip_s
    arrays = snapshot.arrays("train")
    items = [x for x in arrays.inputs["audio"] if x is not None]
    filled = np.mean([x["valid_frames"] / media.frames for x in items])
    assert filled > 0.4  # at the 4 s default, these words filled a quarter of the clip
    # The upper mel bands hold speech; at the fixed 16 kHz default they held nothing.
    top = np.mean([x["logmel"][-8:, : x["valid_frames"]].mean() for x in items])
    samples, rate = sf.read(str(recordings()[0][1]), dtype="float32")
    fixed, valid = log_mel(DecodedAudio(samples, rate), AudioPreprocess())
    assert top > SILENCE + 3.0 and top > fixed[-8:, :valid].mean() + 3.0
    # Group-aware split: a word said by both speakers lands in one split.
    split_of_word: dict[str, set[str]] = {}
    for split in SPLITS:
        for record_id in snapshot.arrays(split).ids:
            split_of_word.setdefault(record_id.split("-", 1)[1], set()).add(split)
    assert all(len(splits) == 1 for splits in split_of_word.values())
    # Idempotent: the same data gives the same snapshot (the derivation is not redone).
    again = ingest(uri, s3_settings)
    assert again["snapshot_id"] == summary["snapshot_id"]


def test_dataset_yaml_overrides_what_is_derived(s3_settings: Settings, tmp_path: Path) -> None:
    store = ObjectStore(s3_settings)
    write_dataset(tmp_path / "calls", media="media: {audio: {clip_s: 2.5}}\n")
    uri = f"s3://{s3_settings.raw_bucket}/real-telephone-fixed-clip"
    upload_dataset(tmp_path / "calls", uri, store)
    snapshot = Snapshot(store, ingest(uri, s3_settings)["snapshot_uri"])
    assert snapshot.media.audio.clip_s == 2.5  # the dataset's choice
    assert snapshot.media.audio.sample_rate == 8000  # still derived
