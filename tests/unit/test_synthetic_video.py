"""The generator's clips (`video_rate`, `modalities`): what they show, how they are encoded,
that they change nothing when off, and their bad records."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from dualmedia import modalities
from dualmedia.contract import MANIFEST_FILE, RejectReason, load_dataset_spec
from dualmedia.modalities import MediaBounds, MediaConfig, MediaError
from synthetic import GeneratorKnobs, dataset_spec, generate_dataset
from synthetic import corruption as bounds
from synthetic.images import encode_image, render_photo
from synthetic.story import (
    CLIP_SECONDS_RANGE,
    VIDEO_FPS,
    Stream,
    declared_modalities,
    draw_story,
    item_rng,
)
from synthetic.videos import CLIP_SIZE, encode_clip, render_clip, render_frames
from synthetic.voices import render_voice
from tests.unit.test_synthetic import all_files, read_manifest, reference_rejects

BATCH = "batch-0001"
COMPLETE = GeneratorKnobs(missing_modality_rate=0.0)
VIDEO_KINDS = {r.value for r in RejectReason if r.value.startswith("video_")}


def _decode(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video)]
        return {
            "frames": np.stack(frames),
            "announced": video.frames,
            "seconds": float(video.duration * video.time_base),
            "fps": float(video.average_rate),
            "codec": video.codec_context.name,
            "audio_rate": None if audio is None else audio.codec_context.sample_rate,
            "audio_codec": None if audio is None else audio.codec_context.name,
        }


def _top_boxes(data: bytes) -> list[bytes]:
    kinds, pos = [], 0
    while pos + 8 <= len(data):
        kinds.append(data[pos + 4 : pos + 8])
        pos += int.from_bytes(data[pos : pos + 4], "big")
    return kinds


def _dark_share(frames: np.ndarray) -> np.ndarray:
    """Per frame: the share of pixels far darker than the frame's median (cracks, chunks)."""
    gray = frames.astype(float) @ np.array([0.299, 0.587, 0.114])
    median = np.median(gray.reshape(len(gray), -1), axis=1)
    return np.mean(gray < 0.45 * median[:, None, None], axis=(1, 2))


# --- Off means off ---


def test_video_off_leaves_every_byte_as_it_was(tmp_path: Path) -> None:
    knobs = GeneratorKnobs(corrupt_rate=0.3, missing_modality_rate=0.2, image_shift=0.3)
    generate_dataset(tmp_path / "default", 30, seed=4, knobs=knobs)
    generate_dataset(tmp_path / "zero", 30, seed=4, knobs=knobs, video_rate=0.0)
    explicit = ["audio", "text", "image"]  # any order: declared in canonical order
    generate_dataset(tmp_path / "explicit", 30, seed=4, knobs=knobs, modalities=explicit)
    default = all_files(tmp_path / "default")
    assert all_files(tmp_path / "zero") == default
    assert all_files(tmp_path / "explicit") == default
    assert load_dataset_spec(tmp_path / "zero").modalities == dataset_spec().modalities
    assert [m.value for m in dataset_spec().modalities] == ["text", "image", "audio"]
    assert not (tmp_path / "zero" / BATCH / "videos").exists()
    assert b'"video"' not in (tmp_path / "zero" / BATCH / MANIFEST_FILE).read_bytes()
    assert all(draw_story(4, i).clip is None for i in range(30))


def test_adding_clips_changes_nothing_else(tmp_path: Path) -> None:
    plain = generate_dataset(tmp_path / "plain", 24, seed=6, knobs=COMPLETE)
    video = generate_dataset(tmp_path / "video", 24, seed=6, knobs=COMPLETE, video_rate=0.5)
    assert [m.value for m in load_dataset_spec(tmp_path / "video").modalities] == [
        "text",
        "image",
        "audio",
        "video",
    ]
    plain_records = read_manifest(tmp_path / "plain" / BATCH)
    video_records = read_manifest(tmp_path / "video" / BATCH)
    # The same records, each with a video field after audio; the rest is untouched.
    assert [{k: v for k, v in r.items() if k != "video"} for r in video_records] == plain_records
    assert all(list(r)[4] == "video" for r in video_records)
    with_clip = {r["id"] for r in video_records if r["video"] is not None}
    assert 0 < len(with_clip) < 24
    assert video.counts["modalities"] == {**plain.counts["modalities"], "video": len(with_clip)}
    plain_files = all_files(tmp_path / "plain" / BATCH)
    video_files = all_files(tmp_path / "video" / BATCH)
    assert {k for k in video_files if k.startswith("videos/")} == {
        f"videos/{i}.mp4" for i in with_clip
    }
    for index, record in enumerate(plain_records):
        story = draw_story(6, index, video_rate=0.5)
        assert (story.clip is not None) == (record["id"] in with_clip)
        for name in (record["image"], record["audio"]):
            # Only a photo whose damage moved into the clip differs.
            same = name.startswith("audio/") or story.photo_shows_damage == story.damaged
            assert (video_files[name] == plain_files[name]) == same, name


