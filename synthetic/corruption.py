"""Bad records, one defect each, covering every per-record `RejectReason`.

The bounds below are the ones the generator assumes; configure ingestion with the same values
(docs/generator.md lists them) and every corrupt record is rejected for exactly the reason
recorded in `expected_rejects`, while every normal record passes.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from dualmedia import modalities
from dualmedia.contract import RejectReason
from dualmedia.modalities import MediaBounds
from dualmedia.modalities.image import PIL_FORMATS
from synthetic.images import encode_image
from synthetic.story import DEFAULT_MODALITIES, MODALITY_NAMES, VIDEO_FPS
from synthetic.videos import encode_clip
from synthetic.voices import wav_bytes

# --- The bounds a record must respect: the registry's defaults (what ingestion uses). ---
_BOUNDS = MediaBounds()
MAX_TEXT_CHARS = _BOUNDS.text.max_chars  # longer text (in characters) is TEXT_TOO_LONG
MIN_IMAGE_SIDE = _BOUNDS.image.min_side  # pixels; a smaller width or height is out of bounds
MAX_IMAGE_SIDE = _BOUNDS.image.max_side  # pixels; a larger width or height is out of bounds
ALLOWED_IMAGE_FORMATS = PIL_FORMATS  # what PIL must identify the file as
MIN_AUDIO_SECONDS = _BOUNDS.audio.min_duration_s  # shorter is AUDIO_TOO_SHORT
MAX_AUDIO_SECONDS = _BOUNDS.audio.max_duration_s  # longer is AUDIO_TOO_LONG
SILENT_PEAK = _BOUNDS.audio.silent_peak  # peak |sample| below this (-60 dBFS): silent
CLIP_LEVEL = _BOUNDS.audio.clip_level  # |sample| at or above this counts as clipped
MAX_CLIPPED_FRACTION = _BOUNDS.audio.max_clipped_fraction  # more clipped: AUDIO_CLIPPED
MAX_VIDEO_SECONDS = _BOUNDS.video.max_duration_s  # longer (from the header) is VIDEO_TOO_LONG
MIN_VIDEO_SIDE = _BOUNDS.video.min_side  # pixels; a smaller frame side is out of bounds
MAX_VIDEO_SIDE = _BOUNDS.video.max_side  # pixels; a larger frame side is out of bounds
MAX_LINE_BYTES = 1024 * 1024  # a longer manifest line is MANIFEST_LINE_TOO_LONG

# Media fields of a record, in canonical order (text is inline, the rest name files).
MEDIA_FIELDS = ("image", "audio", "video")
# Generic kinds that need a media field beside the text (an empty text keeps one, so that the
# record is not also "no modality"; a foreign bucket is named in one).
_NEEDS_MEDIA = frozenset({RejectReason.TEXT_EMPTY, RejectReason.MEDIA_BUCKET_NOT_ALLOWED})


def reject_cycle(declared: Sequence[str] = DEFAULT_MODALITIES) -> tuple[RejectReason, ...]:
    """The kinds of bad record a dataset declaring `declared` gets, in `RejectReason` order:
    the generic ones and those of the declared modalities (no image defect without images)."""
    names = {str(getattr(m, "value", m)) for m in declared}
    own = {r for m in MODALITY_NAMES for r in modalities.get(m).reasons}
    wanted = {r for m in names for r in modalities.get(m).reasons}
    has_media = bool(names & set(MEDIA_FIELDS))
    return tuple(
        r
        for r in RejectReason
        if (r.value not in own or r.value in wanted) and (has_media or r not in _NEEDS_MEDIA)
    )


# Corrupt records cycle through this order, so any REJECT_CYCLE-long run of corrupt records in a
# batch holds every kind; with video declared the cycle is `reject_cycle(...)`, 6 kinds longer.
REJECT_CYCLE: tuple[RejectReason, ...] = reject_cycle()
# Kinds whose record has no usable id of its own: expected_rejects keys them "line:N".
KEYED_BY_LINE = frozenset(
    {
        RejectReason.MANIFEST_NOT_JSON,
        RejectReason.MISSING_ID,
        RejectReason.DUPLICATE_ID,
        RejectReason.MANIFEST_LINE_TOO_LONG,
    }
)

IMAGE_REASONS = frozenset(r for r in RejectReason if r.value.startswith("image_"))
AUDIO_REASONS = frozenset(r for r in RejectReason if r.value.startswith("audio_"))
VIDEO_REASONS = frozenset(r for r in RejectReason if r.value.startswith("video_"))

# Payload sizes, kept small so a corrupt-heavy batch stays light.
_TOO_SHORT_SECONDS = MIN_AUDIO_SECONDS / 2
_TOO_LONG_SECONDS = 31.0
_TOO_LONG_RATE = 8000
_CLIPPED_SHARE = 0.2  # share of samples pushed to full scale in a clipped note
_UNDECODABLE_BYTES = (512, 2048)
_LEGACY_ENCODED_PREFIX = "Très déçu, "  # sent as Latin-1 bytes: not valid UTF-8
_TOO_LONG_VIDEO_FPS = 1  # a slide show of the clip's frames: long, yet only ~60 frames
_ISO_BOX_PREFIX = 4  # where an MP4's first box type starts; a zero byte there names no box


@dataclass
class ItemMedia:
    """How to render one item's normal media on demand (corruption needs some of it)."""

    item_id: str
    image_format: str
    audio_rate: int
    audio_seconds: float
    photo: Callable[[], Image.Image]
    voice: Callable[[int, float], np.ndarray]  # (sample rate, seconds) -> samples
    # Only where the dataset declares video: the clip's frames, and its MP4 file.
    clip_frames: Callable[[], np.ndarray] | None = None
    clip: Callable[[], bytes] | None = None

    @property
    def image_path(self) -> str:
        return f"images/{self.item_id}.{self.image_format}"

    @property
    def audio_path(self) -> str:
        return f"audio/{self.item_id}.wav"

    @property
    def video_path(self) -> str:
        return f"videos/{self.item_id}.mp4"

    def video_file(self) -> bytes:
        if self.clip is None:
            raise ValueError(f"item {self.item_id} has no clip (the dataset declares no video)")
        return self.clip()

    def frames(self) -> np.ndarray:
        if self.clip_frames is None:
            raise ValueError(f"item {self.item_id} has no clip (the dataset declares no video)")
        return self.clip_frames()

    def image_file(self) -> bytes:
        return encode_image(self.photo(), self.image_format)

    def audio_file(self) -> bytes:
        return wav_bytes(self.voice(self.audio_rate, self.audio_seconds), self.audio_rate)


