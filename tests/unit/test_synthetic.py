"""The synthetic dataset generator: contract format, determinism, knobs, corruption, signal."""

from __future__ import annotations

import json
import wave
from collections import Counter
from collections.abc import Callable
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from scipy.signal import resample_poly
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dualmedia import modalities
from dualmedia.contract import (
    MANIFEST_FILE,
    BinaryLabel,
    DatasetSpec,
    Modality,
    RejectReason,
    load_dataset_spec,
)
from dualmedia.modalities import MediaBounds, MediaConfig
from dualmedia.modalities.audio import log_mel
from synthetic import (
    EXPECTED_REJECTS_FILE,
    GenerateSummary,
    GeneratorKnobs,
    generate_dataset,
)
from synthetic import corruption as bounds
from synthetic.story import (
    AUDIO_SECONDS_RANGE,
    COLOUR_MENTION_RATE,
    COLOURS,
    DEFAULT_MODALITIES,
    draw_story,
)
from synthetic.texts import NEW_VOCABULARY, words

BATCH = "batch-0001"
COMPLETE = GeneratorKnobs(missing_modality_rate=0.0)
# Only one modality survives per item, so these batches render little and generate fast.
ONE_MODALITY = GeneratorKnobs(missing_modality_rate=1.0)
# What a dataset generated without video declares (the platform knows video too).
THREE = [Modality(m) for m in DEFAULT_MODALITIES]


def read_manifest(batch_dir: Path) -> list[dict[str, Any]]:
    lines = (batch_dir / MANIFEST_FILE).read_bytes().splitlines()
    return [json.loads(line) for line in lines]


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- A reference validator: what ingestion must do with the documented bounds. ---


def _image_reason(path: Path) -> RejectReason | None:
    if not path.is_file():
        return RejectReason.IMAGE_MISSING
    if path.stat().st_size == 0:
        return RejectReason.IMAGE_EMPTY
    try:
        image = Image.open(path)
    except Exception:
        return RejectReason.IMAGE_UNDECODABLE
    if image.format not in bounds.ALLOWED_IMAGE_FORMATS:
        return RejectReason.IMAGE_FORMAT_NOT_SUPPORTED
    try:
        image.load()
    except OSError:
        return RejectReason.IMAGE_TRUNCATED
    if min(image.size) < bounds.MIN_IMAGE_SIDE or max(image.size) > bounds.MAX_IMAGE_SIDE:
        return RejectReason.IMAGE_SIZE_OUT_OF_BOUNDS
    return None


def _audio_reason(path: Path) -> RejectReason | None:
    if not path.is_file():
        return RejectReason.AUDIO_MISSING
    try:
        samples, sample_rate = sf.read(path, dtype="float64")
    except Exception:
        return RejectReason.AUDIO_UNDECODABLE
    if sf.info(str(path)).format not in ("WAV", "FLAC", "OGG"):
        return RejectReason.AUDIO_FORMAT_NOT_SUPPORTED
    with wave.open(str(path), "rb") as reader:  # the data chunk must hold what it declares
        declared = reader.getnframes()
        if len(reader.readframes(declared)) < declared * reader.getsampwidth():
            return RejectReason.AUDIO_TRUNCATED
    seconds = len(samples) / sample_rate
    if seconds < bounds.MIN_AUDIO_SECONDS:
        return RejectReason.AUDIO_TOO_SHORT
    if seconds > bounds.MAX_AUDIO_SECONDS:
        return RejectReason.AUDIO_TOO_LONG
    if np.max(np.abs(samples)) < bounds.SILENT_PEAK:
        return RejectReason.AUDIO_SILENT
    if np.mean(np.abs(samples) >= bounds.CLIP_LEVEL) > bounds.MAX_CLIPPED_FRACTION:
        return RejectReason.AUDIO_CLIPPED
    return None