# --- Determinism and the story ---


def test_same_seed_gives_identical_clips_and_other_seeds_differ(tmp_path: Path) -> None:
    knobs = GeneratorKnobs(corrupt_rate=0.3, audio_noise=0.2, image_shift=0.2)
    generate_dataset(tmp_path / "a", 16, seed=8, knobs=knobs, video_rate=0.7)
    generate_dataset(tmp_path / "b", 16, seed=8, knobs=knobs, video_rate=0.7)
    first = all_files(tmp_path / "a")
    assert first == all_files(tmp_path / "b")
    assert any(k.endswith(".mp4") for k in first)
    generate_dataset(tmp_path / "c", 16, seed=9, knobs=knobs, video_rate=0.7)
    other = all_files(tmp_path / "c")
    shared = [k for k in first if k in other and k.endswith(".mp4")]
    assert shared and all(first[k] != other[k] for k in shared)


def test_the_video_rate_only_adds_clips() -> None:
    low = [draw_story(0, i, video_rate=0.3).clip for i in range(400)]
    high = [draw_story(0, i, video_rate=0.6).clip for i in range(400)]
    assert 0.24 <= np.mean([c is not None for c in low]) <= 0.36
    assert 0.54 <= np.mean([c is not None for c in high]) <= 0.66
    assert all(b == a for a, b in zip(low, high, strict=True) if a is not None)
    clips = [c for c in high if c is not None]
    assert 0.4 <= np.mean([c.voice_track for c in clips]) <= 0.6
    assert {c.pan for c in clips} == {-1, 1}
    for clip in clips:
        start, stop = clip.back_frames
        # One run of back-facing frames, a third to a half of the clip, never the whole.
        assert 0 <= start < stop <= clip.n_frames
        assert clip.n_frames / 3 <= stop - start <= clip.n_frames / 2 + 1
        assert CLIP_SECONDS_RANGE[0] <= clip.seconds <= CLIP_SECONDS_RANGE[1]


def test_photo_hides_the_damage_of_some_items_with_a_clip() -> None:
    stories = [draw_story(1, i, video_rate=1.0) for i in range(400)]
    damaged = [s for s in stories if s.damaged]
    hidden = [s for s in damaged if not s.photo_shows_damage]
    assert 0.35 <= len(hidden) / len(damaged) <= 0.65
    assert all(not s.photo_shows_damage and not s.damage_frames for s in stories if not s.damaged)
    assert all(len(s.damage_frames) > 0 for s in damaged)
    for story in hidden[:3]:  # the photo is the intact item's photo
        rng = item_rng(1, story.index, Stream.IMAGE)
        photo = encode_image(render_photo(story, rng, 0.0), "png")
        intact = dataclasses.replace(story, damaged=False)
        rng = item_rng(1, story.index, Stream.IMAGE)
        assert photo == encode_image(render_photo(intact, rng, 0.0), "png")
    # Without clips every damaged photo shows it.
    assert all(draw_story(1, s.index).photo_shows_damage for s in damaged)


# --- What the clips show ---


