"""Write a labelled synthetic customer-feedback batch in the dataset contract's layout.

```
<out>/dataset.yaml
<out>/<batch>/manifest.jsonl
<out>/<batch>/images/<id>.jpg|.png|.webp
<out>/<batch>/audio/<id>.wav
<out>/<batch>/videos/<id>.mp4          (only when video is declared: video_rate > 0)
<out>/<batch>/_expected_rejects.json   (only when corrupt_rate > 0; a test oracle)
```

Item i's content depends only on (seed, start_index + i) and the knobs, so a smaller batch is a
prefix of a larger one and batches with disjoint index ranges grow one dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dualmedia.contract import (
    DATASET_FILE,
    MANIFEST_FILE,
    BinaryLabel,
    CategoricalLabel,
    DatasetSpec,
    Modality,
    RejectReason,
)
from synthetic.corruption import (
    KEYED_BY_LINE,
    ItemMedia,
    make_bad_record,
    manifest_line,
    reject_cycle,
)
from synthetic.images import render_photo
from synthetic.story import (
    CATEGORIES,
    DEFAULT_MODALITIES,
    LABEL_CLASSES,
    MODALITY_NAMES,
    SENTIMENTS,
    VIDEO_FPS,
    ItemStory,
    Stream,
    created_at,
    declared_modalities,
    draw_clip,
    draw_story,
    item_rng,
)
from synthetic.texts import render_text
from synthetic.videos import encode_clip, render_frames
from synthetic.voices import render_voice

DATASET_NAME = "customer-feedback"
EXPECTED_REJECTS_FILE = "_expected_rejects.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# The folder each media modality's files go to, inside the batch folder.
MEDIA_FOLDERS = {"image": "images", "audio": "audio", "video": "videos"}


def dataset_spec(modalities: Sequence[str] | None = None) -> DatasetSpec:
    """The spec a generated dataset declares: `modalities` (canonical order; default text,
    image and audio, what `generate_dataset` declares without video) and the four labels."""
    names = {str(getattr(m, "value", m)) for m in modalities or DEFAULT_MODALITIES}
    return DatasetSpec(
        name=DATASET_NAME,
        modalities=[Modality(m) for m in MODALITY_NAMES if m in names],
        labels={
            "sentiment": CategoricalLabel(type="categorical", classes=list(SENTIMENTS)),
            "category": CategoricalLabel(type="categorical", classes=list(CATEGORIES)),
            "damaged": BinaryLabel(type="binary"),
            "mismatch": BinaryLabel(type="binary"),
        },
        # Product photos and clips may be mirrored in training (the default forbids it).
        media={"image": {"flip": True}, "video": {"flip": True}},
        # The generic templates plus one in the words of this data (customer reviews).
        prompt_templates=["{cls}", "a {cls} review", "{label}: {cls}", "the {label} is {cls}"],
    )


@dataclass(frozen=True)
class GeneratorKnobs:
    """What to vary between batches: missingness, label noise, corruption and drift."""

    # Each modality is independently dropped (null in the manifest) with this probability;
    # at least one always stays.
    missing_modality_rate: float = 0.1
    # Fraction of items whose categorical/binary labels are all flipped to a random other class.
    label_noise: float = 0.0
    # Fraction of records replaced by a bad record (one defect each, see corruption.py).
    corrupt_rate: float = 0.0
    # Drift 0..1: colour cast and lighting change of the photos.
    image_shift: float = 0.0
    # Drift 0..1: fraction of sentences using new vocabulary (slang, new product words).
    text_shift: float = 0.0
    # Drift 0..1: background noise added to the voice notes (lower SNR).
    audio_noise: float = 0.0
    # Drift 0..1: prior shift toward negative sentiment and damage.
    class_shift: float = 0.0

    def __post_init__(self) -> None:
        for knob in fields(self):
            value = getattr(self, knob.name)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"generator knob {knob.name} must be in [0, 1], got {value!r}")


@dataclass
class GenerateSummary:
    """What `generate_dataset` wrote; JSON-able via `to_dict()`."""

    out_dir: str
    batch: str
    n_records: int  # manifest lines, corrupt ones included
    n_corrupt: int
    # Over the normal records: {"labels": {label: {class: n}}, "modalities": {modality: n}}.
    counts: dict[str, Any] = field(default_factory=dict)
    # Record id (or "line:N" when the line has no usable id) -> RejectReason value.
    expected_rejects: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _item_id(id_prefix: str, index: int) -> str:
    return f"{id_prefix}-{index:06d}"


def _item_media(
    story: ItemStory, item_id: str, seed: int, knobs: GeneratorKnobs, declared: tuple[str, ...]
) -> ItemMedia:
    """Renderers of the item's media; each draws from its own fresh stream when called."""

    @cache
    def photo() -> Image.Image:
        return render_photo(story, item_rng(seed, story.index, Stream.IMAGE), knobs.image_shift)

    @cache  # the voice note can be needed twice: as the WAV and as the clip's audio track
    def voice(sample_rate: int, seconds: float) -> np.ndarray:
        return render_voice(
            story,
            item_rng(seed, story.index, Stream.AUDIO),
            item_rng(seed, story.index, Stream.AUDIO_NOISE),
            knobs.audio_noise,
            sample_rate=sample_rate,
            seconds=seconds,
        )

    # A bad video record of an item without a clip still needs one to spoil: the clip the
    # item would have had (its VIDEO stream decides everything but whether it has one).
    clip = story.clip
    if clip is None and "video" in declared:
        clip = draw_clip(seed, story.index, story.audio_seconds, 1.0)

    @cache
    def clip_frames() -> np.ndarray:
        rng = item_rng(seed, story.index, Stream.VIDEO_RENDER)
        return render_frames(story, rng, knobs.image_shift, clip)

    def clip_file() -> bytes:
        track = None
        if clip is not None and clip.voice_track:
            track = voice(story.audio_rate, story.audio_seconds)
        return encode_clip(clip_frames(), VIDEO_FPS, audio=track, sample_rate=story.audio_rate)

    return ItemMedia(
        item_id=item_id,
        image_format=story.image_format,
        audio_rate=story.audio_rate,
        audio_seconds=story.audio_seconds,
        photo=photo,
        voice=voice,
        clip_frames=clip_frames if clip is not None else None,
        clip=clip_file if clip is not None else None,
    )