def _video_reason(path: Path) -> RejectReason | None:
    """Independent of the platform's decoder: the box sizes, then what PyAV opens and decodes."""
    import av

    if not path.is_file():
        return RejectReason.VIDEO_MISSING
    data = path.read_bytes()
    if data[4:8] != b"ftyp":
        return RejectReason.VIDEO_UNDECODABLE
    pos = 0
    while pos + 8 <= len(data):  # top-level boxes must end within the file
        pos += int.from_bytes(data[pos : pos + 4], "big")
    if pos > len(data):
        return RejectReason.VIDEO_TRUNCATED
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return RejectReason.VIDEO_NO_FRAMES
            stream = container.streams.video[0]
            sides = (stream.codec_context.width, stream.codec_context.height)
            if min(sides) < bounds.MIN_VIDEO_SIDE or max(sides) > bounds.MAX_VIDEO_SIDE:
                return RejectReason.VIDEO_SIZE_OUT_OF_BOUNDS
            if float(stream.duration * stream.time_base) > bounds.MAX_VIDEO_SECONDS:
                return RejectReason.VIDEO_TOO_LONG
            if sum(1 for _ in container.decode(stream)) != stream.frames:
                return RejectReason.VIDEO_TRUNCATED
    except av.FFmpegError:
        return RejectReason.VIDEO_UNDECODABLE
    return None


def _labels_reason(labels: Any, spec: DatasetSpec) -> RejectReason | None:
    if not isinstance(labels, dict):
        return RejectReason.LABEL_MISSING
    for name, value in labels.items():
        label = spec.labels[name]
        if isinstance(label, BinaryLabel) and not isinstance(value, bool):
            return RejectReason.LABEL_WRONG_TYPE
        if not isinstance(label, BinaryLabel):
            if not isinstance(value, str):
                return RejectReason.LABEL_WRONG_TYPE
            if value not in label.classes:
                return RejectReason.LABEL_UNKNOWN_CLASS
        spec.encode_label(name, value)
    return None


def reference_rejects(batch_dir: Path, spec: DatasetSpec) -> dict[str, str]:
    """Check every manifest line as ingestion should; key -> reason for the rejected ones."""
    rejects: dict[str, str] = {}
    seen: set[str] = set()
    for number, raw in enumerate((batch_dir / MANIFEST_FILE).read_bytes().splitlines(), 1):
        if len(raw) > bounds.MAX_LINE_BYTES:
            rejects[f"line:{number}"] = RejectReason.MANIFEST_LINE_TOO_LONG
            continue
        try:
            raw.decode("utf-8")
            not_utf8 = False
        except UnicodeDecodeError:
            not_utf8 = True
        try:
            record = json.loads(raw.decode("utf-8", errors="surrogateescape"))
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            rejects[f"line:{number}"] = RejectReason.MANIFEST_NOT_JSON
            continue
        if not isinstance(record.get("id"), str) or not record["id"]:
            rejects[f"line:{number}"] = RejectReason.MISSING_ID
            continue
        if record["id"] in seen:
            rejects[f"line:{number}"] = RejectReason.DUPLICATE_ID
            continue
        seen.add(record["id"])
        reason = _record_reason(record, not_utf8, batch_dir, spec)
        if reason is not None:
            rejects[record["id"]] = reason
    return {key: RejectReason(value).value for key, value in rejects.items()}


def _record_reason(
    record: dict[str, Any], not_utf8: bool, batch_dir: Path, spec: DatasetSpec
) -> RejectReason | None:
    if all(record.get(m.value) is None for m in Modality):
        return RejectReason.NO_MODALITY
    text = record.get("text")
    if text is not None:
        if not_utf8:
            return RejectReason.TEXT_NOT_UTF8
        if not text.strip():
            return RejectReason.TEXT_EMPTY
        if len(text) > bounds.MAX_TEXT_CHARS:
            return RejectReason.TEXT_TOO_LONG
    for name in ("image", "audio", "video"):
        if str(record.get(name) or "").startswith("s3://"):  # not the dataset's own bucket
            return RejectReason.MEDIA_BUCKET_NOT_ALLOWED
    if record.get("image") is not None and (reason := _image_reason(batch_dir / record["image"])):
        return reason
    if record.get("audio") is not None and (reason := _audio_reason(batch_dir / record["audio"])):
        return reason
    if record.get("video") is not None and (reason := _video_reason(batch_dir / record["video"])):
        return reason
    return _labels_reason(record.get("labels"), spec)


# --- Hand-made features for the signal checks. ---