def test_clips_decode_as_their_story_says(tmp_path: Path) -> None:
    # Text and video only: nothing else to render, and the same clips.
    text_video = ["text", "video"]
    generate_dataset(tmp_path, 20, seed=2, knobs=COMPLETE, video_rate=1.0, modalities=text_video)
    with_track = 0
    for index, record in enumerate(read_manifest(tmp_path / BATCH)):
        clip = draw_story(2, index, video_rate=1.0, modalities=text_video).clip
        assert clip is not None and record["video"] == f"videos/{record['id']}.mp4"
        data = (tmp_path / BATCH / record["video"]).read_bytes()
        boxes = _top_boxes(data)  # faststart: the index comes before the frames
        assert boxes[0] == b"ftyp" and boxes.index(b"moov") < boxes.index(b"mdat")
        decoded = _decode(data)
        assert decoded["codec"] == "h264" and decoded["fps"] == VIDEO_FPS
        assert decoded["frames"].shape == (clip.n_frames, CLIP_SIZE, CLIP_SIZE, 3)
        assert decoded["announced"] == clip.n_frames
        assert CLIP_SECONDS_RANGE[0] <= decoded["seconds"] <= CLIP_SECONDS_RANGE[1]
        story = draw_story(2, index, video_rate=1.0, modalities=text_video)
        assert story.clip == draw_story(2, index, video_rate=1.0).clip
        if clip.voice_track:
            with_track += 1
            assert decoded["audio_codec"] == "aac" and decoded["audio_rate"] == story.audio_rate
            assert clip.seconds >= story.audio_seconds  # the whole note fits
        else:
            assert decoded["audio_rate"] is None
    assert 0 < with_track < 20
    # The platform's own decoder reads every clip (and the voice track as audio).
    spec = load_dataset_spec(tmp_path)
    assert reference_rejects(tmp_path / BATCH, spec) == {}
    video = modalities.get("video")
    record = next(r for r in read_manifest(tmp_path / BATCH) if r["video"])
    reading = video.read(
        (tmp_path / BATCH / record["video"]).read_bytes(), spec.media_bounds().video, MediaConfig()
    )
    assert reading.inputs["video"].shape[1:] == (64, 64, 3)


def test_damage_shows_only_in_the_back_frames() -> None:
    damaged = [s for i in range(60) if (s := draw_story(3, i, video_rate=1.0)).damaged][:8]
    assert damaged
    for story in damaged:
        frames = render_frames(story, item_rng(3, story.index, Stream.VIDEO_RENDER), 0.0)
        intact = render_frames(
            dataclasses.replace(story, damaged=False),
            item_rng(3, story.index, Stream.VIDEO_RENDER),
            0.0,
        )
        differ = [k for k in range(len(frames)) if not np.array_equal(frames[k], intact[k])]
        # Every other frame is the intact item's, pixel for pixel.
        assert set(differ) <= set(story.damage_frames) and len(differ) >= 2
        # Where the damage shows, it is dark (cracks, a dark-rimmed chunk, a dent).
        shown = list(story.damage_frames)
        assert _dark_share(frames[shown]).mean() > _dark_share(intact[shown]).mean()


def test_damage_is_visible_in_the_decoded_clips(tmp_path: Path) -> None:
    generate_dataset(tmp_path, 30, seed=5, knobs=COMPLETE, video_rate=1.0, modalities=["video"])
    shown, elsewhere = [], []
    for index, record in enumerate(read_manifest(tmp_path / BATCH)):
        story = draw_story(5, index, video_rate=1.0)
        if not story.damaged:
            continue
        frames = _decode((tmp_path / BATCH / record["video"]).read_bytes())["frames"]
        intact = render_frames(
            dataclasses.replace(story, damaged=False),
            item_rng(5, index, Stream.VIDEO_RENDER),
            0.0,
        )
        intact = _decode(encode_clip(intact))["frames"]
        # Through the lossy codec too: more dark pixels than the intact clip exactly where
        # the damaged back faces the camera, and the same elsewhere.
        lift = _dark_share(frames) - _dark_share(intact)
        back = np.zeros(len(frames), dtype=bool)
        back[list(story.damage_frames)] = True
        shown.append(lift[back].mean())
        elsewhere.append(np.abs(lift[~back]).mean())
    assert len(shown) >= 4
    assert min(shown) > 0 and np.mean(shown) > 0.003
    assert np.mean(elsewhere) < np.mean(shown) / 5


def test_image_shift_drifts_the_clip_frames_like_the_photos() -> None:
    story = draw_story(0, 1, video_rate=1.0)
    frames = {
        shift: render_frames(story, item_rng(0, 1, Stream.VIDEO_RENDER), shift).astype(float)
        for shift in (0.0, 0.6)
    }
    assert frames[0.6].mean() < frames[0.0].mean() - 10  # dimmer
    red_minus_blue = {k: (f[..., 0] - f[..., 2]).mean() for k, f in frames.items()}
    assert red_minus_blue[0.6] > red_minus_blue[0.0] + 10  # warmer


