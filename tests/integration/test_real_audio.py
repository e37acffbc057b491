"""Real recordings through the real ingestion: Asterisk's telephone prompts (8 kHz speech,
four speakers; `make real-audio` fetches them from Debian's packages). Every recording is
accepted, the preprocessing follows the recordings (their 8 kHz rate, a clip length from
their durations) unless dataset.yaml says otherwise, and `split_by` keeps a group of
records in one split. The packaged Whisper encoder tells the same prompt read by two
speakers apart from the others, where log-mel statistics cannot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from dualmedia.datasets import upload_dataset
from dualmedia.modalities import MediaBounds, MediaConfig
from dualmedia.modalities.audio import (
    SILENCE,
    AudioPreprocess,
    DecodedAudio,
    log_mel,
    logmel_statistics,
)
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
    # The from-scratch trunk's features, whose rate, window and hop follow the data.
    total = write_dataset(tmp_path / "calls", media="media: {audio: {features: logmel}}\n")
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
    fixed, valid = log_mel(DecodedAudio(samples, rate), AudioPreprocess(features="logmel"))
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
    write_dataset(tmp_path / "calls", media="media: {audio: {features: logmel, clip_s: 2.5}}\n")
    uri = f"s3://{s3_settings.raw_bucket}/real-telephone-fixed-clip"
    upload_dataset(tmp_path / "calls", uri, store)
    snapshot = Snapshot(store, ingest(uri, s3_settings)["snapshot_uri"])
    assert snapshot.media.audio.clip_s == 2.5  # the dataset's choice
    assert snapshot.media.audio.sample_rate == 8000  # still derived


def test_by_default_whispers_front_end_and_a_clip_derived_from_the_recordings(
    s3_settings: Settings, tmp_path: Path
) -> None:
    store = ObjectStore(s3_settings)
    write_dataset(tmp_path / "calls")  # nothing said about media
    uri = f"s3://{s3_settings.raw_bucket}/real-telephone-whisper"
    upload_dataset(tmp_path / "calls", uri, store)
    snapshot = Snapshot(store, ingest(uri, s3_settings)["snapshot_uri"])
    media = snapshot.media.audio
    assert media.features == "whisper"
    assert (media.sample_rate, media.n_fft, media.hop_length, media.n_mels) == (16000, 400, 160, 80)
    assert snapshot.info.derived_media["audio"] == {"clip_s": media.clip_s} and media.clip_s < 4
    item = next(x for x in snapshot.arrays("train").inputs["audio"] if x is not None)
    assert item["logmel"].shape == (80, media.frames)


def test_the_whisper_encoder_hears_what_is_said_not_who_says_it() -> None:
    """Two Italian speakers (a man, a woman) read the same prompts: for each of the man's
    recordings, is the woman's recording of the same prompt the nearest? By what is said,
    Whisper's pooled encoder finds it; statistics of the log-mel (what a linear baseline
    sees) mostly find recordings that merely sound alike."""
    from dualmedia.modalities.audio import SPEC, WHISPER_TINY_EN, AudioEncoder
    from dualmedia.modalities.trunks.audio import WhisperTrunk

    her, him = SOUNDS / "it_IT_f_Menardi", SOUNDS / "it_IT_m_Carlo"
    prompts = sorted(
        str(p.relative_to(her))
        for p in (her / "digits").glob("*.wav")
        if (him / "digits" / p.name).exists()
    )
    assert len(prompts) >= 60, prompts
    whisper_media = MediaConfig.model_validate({"audio": {"features": "whisper", "clip_s": 2.0}})
    logmel_media = MediaConfig.model_validate(
        {"audio": {"features": "logmel", "sample_rate": 8000, "n_fft": 256}}
    )
    trunk = WhisperTrunk(
        AudioEncoder(pretrained=WHISPER_TINY_EN, trainable_layers=0), whisper_media
    )

    def embed(folder: Path) -> tuple[np.ndarray, np.ndarray]:
        decoded = [SPEC.decode((folder / p).read_bytes(), MediaBounds().audio) for p in prompts]
        batch = SPEC.collate([SPEC.preprocess(d, whisper_media) for d in decoded], whisper_media)
        with torch.no_grad():
            pooled = trunk(batch).numpy()
        stats = [logmel_statistics(SPEC.preprocess(d, logmel_media)) for d in decoded]
        return pooled, np.array(stats)

    def recall_at_1(a: np.ndarray, b: np.ndarray) -> float:
        a, b = (x - x.mean(0) for x in (a, b))  # each speaker centred on themselves
        a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
        return float(np.mean((b @ a.T).argmax(1) == np.arange(len(a))))

    (her_whisper, her_stats), (his_whisper, his_stats) = embed(her), embed(him)
    by_whisper, by_stats = recall_at_1(her_whisper, his_whisper), recall_at_1(her_stats, his_stats)
    assert by_whisper >= 0.5 and by_whisper >= 3 * by_stats, (by_whisper, by_stats, len(prompts))