def audio_features(path: Path) -> list[float]:
    """Loudness and its spread, zero crossings, brightness, pitch level/spread/movement, tempo."""
    samples, sample_rate = sf.read(path, dtype="float64")
    if sample_rate != 16000:
        common = gcd(16000, sample_rate)
        samples = resample_poly(samples, 16000 // common, sample_rate // common)
    sample_rate, frame, hop = 16000, 400, 160
    count = 1 + (len(samples) - frame) // hop
    frames = samples[np.arange(frame)[None] + hop * np.arange(count)[:, None]]
    level_db = 20 * np.log10(np.sqrt(np.mean((frames * np.hanning(frame)) ** 2, axis=1)) + 1e-9)
    voiced = level_db > level_db.max() - 25
    spectrum = np.abs(np.fft.rfft(frames[voiced] * np.hanning(frame), n=1024, axis=1)) ** 2
    centroid = np.mean(spectrum @ np.fft.rfftfreq(1024, 1 / sample_rate) / spectrum.sum(1))
    autocorr = np.fft.irfft(spectrum, axis=1)
    low, high = sample_rate // 450, sample_rate // 70
    log_f0 = np.log(sample_rate / (low + np.argmax(autocorr[:, low:high], axis=1)))
    steps = np.diff(log_f0)
    steps = steps[np.abs(steps) < 0.2]
    return [
        level_db[voiced].mean(),
        level_db[voiced].std(),
        np.mean(np.abs(np.diff(np.sign(frames[voiced]), axis=1)) > 0),
        centroid,
        np.median(log_f0),
        log_f0.std(),
        steps.mean(),
        steps.std(),
        np.sum(np.diff(voiced.astype(int)) == 1) / (len(samples) / sample_rate),
        voiced.mean(),
    ]


def image_features(path: Path) -> list[float]:
    """Dark-pixel and edge statistics."""
    gray = np.asarray(Image.open(path).convert("L"), dtype=float)
    gradient = np.hypot(*np.gradient(gray))
    dark = gray < 0.45 * np.median(gray)
    return [
        np.mean(gray < 50),
        np.mean(gray < 70),
        dark.mean(),
        np.mean(gradient > 40),
        np.mean((gradient > 40) & dark),
        np.percentile(gray, 1),
        np.percentile(gray, 5),
    ]


def logistic(c: float = 1.0) -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=c))


# --- Fixtures ---


@pytest.fixture(scope="module")
def signal_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("signal")
    return out / BATCH, generate_dataset(out, 600, seed=7, knobs=COMPLETE)


@pytest.fixture(scope="module")
def signal_audio(signal_batch: tuple[Path, GenerateSummary]) -> np.ndarray:
    batch_dir, _ = signal_batch
    return np.array([audio_features(batch_dir / r["audio"]) for r in read_manifest(batch_dir)])


@pytest.fixture(scope="module")
def corrupt_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("corrupt")
    knobs = GeneratorKnobs(corrupt_rate=0.3, missing_modality_rate=0.2)
    return out / BATCH, generate_dataset(out, 120, seed=3, knobs=knobs)


# --- Format and contract ---


def test_dataset_follows_the_contract(signal_batch: tuple[Path, GenerateSummary]) -> None:
    batch_dir, summary = signal_batch
    spec = load_dataset_spec(batch_dir.parent)
    assert spec.name == "customer-feedback"
    assert spec.modalities == THREE
    assert set(spec.labels) == {"sentiment", "category", "damaged", "mismatch"}
    records = read_manifest(batch_dir)
    assert len(records) == summary.n_records == 600
    assert summary.n_corrupt == 0 and summary.expected_rejects == {}
    assert not (batch_dir / EXPECTED_REJECTS_FILE).exists()
    suffixes: Counter[str] = Counter()
    rates: Counter[int] = Counter()
    for record in records:
        assert set(record) == {"id", "text", "image", "audio", "labels", "created_at"}
        assert set(record["labels"]) == set(spec.labels)
        for name, value in record["labels"].items():
            spec.encode_label(name, value)
        assert isinstance(record["text"], str) and 0 < len(record["text"]) <= 500
        with Image.open(batch_dir / record["image"]) as image:
            image.load()
            assert image.size == (96, 96)
        suffixes[Path(record["image"]).suffix] += 1
        info = sf.info(batch_dir / record["audio"])
        assert info.channels == 1
        assert AUDIO_SECONDS_RANGE[0] - 0.01 <= info.duration <= AUDIO_SECONDS_RANGE[1] + 0.01
        rates[info.samplerate] += 1
    assert set(suffixes) == {".jpg", ".png", ".webp"}
    assert set(rates) == {8000, 16000, 22050} and rates[16000] > 300
    assert summary.counts["modalities"] == {"text": 600, "image": 600, "audio": 600}
    assert sum(summary.counts["labels"]["sentiment"].values()) == 600
    assert records[1]["created_at"] == "2026-11-01T00:01:00Z"