def test_a_clip_is_also_written_as_webm() -> None:
    story = draw_story(0, 0, video_rate=1.0)
    assert story.clip is not None
    voice = render_voice(
        story, item_rng(0, 0, Stream.AUDIO), item_rng(0, 0, Stream.AUDIO_NOISE), 0.0
    )
    clips = {
        container: render_clip(
            story, item_rng(0, 0, Stream.VIDEO_RENDER), 0.0, voice=voice, container=container
        )
        for container in ("mp4", "webm")
    }
    webm = clips["webm"]
    assert webm[:4] == b"\x1a\x45\xdf\xa3"  # EBML
    assert webm == render_clip(
        story, item_rng(0, 0, Stream.VIDEO_RENDER), 0.0, voice=voice, container="webm"
    )
    with av.open(io.BytesIO(webm)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"
        assert container.streams.audio[0].codec_context.sample_rate == 48000
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    mp4 = _decode(clips["mp4"])["frames"]
    assert len(frames) == len(mp4) == story.clip.n_frames
    # The same pictures through two lossy codecs.
    assert np.abs(np.stack(frames).astype(float) - mp4).mean() < 6
    bound = MediaBounds().video
    for data in clips.values():
        assert modalities.get("video").decode(data, bound).has_audio


# --- [text, video] and bad records ---


def test_a_text_and_video_dataset_holds_only_those(tmp_path: Path) -> None:
    summary = generate_dataset(
        tmp_path,
        36,
        seed=1,
        video_rate=1.0,
        modalities=["video", "text"],
        knobs=GeneratorKnobs(corrupt_rate=0.4),
    )
    spec = load_dataset_spec(tmp_path)
    assert [m.value for m in spec.modalities] == ["text", "video"]
    assert set(summary.counts["modalities"]) == {"text", "video"}
    assert sorted(p.name for p in (tmp_path / BATCH).iterdir() if p.is_dir()) == ["videos"]
    lines = (tmp_path / BATCH / MANIFEST_FILE).read_bytes().splitlines()
    for number, line in enumerate(lines, 1):
        if f"line:{number}" in summary.expected_rejects:
            continue
        record = json.loads(line.decode("utf-8", errors="surrogateescape"))
        assert set(record) <= {"id", "text", "video", "labels", "created_at", "note"}
        if record["id"] not in summary.expected_rejects:
            assert set(record) == {"id", "text", "video", "labels", "created_at"}
            assert record["text"] is not None or record["video"] is not None
    kinds = set(summary.expected_rejects.values())
    assert not any(k.startswith(("image_", "audio_")) for k in kinds)
    assert reference_rejects(tmp_path / BATCH, spec) == summary.expected_rejects


def test_every_video_reject_reason_is_produced_and_checked(tmp_path: Path) -> None:
    cycle = bounds.reject_cycle(declared_modalities(None, 0.5))
    assert set(bounds.REJECT_CYCLE) < set(cycle)
    assert {r.value for r in cycle} == {r.value for r in RejectReason}
    # Nearly all corrupt: a duplicate id needs an earlier normal record to copy.
    summary = generate_dataset(
        tmp_path, 40, seed=2, video_rate=0.5, knobs=GeneratorKnobs(corrupt_rate=0.9)
    )
    assert summary.n_corrupt >= len(cycle)
    assert set(summary.expected_rejects.values()) == {r.value for r in RejectReason}
    oracle = json.loads((tmp_path / BATCH / "_expected_rejects.json").read_text())
    assert oracle == summary.expected_rejects
    spec = load_dataset_spec(tmp_path)
    assert reference_rejects(tmp_path / BATCH, spec) == summary.expected_rejects
    # The platform's decoder gives each video defect the same reason.
    video, bound = modalities.get("video"), spec.media_bounds().video
    records = {r["id"]: r for r in map(json.loads, _json_lines(tmp_path / BATCH)) if "id" in r}
    for key, reason in summary.expected_rejects.items():
        if reason not in VIDEO_KINDS:
            continue
        path = tmp_path / BATCH / records[key]["video"]
        assert reason != "video_missing" or not path.exists()
        if path.exists():
            with pytest.raises(MediaError) as caught:
                video.read(path.read_bytes(), bound, MediaConfig())
            assert caught.value.reason == reason, key


def _json_lines(batch_dir: Path) -> list[bytes]:
    lines = []
    for line in (batch_dir / MANIFEST_FILE).read_bytes().splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue
        lines.append(line)
    return lines


@pytest.mark.parametrize(
    ("video_rate", "names"),
    [
        (0.0, ["text", "video"]),  # video declared, no clips
        (0.5, ["text", "image"]),  # clips, video not declared
        (0.5, ["video"]),  # items without a clip would hold nothing
        (0.5, ["text", "smell"]),
        (0.5, []),
        (1.5, None),
    ],
)
def test_bad_video_arguments_are_refused(
    tmp_path: Path, video_rate: float, names: list[str] | None
) -> None:
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, 2, video_rate=video_rate, modalities=names)
    assert not (tmp_path / BATCH).exists()