@dataclass
class BadRecord:
    """A manifest line (no newline) and the files under the batch folder it needs."""

    line: bytes
    files: dict[str, bytes] = field(default_factory=dict)


def manifest_line(record: dict[str, Any]) -> bytes:
    """One manifest line: compact-ish JSON, non-ASCII kept as UTF-8."""
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def _with_media(
    record: dict[str, Any], media: ItemMedia, *, image: bool, audio: bool, video: bool = False
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Point `record` at valid media for the requested modalities and return their files."""
    files: dict[str, bytes] = {}
    record = dict(record)
    if image:
        record["image"] = media.image_path
        files[media.image_path] = media.image_file()
    if audio:
        record["audio"] = media.audio_path
        files[media.audio_path] = media.audio_file()
    if video:
        record["video"] = media.video_path
        files[media.video_path] = media.video_file()
    return record, files


def _random_bytes(rng: np.random.Generator) -> bytes:
    size = int(rng.integers(*_UNDECODABLE_BYTES))
    # A zero first byte: no image or audio format starts that way.
    return b"\x00" + rng.integers(0, 256, size - 1, dtype=np.uint8).tobytes()


def _truncated_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """A WAV whose data chunk header promises all frames but the file stops halfway."""
    full = wav_bytes(samples, sample_rate)
    data_at = full.index(b"data") + 8
    (data_size,) = struct.unpack("<I", full[data_at - 4 : data_at])
    return full[: data_at + (data_size // 2) // 2 * 2]


def _clipped(samples: np.ndarray) -> np.ndarray:
    gain = 1.0 / np.quantile(np.abs(samples), 1.0 - _CLIPPED_SHARE)
    return np.clip(samples * gain, -1.0, 1.0)


def make_bad_record(
    reason: RejectReason,
    record: dict[str, Any],
    media: ItemMedia,
    rng: np.random.Generator,
    *,
    duplicate_of: str | None = None,
) -> BadRecord:
    """Turn the item's normal `record` into one with exactly the defect `reason`.

    `record` holds the item's normal fields (media already null where the item lacks them);
    only the defective field changes, and a modality the defect needs is added when absent.
    """
    # The defective modality's normal file is never written: its path must hold the bad file or,
    # for "missing", nothing at all.
    has_image = record.get("image") is not None and reason not in IMAGE_REASONS
    has_audio = record.get("audio") is not None and reason not in AUDIO_REASONS
    has_video = record.get("video") is not None and reason not in VIDEO_REASONS
    base, files = _with_media(record, media, image=has_image, audio=has_audio, video=has_video)
    # The record's first media field (image in the default datasets): what an empty text keeps
    # and where a foreign bucket is named.
    first_media = next((m for m in MEDIA_FIELDS if m in record), None)
    match reason:
        case RejectReason.MANIFEST_NOT_JSON:
            line = manifest_line(record)
            return BadRecord(line[: len(line) // 2])  # unterminated: cut mid-record
        case RejectReason.MISSING_ID:
            return BadRecord(manifest_line({k: v for k, v in base.items() if k != "id"}), files)
        case RejectReason.DUPLICATE_ID:
            if duplicate_of is None:
                raise ValueError("a duplicate id needs an earlier id to duplicate")
            return BadRecord(manifest_line({**base, "id": duplicate_of}), files)
        case RejectReason.NO_MODALITY:
            nothing = {m: None for m in ("text", *MEDIA_FIELDS) if m in record}
            return BadRecord(manifest_line({**record, **nothing}))
        case RejectReason.TEXT_EMPTY:
            # An empty string is present-but-empty (null would be a missing modality); keep a
            # medium (the image, where declared) so the record is not also "no modality".
            base, files = _with_media(
                record,
                media,
                image=has_image or first_media == "image",
                audio=has_audio or first_media == "audio",
                video=has_video or first_media == "video",
            )
            return BadRecord(manifest_line({**base, "text": ""}), files)
        case RejectReason.TEXT_NOT_UTF8:
            placeholder = "\u2063NOT-UTF8\u2063"
            line = manifest_line({**base, "text": placeholder})
            text = _LEGACY_ENCODED_PREFIX + (record["text"] or "the item arrived.")
            escaped = json.dumps(text, ensure_ascii=False)[1:-1]
            legacy = escaped.encode("latin-1", errors="replace")
            return BadRecord(line.replace(placeholder.encode("utf-8"), legacy), files)
        case RejectReason.TEXT_TOO_LONG:
            sentence = (record["text"] or "It arrived.").strip() + " "
            repeats = MAX_TEXT_CHARS // len(sentence) + 2
            return BadRecord(manifest_line({**base, "text": (sentence * repeats).strip()}), files)
        case RejectReason.IMAGE_MISSING:
            return BadRecord(manifest_line({**base, "image": media.image_path}), files)
        case RejectReason.IMAGE_UNDECODABLE:
            path = f"images/{media.item_id}.jpg"
            return BadRecord(
                manifest_line({**base, "image": path}), {**files, path: _random_bytes(rng)}
            )
        case RejectReason.IMAGE_TRUNCATED:
            path = f"images/{media.item_id}.jpg"
            jpeg = encode_image(media.photo(), "jpg")
            return BadRecord(
                manifest_line({**base, "image": path}), {**files, path: jpeg[: len(jpeg) // 2]}
            )
        case RejectReason.IMAGE_EMPTY:
            return BadRecord(
                manifest_line({**base, "image": media.image_path}), {**files, media.image_path: b""}
            )
        case RejectReason.IMAGE_SIZE_OUT_OF_BOUNDS:
            path = f"images/{media.item_id}.png"
            if rng.random() < 0.5:  # a thumbnail too small to see anything
                odd = media.photo().resize((4, 4), Image.Resampling.BILINEAR)
            else:  # a banner far too wide
                ramp = np.linspace(0, 255, MAX_IMAGE_SIDE + 904, dtype=np.uint8)  # few KB
                odd = Image.fromarray(np.repeat(np.stack([ramp] * 3, -1)[None], 24, axis=0))
            buffer = io.BytesIO()
            odd.save(buffer, format="PNG", compress_level=6)
            return BadRecord(
                manifest_line({**base, "image": path}), {**files, path: buffer.getvalue()}
            )
        case RejectReason.IMAGE_FORMAT_NOT_SUPPORTED:  # a real image, in a format not allowed
            path = f"images/{media.item_id}.bmp"
            buffer = io.BytesIO()
            media.photo().convert("RGB").save(buffer, format="BMP")
            return BadRecord(
                manifest_line({**base, "image": path}), {**files, path: buffer.getvalue()}
            )
        case RejectReason.AUDIO_FORMAT_NOT_SUPPORTED:  # a real voice note, as AIFF
            path = f"audio/{media.item_id}.aiff"
            buffer = io.BytesIO()
            voice = media.voice(media.audio_rate, media.audio_seconds)
            sf.write(buffer, voice, media.audio_rate, format="AIFF")
            return BadRecord(
                manifest_line({**base, "audio": path}), {**files, path: buffer.getvalue()}
            )
        case RejectReason.MEDIA_BUCKET_NOT_ALLOWED:  # media named in another bucket
            if first_media is None:
                raise ValueError("a foreign bucket needs a media field to be named in")
            path = {"image": media.image_path, "audio": media.audio_path}.get(
                first_media, media.video_path
            )
            foreign = {first_media: f"s3://not-this-dataset/{path}"}
            return BadRecord(manifest_line({**base, **foreign}), files)
        case RejectReason.MANIFEST_LINE_TOO_LONG:
            note = "x" * (MAX_LINE_BYTES + 1)
            return BadRecord(manifest_line({**base, "note": note}), files)
        case RejectReason.AUDIO_MISSING:
            return BadRecord(manifest_line({**base, "audio": media.audio_path}), files)
        case RejectReason.AUDIO_UNDECODABLE:
            return BadRecord(
                manifest_line({**base, "audio": media.audio_path}),
                {**files, media.audio_path: _random_bytes(rng)},
            )
        case RejectReason.AUDIO_TRUNCATED:
            voice = media.voice(media.audio_rate, media.audio_seconds)
            return BadRecord(
                manifest_line({**base, "audio": media.audio_path}),
                {**files, media.audio_path: _truncated_wav(voice, media.audio_rate)},
            )
        case RejectReason.AUDIO_SILENT:
            silence = np.zeros(round(media.audio_seconds * media.audio_rate))
            return BadRecord(
                manifest_line({**base, "audio": media.audio_path}),
                {**files, media.audio_path: wav_bytes(silence, media.audio_rate)},
            )
        case RejectReason.AUDIO_CLIPPED:
            voice = _clipped(media.voice(media.audio_rate, media.audio_seconds))
            return BadRecord(
                manifest_line({**base, "audio": media.audio_path}),
                {**files, media.audio_path: wav_bytes(voice, media.audio_rate)},
            )
        case RejectReason.AUDIO_TOO_SHORT:
            voice = media.voice(media.audio_rate, _TOO_SHORT_SECONDS)
            return BadRecord(
                manifest_line({**base, "audio": media.audio_path}),
                {**files, media.audio_path: wav_bytes(voice, media.audio_rate)},
            )
        case RejectReason.AUDIO_TOO_LONG:
            # One voice note repeated: long, but cheap to make and small at 8 kHz.
            voice = media.voice(_TOO_LONG_RATE, media.audio_seconds)
            repeats = int(np.ceil(_TOO_LONG_SECONDS / media.audio_seconds))
            long_voice = np.tile(voice, repeats)[: round(_TOO_LONG_SECONDS * _TOO_LONG_RATE)]
            return BadRecord(
                manifest_line({**base, "audio": media.audio_path}),
                {**files, media.audio_path: wav_bytes(long_voice, _TOO_LONG_RATE)},
            )
        case RejectReason.VIDEO_MISSING:
            return BadRecord(manifest_line({**base, "video": media.video_path}), files)
        case RejectReason.VIDEO_UNDECODABLE:
            junk = bytearray(_random_bytes(rng))
            junk[_ISO_BOX_PREFIX] = 0  # so it never reads as an MP4 box by chance
            return BadRecord(
                manifest_line({**base, "video": media.video_path}),
                {**files, media.video_path: bytes(junk)},
            )
        case RejectReason.VIDEO_TRUNCATED:
            # The index (moov) comes first, so the cut keeps it and loses frame data: the
            # media box claims more bytes than the file holds.
            clip = media.video_file()
            return BadRecord(
                manifest_line({**base, "video": media.video_path}),
                {**files, media.video_path: clip[: len(clip) // 2]},
            )
        case RejectReason.VIDEO_NO_FRAMES:
            # A valid MP4 holding only the voice note: sound, but no video stream.
            voice = media.voice(media.audio_rate, media.audio_seconds)
            sound_only = encode_clip([], VIDEO_FPS, audio=voice, sample_rate=media.audio_rate)
            return BadRecord(
                manifest_line({**base, "video": media.video_path}),
                {**files, media.video_path: sound_only},
            )
        case RejectReason.VIDEO_TOO_LONG:
            # The clip's frames as a 1 fps slide show, looped past the longest allowed clip.
            frames = media.frames()
            count = math.ceil(MAX_VIDEO_SECONDS * _TOO_LONG_VIDEO_FPS) + 4
            looped = [frames[k % len(frames)] for k in range(count)]
            return BadRecord(
                manifest_line({**base, "video": media.video_path}),
                {**files, media.video_path: encode_clip(looped, _TOO_LONG_VIDEO_FPS)},
            )
        case RejectReason.VIDEO_SIZE_OUT_OF_BOUNDS:
            # A thumbnail clip: frames of half the smallest allowed side (even, as yuv420p
            # needs).
            side = max(2, MIN_VIDEO_SIDE // 4 * 2)
            tiny = [
                np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.BILINEAR))
                for f in media.frames()
            ]
            return BadRecord(
                manifest_line({**base, "video": media.video_path}),
                {**files, media.video_path: encode_clip(tiny, VIDEO_FPS)},
            )
        case RejectReason.LABEL_MISSING:
            if rng.random() < 0.5:
                return BadRecord(manifest_line({**base, "labels": None}), files)
            return BadRecord(manifest_line({k: v for k, v in base.items() if k != "labels"}), files)
        case RejectReason.LABEL_UNKNOWN_CLASS:
            wrong = {"sentiment": "furious"} if rng.random() < 0.5 else {"category": "toaster"}
            return BadRecord(manifest_line({**base, "labels": {**base["labels"], **wrong}}), files)
        case RejectReason.LABEL_WRONG_TYPE:
            wrong = {"damaged": "yes"} if rng.random() < 0.5 else {"sentiment": 3}
            return BadRecord(manifest_line({**base, "labels": {**base["labels"], **wrong}}), files)
    raise ValueError(f"no bad record for reject reason {reason!r}")