def test_normal_records_pass_the_reference_checks(
    signal_batch: tuple[Path, GenerateSummary],
) -> None:
    batch_dir, _ = signal_batch
    assert reference_rejects(batch_dir, load_dataset_spec(batch_dir.parent)) == {}


def test_label_balance_follows_the_story(signal_batch: tuple[Path, GenerateSummary]) -> None:
    counts = signal_batch[1].counts["labels"]
    assert 0.17 <= counts["damaged"]["true"] / 600 <= 0.33
    assert 0.09 <= counts["mismatch"]["true"] / 600 <= 0.21
    assert min(counts["sentiment"].values()) > 150
    assert min(counts["category"].values()) > 80


# --- Determinism and growth ---


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(tmp_path: Path) -> None:
    knobs = GeneratorKnobs(corrupt_rate=0.2, text_shift=0.3, audio_noise=0.2)
    generate_dataset(tmp_path / "a", 30, seed=11, knobs=knobs)
    generate_dataset(tmp_path / "b", 30, seed=11, knobs=knobs)
    first = all_files(tmp_path / "a")
    assert first == all_files(tmp_path / "b")
    generate_dataset(tmp_path / "a", 30, seed=11, knobs=knobs)  # overwrite in place
    assert all_files(tmp_path / "a") == first

    generate_dataset(tmp_path / "c", 30, seed=12, knobs=knobs)
    other = all_files(tmp_path / "c")
    manifest = f"{BATCH}/{MANIFEST_FILE}"
    assert other[manifest] != first[manifest]
    shared_media = [k for k in first if k in other and k.endswith((".wav", ".jpg", ".png"))]
    assert shared_media and all(first[k] != other[k] for k in shared_media)


def test_smaller_batch_is_a_prefix_and_batches_grow_one_dataset(tmp_path: Path) -> None:
    knobs = GeneratorKnobs(corrupt_rate=0.15)
    whole = generate_dataset(tmp_path / "whole", 40, seed=5, knobs=knobs)
    part = generate_dataset(tmp_path / "part", 20, seed=5, knobs=knobs)
    whole_lines = (tmp_path / "whole" / BATCH / MANIFEST_FILE).read_bytes().splitlines()
    part_lines = (tmp_path / "part" / BATCH / MANIFEST_FILE).read_bytes().splitlines()
    assert part_lines == whole_lines[:20]
    whole_files = all_files(tmp_path / "whole" / BATCH)
    for name, data in all_files(tmp_path / "part" / BATCH).items():
        if name not in (EXPECTED_REJECTS_FILE, MANIFEST_FILE):
            assert whole_files[name] == data, name
    assert part.expected_rejects.items() <= whole.expected_rejects.items()

    # A second batch continuing the numbering: same items as the single big batch.
    grown = tmp_path / "grown"
    generate_dataset(grown, 20, seed=5, batch="batch-0001")
    generate_dataset(grown, 20, seed=5, batch="batch-0002", start_index=20)
    single = generate_dataset(tmp_path / "single", 40, seed=5)
    first, second = read_manifest(grown / "batch-0001"), read_manifest(grown / "batch-0002")
    ids = [r["id"] for r in first + second]
    assert ids == [f"fb-{i:06d}" for i in range(40)]
    assert first + second == read_manifest(tmp_path / "single" / BATCH)
    single_files = all_files(tmp_path / "single" / BATCH)
    for name, data in all_files(grown / "batch-0002").items():
        if name != MANIFEST_FILE:
            assert single_files[name] == data, name
    assert single.n_records == 40


def test_progress_is_reported_per_item(tmp_path: Path) -> None:
    seen: list[int] = []
    generate_dataset(tmp_path, 7, knobs=ONE_MODALITY, progress=seen.append)
    assert seen == [1] * 7  # increments, as a rich progress bar's advance() takes


def test_a_crash_leaves_no_half_batch(tmp_path: Path) -> None:
    generate_dataset(tmp_path, 5, knobs=ONE_MODALITY)
    before = all_files(tmp_path / BATCH)

    done: list[int] = []

    def crash(finished: int) -> None:
        done.append(finished)
        if sum(done) == 3:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        generate_dataset(tmp_path, 8, seed=1, knobs=ONE_MODALITY, progress=crash)
    assert all_files(tmp_path / BATCH) == before  # the old batch is untouched
    generate_dataset(tmp_path, 8, seed=1, knobs=ONE_MODALITY)
    assert len(read_manifest(tmp_path / BATCH)) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [BATCH, "dataset.yaml"]