def _normal_record(
    story: ItemStory,
    item_id: str,
    seed: int,
    knobs: GeneratorKnobs,
    media: ItemMedia,
    declared: tuple[str, ...],
) -> dict[str, Any]:
    """The item's record with media paths; media of dropped modalities is never rendered.

    It has a field for each declared modality (null when the item lacks it), and no other."""
    record: dict[str, Any] = {"id": item_id}
    if "text" in declared:
        record["text"] = None
        if Modality.TEXT in story.present:
            record["text"] = render_text(
                story,
                item_rng(seed, story.index, Stream.TEXT),
                item_rng(seed, story.index, Stream.TEXT_DRIFT),
                knobs.text_shift,
            )
    paths = {"image": media.image_path, "audio": media.audio_path, "video": media.video_path}
    for name in MEDIA_FOLDERS:
        if name in declared:
            record[name] = paths[name] if Modality(name) in story.present else None
    record["labels"] = dict(story.labels)
    record["created_at"] = created_at(story.index)
    return record


def _empty_counts(declared: tuple[str, ...]) -> dict[str, Any]:
    return {
        "labels": {
            name: {str(c).lower(): 0 for c in classes} for name, classes in LABEL_CLASSES.items()
        },
        "modalities": {m: 0 for m in declared},
    }