@pytest.mark.parametrize(
    "call",
    [
        lambda out: generate_dataset(out, -1),
        lambda out: generate_dataset(out, 3, batch="../escape"),
        lambda out: generate_dataset(out, 3, seed=-2),
        lambda out: GeneratorKnobs(corrupt_rate=1.5),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, call: Callable[[Path], object]) -> None:
    with pytest.raises(ValueError):
        call(tmp_path)


# --- Missing modalities and label noise ---


def test_missing_modality_rate_is_honoured(tmp_path: Path) -> None:
    rate = 0.3
    stories = [draw_story(0, i, missing_modality_rate=rate) for i in range(3000)]
    for modality in THREE:
        missing = np.mean([modality not in s.present for s in stories])
        # Slightly under `rate`: an item that lost all three gets one back.
        assert rate - 0.04 <= missing <= rate + 0.02, modality
    assert all(s.present for s in stories)

    generate_dataset(tmp_path, 60, seed=2, knobs=GeneratorKnobs(missing_modality_rate=rate))
    records = read_manifest(tmp_path / BATCH)
    assert all(any(r[m.value] is not None for m in THREE) for r in records)
    missing_share = np.mean([r[m.value] is None for r in records for m in THREE])
    assert 0.15 <= missing_share <= 0.45
    named = {r[m] for r in records for m in ("image", "audio") if r[m] is not None}
    written = {str(p.relative_to(tmp_path / BATCH)) for p in (tmp_path / BATCH).rglob("*.*")}
    assert named == written - {MANIFEST_FILE}  # no orphan media, nothing named is absent


def test_dropping_modalities_and_noise_keep_the_story(tmp_path: Path) -> None:
    clean = generate_dataset(tmp_path / "clean", 200, seed=4, knobs=ONE_MODALITY)
    noisy = generate_dataset(
        tmp_path / "noisy",
        200,
        seed=4,
        knobs=GeneratorKnobs(missing_modality_rate=1.0, label_noise=0.3),
    )
    full = [draw_story(4, i).true_labels for i in range(200)]
    clean_labels = [r["labels"] for r in read_manifest(tmp_path / "clean" / BATCH)]
    noisy_labels = [r["labels"] for r in read_manifest(tmp_path / "noisy" / BATCH)]
    assert clean_labels == full  # which modalities survive never changes the labels
    flipped = [a != b for a, b in zip(clean_labels, noisy_labels, strict=True)]
    assert 0.2 <= np.mean(flipped) <= 0.4
    for a, b in zip(clean_labels, noisy_labels, strict=True):
        if a != b:  # a noisy item gets every label moved to another class
            assert all(a[name] != b[name] for name in a)
    assert clean.counts != noisy.counts


# --- Corrupt records ---


def test_every_reject_reason_is_produced(corrupt_batch: tuple[Path, GenerateSummary]) -> None:
    batch_dir, summary = corrupt_batch
    assert summary.n_corrupt == len(summary.expected_rejects) >= len(bounds.REJECT_CYCLE)
    # Every kind but the video ones: without video declared, no record names a clip.
    assert set(summary.expected_rejects.values()) == {r.value for r in bounds.REJECT_CYCLE}
    assert tuple(r for r in RejectReason if not r.startswith("video_")) == bounds.REJECT_CYCLE
    oracle = json.loads((batch_dir / EXPECTED_REJECTS_FILE).read_text(encoding="utf-8"))
    assert oracle == summary.expected_rejects
    assert json.loads(json.dumps(summary.to_dict()))["expected_rejects"] == oracle


def test_expected_rejects_match_the_manifest(corrupt_batch: tuple[Path, GenerateSummary]) -> None:
    batch_dir, summary = corrupt_batch
    lines = (batch_dir / MANIFEST_FILE).read_bytes().splitlines()
    assert summary.n_records == len(lines) == 120
    for key in summary.expected_rejects:
        if key.startswith("line:"):
            assert 1 <= int(key.removeprefix("line:")) <= len(lines)
        else:
            assert sum(f'"id": "{key}"'.encode() in line for line in lines) == 1, key
    # A checker using the documented bounds rejects exactly these records, for these reasons.
    spec = load_dataset_spec(batch_dir.parent)
    assert reference_rejects(batch_dir, spec) == summary.expected_rejects
    accepted = summary.n_records - summary.n_corrupt
    assert sum(summary.counts["labels"]["damaged"].values()) == accepted


# --- Drift knobs ---


def _mean_pixels(batch_dir: Path) -> np.ndarray:
    records = read_manifest(batch_dir)
    stack = [np.asarray(Image.open(batch_dir / r["image"]).convert("RGB"), float) for r in records]
    return np.mean(stack, axis=(0, 1, 2))


def _noise_floor_db(batch_dir: Path) -> float:
    """Median over notes of the quietest frames' level: the background between words."""
    floors = []
    for record in read_manifest(batch_dir):
        samples, _ = sf.read(batch_dir / record["audio"], dtype="float64")
        frames = samples[: len(samples) // 400 * 400].reshape(-1, 400)
        floors.append(np.percentile(20 * np.log10(frames.std(axis=1) + 1e-9), 10))
    return float(np.median(floors))


def _new_vocabulary_share(batch_dir: Path) -> float:
    tokens = [w for r in read_manifest(batch_dir) for w in words(r["text"])]
    return float(np.mean([w in NEW_VOCABULARY for w in tokens]))


@pytest.mark.parametrize(
    ("knob", "statistic", "check"),
    [
        ("image_shift", _mean_pixels, lambda base, moved: (
            moved.mean() < base.mean() - 20 and (moved[0] - moved[2]) > (base[0] - base[2]) + 20)),
        ("text_shift", _new_vocabulary_share, lambda base, moved: base == 0 and moved > 0.08),
        ("audio_noise", _noise_floor_db, lambda base, moved: moved > base + 15),
    ],
)  # fmt: skip
def test_drift_knob_moves_its_statistic(
    tmp_path: Path, knob: str, statistic: Callable[[Path], Any], check: Callable[[Any, Any], bool]
) -> None:
    generate_dataset(tmp_path / "base", 30, seed=9, knobs=COMPLETE)
    moved_knobs = GeneratorKnobs(missing_modality_rate=0.0, **{knob: 0.6})
    generate_dataset(tmp_path / "moved", 30, seed=9, knobs=moved_knobs)
    base, moved = statistic(tmp_path / "base" / BATCH), statistic(tmp_path / "moved" / BATCH)
    assert check(base, moved), (base, moved)
    # Drift changes how things look or sound, never what is true.
    labels = [r["labels"] for r in read_manifest(tmp_path / "base" / BATCH)]
    assert labels == [r["labels"] for r in read_manifest(tmp_path / "moved" / BATCH)]


def test_class_shift_moves_the_prior_toward_negative_and_damage(tmp_path: Path) -> None:
    base = generate_dataset(tmp_path / "base", 200, seed=9, knobs=ONE_MODALITY)
    shifted = generate_dataset(
        tmp_path / "shifted",
        200,
        seed=9,
        knobs=GeneratorKnobs(missing_modality_rate=1.0, class_shift=0.8),
    )
    before, after = base.counts["labels"], shifted.counts["labels"]
    assert after["sentiment"]["negative"] > before["sentiment"]["negative"] + 60
    assert after["damaged"]["true"] > before["damaged"]["true"] + 30


# --- Each modality carries the labels the story says it does ---


def test_audio_carries_sentiment(
    signal_batch: tuple[Path, GenerateSummary], signal_audio: np.ndarray
) -> None:
    records = read_manifest(signal_batch[0])
    features = signal_audio
    sentiment = np.array([r["labels"]["sentiment"] for r in records])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    accuracy = cross_val_score(logistic(), features, sentiment, cv=folds).mean()
    majority = max(Counter(sentiment).values()) / len(sentiment)
    assert accuracy > majority + 0.25, (accuracy, majority)


def test_image_carries_damage(signal_batch: tuple[Path, GenerateSummary]) -> None:
    batch_dir, _ = signal_batch
    records = read_manifest(batch_dir)
    features = np.array([image_features(batch_dir / r["image"]) for r in records])
    damaged = np.array([r["labels"]["damaged"] for r in records])
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    auc = cross_val_score(logistic(), features, damaged, cv=folds, scoring="roc_auc").mean()
    assert auc > 0.75, auc


def test_mismatch_needs_text_and_audio(
    signal_batch: tuple[Path, GenerateSummary], signal_audio: np.ndarray
) -> None:
    records = read_manifest(signal_batch[0])
    words_matrix = CountVectorizer(ngram_range=(1, 2), min_df=2).fit_transform(
        [r["text"] for r in records]
    )
    sound = signal_audio
    sentiment = np.array([r["labels"]["sentiment"] for r in records])
    mismatch = np.array([r["labels"]["mismatch"] for r in records])
    majority = 1.0 - mismatch.mean()
    folds = StratifiedKFold(5, shuffle=True, random_state=0)

    text_model = make_pipeline(LogisticRegression(max_iter=3000, C=0.3))
    text_accuracy = cross_val_score(text_model, words_matrix, mismatch, cv=folds).mean()
    text_auc = cross_val_score(text_model, words_matrix, mismatch, cv=folds, scoring="roc_auc")
    assert text_accuracy < majority + 0.03, (text_accuracy, majority)
    assert text_auc.mean() < 0.65, text_auc.mean()

    # Late fusion: what the words say and what the voice says, and their agreement.
    said = cross_val_predict(text_model, words_matrix, sentiment, cv=folds, method="predict_proba")
    heard = cross_val_predict(logistic(), sound, sentiment, cv=folds, method="predict_proba")
    agreement = (said[:, :, None] * heard[:, None, :]).reshape(len(records), -1)
    fused = np.hstack([said, heard, agreement])
    fused_accuracy = cross_val_score(logistic(), fused, mismatch, cv=folds).mean()
    fused_auc = cross_val_score(logistic(), fused, mismatch, cv=folds, scoring="roc_auc").mean()
    assert fused_accuracy > max(text_accuracy, majority) + 0.025, (fused_accuracy, majority)
    assert fused_auc > text_auc.mean() + 0.2, (fused_auc, text_auc.mean())

    # Audio alone knows the mood, not whether the words hide it: no better than the majority.
    audio_accuracy = cross_val_score(logistic(), sound, mismatch, cv=folds).mean()
    assert audio_accuracy < majority + 0.03


def test_colour_and_product_tie_an_items_modalities_together(
    signal_batch: tuple[Path, GenerateSummary],
) -> None:
    """What same-item retrieval needs: the photo shows the story's colour, most texts name
    it, and the voice note opens by saying the colour and the product."""
    batch_dir, _ = signal_batch
    records = read_manifest(batch_dir)
    stories = [draw_story(7, int(r["id"].rsplit("-", 1)[1])) for r in records]
    colours = np.array([s.colour for s in stories])
    products = np.array([s.category for s in stories])
    assert len(set(colours)) == len(COLOURS)

    # Words: a colour word, when there is one, is the item's colour; ~85% of texts have one.
    named = [[w for w in words(r["text"]) if w in COLOURS] for r in records]
    assert all(found == [colour] for found, colour in zip(named, colours, strict=True) if found)
    share = np.mean([bool(found) for found in named])
    assert abs(share - COLOUR_MENTION_RATE) < 0.06, share

    # Photo: the colour is linearly decodable from a coarse thumbnail.
    thumbs = np.array(
        [
            np.asarray(Image.open(batch_dir / r["image"]).convert("RGB").resize((8, 8))).ravel()
            for r in records
        ],
        dtype=float,
    )
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    image_accuracy = cross_val_score(logistic(0.1), thumbs, colours, cv=folds).mean()
    assert image_accuracy > 0.6, image_accuracy

    # Voice: the opening words are decodable from the log-mel of the first 1.2 s (chance is
    # 1/12 for the colour and 1/5 for the product), at 20 ms a frame.
    config = MediaConfig.model_validate({"audio": {"features": "logmel"}}).audio
    audio, bounds = modalities.get("audio"), MediaBounds().audio
    openings = np.array(
        [
            log_mel(audio.decode((batch_dir / r["audio"]).read_bytes(), bounds), config)[0][:, :60]
            .reshape(config.n_mels, 10, 6)
            .mean(-1)
            .ravel()
            for r in records
        ]
    )
    colour_accuracy = cross_val_score(logistic(0.1), openings, colours, cv=folds).mean()
    product_accuracy = cross_val_score(logistic(0.1), openings, products, cv=folds).mean()
    assert colour_accuracy > 0.6, colour_accuracy
    assert product_accuracy > 0.45, product_accuracy