def _count(counts: dict[str, Any], record: dict[str, Any]) -> None:
    for name, value in record["labels"].items():
        counts["labels"][name][str(value).lower()] += 1
    for modality in counts["modalities"]:
        if record[modality] is not None:
            counts["modalities"][modality] += 1


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def generate_dataset(
    out_dir: Path,
    n: int,
    *,
    seed: int = 0,
    batch: str = "batch-0001",
    knobs: GeneratorKnobs = GeneratorKnobs(),
    id_prefix: str = "fb",
    start_index: int = 0,
    progress: Callable[[int], None] | None = None,
    video_rate: float = 0.0,
    modalities: Sequence[str] | None = None,
) -> GenerateSummary:
    """Write `dataset.yaml` and batch `batch` of `n` items into the local folder `out_dir`.

    Items are numbered start_index .. start_index + n - 1 and get ids f"{id_prefix}-{index:06d}".
    `video_rate`: the share of items with a clip (`videos/<id>.mp4`); above 0 the dataset
    declares video too. `modalities`: what the dataset declares and the records hold instead
    of text, image, audio (+ video), e.g. ["text", "video"] (with video_rate > 0). Every batch
    of one dataset needs the same two: `dataset.yaml` is rewritten on each run.
    The batch is written into a hidden folder beside it and renamed into place when complete,
    replacing an earlier batch of the same name, so a crash never leaves half a batch.
    Same arguments give byte-identical files. `progress(k)` is called as items finish, with k
    the number of items just finished (an increment, as `rich`'s `advance` takes; 1 per item).
    """
    if n < 0 or start_index < 0 or seed < 0:
        raise ValueError(f"n, start_index and seed must be >= 0, got {n}, {start_index}, {seed}")
    for what, name in (("batch", batch), ("id_prefix", id_prefix)):
        if not _NAME.match(name):
            raise ValueError(f"{what} {name!r} must match {_NAME.pattern} (it names files)")
    declared = declared_modalities(modalities, video_rate)
    cycle = reject_cycle(declared)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / batch
    partial = out_dir / f".{batch}.partial"
    stale = out_dir / f".{batch}.old"
    for leftover in (partial, stale):  # from an earlier crashed run
        if leftover.exists():
            shutil.rmtree(leftover)
    partial.mkdir(parents=True)
    for name, folder in MEDIA_FOLDERS.items():
        if name in declared:
            (partial / folder).mkdir()

    lines: list[bytes] = []
    expected: dict[str, str] = {}
    counts = _empty_counts(declared)
    n_corrupt = 0
    last_normal_id: str | None = None
    for offset in range(n):
        index = start_index + offset
        item_id = _item_id(id_prefix, index)
        story = draw_story(
            seed,
            index,
            class_shift=knobs.class_shift,
            missing_modality_rate=knobs.missing_modality_rate,
            label_noise=knobs.label_noise,
            video_rate=video_rate,
            modalities=declared,
        )
        media = _item_media(story, item_id, seed, knobs, declared)
        record = _normal_record(story, item_id, seed, knobs, media, declared)
        is_corrupt = item_rng(seed, index, Stream.CORRUPT).random() < knobs.corrupt_rate
        if is_corrupt:
            reason = cycle[n_corrupt % len(cycle)]
            if reason is RejectReason.DUPLICATE_ID and last_normal_id is None:
                # Nothing earlier in this batch to duplicate: lose the id instead.
                reason = RejectReason.MISSING_ID
            bad = make_bad_record(
                reason,
                record,
                media,
                item_rng(seed, index, Stream.CORRUPT_PAYLOAD),
                duplicate_of=last_normal_id,
            )
            files, line = bad.files, bad.line
            key = f"line:{offset + 1}" if reason in KEYED_BY_LINE else item_id
            expected[key] = reason.value
            n_corrupt += 1
        else:
            files = {}
            if record.get("image") is not None:
                files[record["image"]] = media.image_file()
            if record.get("audio") is not None:
                files[record["audio"]] = media.audio_file()
            if record.get("video") is not None:
                files[record["video"]] = media.video_file()
            line = manifest_line(record)
            _count(counts, record)
            last_normal_id = item_id
        for relative, data in files.items():
            (partial / relative).write_bytes(data)
        lines.append(line)
        if progress is not None:
            progress(1)

    (partial / MANIFEST_FILE).write_bytes(b"".join(line + b"\n" for line in lines))
    if knobs.corrupt_rate > 0:
        oracle = json.dumps(expected, indent=2) + "\n"
        (partial / EXPECTED_REJECTS_FILE).write_text(oracle, encoding="utf-8")
    _write_atomically(out_dir / DATASET_FILE, dataset_spec(declared).to_yaml().encode("utf-8"))
    if final.exists():
        final.rename(stale)
    partial.rename(final)
    if stale.exists():
        shutil.rmtree(stale)
    return GenerateSummary(
        out_dir=str(out_dir),
        batch=batch,
        n_records=len(lines),
        n_corrupt=n_corrupt,
        counts=counts,
        expected_rejects=expected,
    )
