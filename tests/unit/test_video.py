"""The video modality on real encoded files (made here with PyAV: H.264 in MP4, VP9 in
WebM): sampling in time, the audio track as the item's audio, every refusal reason, the
header-only refusal of a clip far too long, serving's 4xx, and the trunk (own or shared
frame encoder, saved and loaded)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from dualmedia import modalities
from dualmedia.contract import DatasetSpec
from dualmedia.modalities import MediaBounds, MediaConfig, MediaError
from dualmedia.modalities import video as video_module
from dualmedia.modalities.audio import DecodedAudio
from dualmedia.modalities.video import VideoBounds
from serving.protocol import BadRequest, parse_request
from synthetic.videos import encode_clip
from training.config import REPO_CONFIGS, load_train_config
from training.models.factory import build_fused_model, load_fused_model_dir, save_fused_model

MEDIA = MediaConfig()
BOUNDS = MediaBounds()
VIDEO = modalities.get("video")


def ramp_frames(n: int = 24, size: tuple[int, int] = (96, 72)) -> list[np.ndarray]:
    """Frames getting brighter in time (frame k is grey level 10 k), so the sampled frames
    say which moments were taken."""
    w, h = size
    return [np.full((h, w, 3), 10 * k % 250, dtype=np.uint8) for k in range(n)]


def tone(seconds: float = 3.0, rate: int = 16000) -> DecodedAudio:
    t = np.arange(int(seconds * rate)) / rate
    return DecodedAudio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


def with_track(container: str) -> bytes:
    track = tone()
    return encode_clip(
        ramp_frames(), 8, container=container, audio=track.samples, sample_rate=track.sample_rate
    )


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return {
        "mp4": with_track("mp4"),
        "webm": with_track("webm"),
        "silent_mp4": encode_clip(ramp_frames(), 8),
    }


@pytest.mark.parametrize("container", ["mp4", "webm"])
def test_a_clip_is_sampled_uniformly_in_time_and_its_track_is_the_audio(
    clips: dict[str, bytes], container: str
) -> None:
    reading = VIDEO.read(clips[container], BOUNDS.video, MEDIA, carry={"audio"})
    frames = reading.inputs["video"]
    assert frames.shape == (MEDIA.video.frames, MEDIA.video.size, MEDIA.video.size, 3)
    # 24 frames over 3 s, 8 samples: the middle of each 3-frame slice (frames 1, 4, ... 22).
    levels = frames.reshape(len(frames), -1).mean(axis=1)
    np.testing.assert_allclose(levels, [10 * (3 * k + 1) for k in range(8)], atol=12)
    stats = reading.stats["video"]
    assert stats["video_width"] == 96 and stats["video_height"] == 72
    assert stats["video_fps"] == pytest.approx(8.0)
    assert stats["video_duration_s"] == pytest.approx(3.0, abs=0.05)
    # The track is the audio modality's own model input, with its statistics.
    audio = reading.inputs["audio"]
    assert audio["logmel"].shape == (MEDIA.audio.n_mels, MEDIA.audio.frames)
    assert audio["valid_frames"] == pytest.approx(3.0 * 16000 / MEDIA.audio.hop_length, rel=0.05)
    assert reading.stats["audio"]["audio_duration_s"] == pytest.approx(3.0, abs=0.1)


def test_a_clip_without_a_track_has_no_audio(clips: dict[str, bytes]) -> None:
    reading = VIDEO.read(clips["silent_mp4"], BOUNDS.video, MEDIA, carry={"audio"})
    assert set(reading.inputs) == {"video"}


def test_the_records_own_audio_wins_and_the_track_needs_audio_declared(
    clips: dict[str, bytes],
) -> None:
    own = modalities.get("audio").read(
        base64.b64decode(modalities.get("audio").example_value()), BOUNDS.audio, MEDIA
    )
    from_clip = VIDEO.read(clips["mp4"], BOUNDS.video, MEDIA, carry={"audio"})
    # An item that has its own audio (or no audio trunk) never decodes the track.
    assert set(VIDEO.read(clips["mp4"], BOUNDS.video, MEDIA).inputs) == {"video"}
    item = modalities.item_reading({"audio": own, "video": from_clip}, ["video", "audio"])
    assert item.inputs["audio"] is own.inputs["audio"]
    item = modalities.item_reading({"video": from_clip}, ["video", "audio"])
    assert item.inputs["audio"] is from_clip.inputs["audio"]
    # A [text, video] dataset has no audio trunk: the track is not used.
    assert set(modalities.item_reading({"video": from_clip}, ["text", "video"]).inputs) == {"video"}
    # And a dataset may turn the track off.
    no_track = MediaConfig.from_dict({"video": {"audio_from_track": False}})
    assert set(VIDEO.read(clips["mp4"], BOUNDS.video, no_track, carry={"audio"}).inputs) == {
        "video"
    }


def audio_only_mp4() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = tone(1.0).samples[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda c: b"", "video_undecodable"),
        (lambda c: b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(64), "video_undecodable"),
        (lambda c: b"\x00\x00\x00\x18ftypisom" + bytes(200), "video_undecodable"),
        (lambda c: c["mp4"][: len(c["mp4"]) // 2], "video_truncated"),
        (lambda c: c["webm"][: len(c["webm"]) // 2], "video_truncated"),
        (lambda c: audio_only_mp4(), "video_no_frames"),
        (lambda c: encode_clip(ramp_frames(8, (12, 12)), 8), "video_size_out_of_bounds"),
    ],
    ids=["empty", "a-wav", "junk-after-ftyp", "cut-mp4", "cut-webm", "no-video-stream", "tiny"],
)
def test_a_bad_clip_is_refused_with_its_reason(clips: dict[str, bytes], make, reason: str) -> None:
    with pytest.raises(MediaError) as refused:
        VIDEO.read(make(clips), BOUNDS.video, MEDIA)
    assert refused.value.reason == reason, str(refused.value)
    assert reason in VIDEO.reasons


def test_a_clip_ten_times_too_long_is_refused_before_any_frame_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bounds = VideoBounds(max_duration_s=6.0)
    long_clip = encode_clip(ramp_frames(60, (16, 16)), 1)  # 60 s at 1 frame/s
    sampled: list[int] = []
    real = video_module.sample_clip
    monkeypatch.setattr(
        video_module, "sample_clip", lambda *a, **k: sampled.append(1) or real(*a, **k)
    )
    with pytest.raises(MediaError) as refused:
        VIDEO.read(long_clip, bounds, MEDIA)
    assert refused.value.reason == "video_too_long"
    assert "from its header" in str(refused.value)
    assert sampled == []
    # The same clip within bounds is decoded, through the same function.
    VIDEO.read(long_clip, VideoBounds(max_duration_s=120.0), MEDIA)
    assert sampled == [1]


def test_frame_size_and_frame_count_bounds_come_from_the_header() -> None:
    clip = encode_clip(ramp_frames(16, (64, 48)), 8)
    with pytest.raises(MediaError, match="each side must be within") as refused:
        VIDEO.read(clip, VideoBounds(max_side=32), MEDIA)
    assert refused.value.reason == "video_size_out_of_bounds"
    with pytest.raises(MediaError, match="16 frames") as refused:
        VIDEO.read(clip, VideoBounds(max_frames=10), MEDIA)
    assert refused.value.reason == "video_too_long"


def test_frame_size_and_count_follow_the_clips() -> None:
    """Derived from the clips' headers as ingestion derives them (decode, stats): small
    short clips are stored at 32 x 32 with the frames they hold, phone-sized ones at 64."""

    def derived(clips: list[bytes]) -> dict:
        return VIDEO.derive_media([VIDEO.stats(VIDEO.decode(c, BOUNDS.video)) for c in clips])

    short = [encode_clip(ramp_frames(4 + k % 2, (32, 24)), 10) for k in range(3)]
    assert derived(short) == {"size": 32, "frames": 4}  # 0.4-0.5 s at 10 fps
    media = MediaConfig.model_validate({"video": derived(short)})
    frames = VIDEO.read(short[0], BOUNDS.video, media).inputs["video"]
    assert frames.shape == (4, 32, 32, 3)
    # Each of the 4 frames once (grey levels 0, 10, 20, 30), none repeated.
    levels = frames.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [0, 10, 20, 30], atol=6)
    assert derived([encode_clip(ramp_frames(), 8)]) == {"size": MEDIA.video.size}
    # A header's duration rounded to the millisecond: 7 frames at 12 fps is 0.583 s, and
    # 0.583 x 12 = 6.996 still holds 7 frames.
    header = {"video_width": 32.0, "video_height": 32.0, "video_duration_s": 0.583}
    assert VIDEO.derive_media([{**header, "video_fps": 12.0}])["frames"] == 7
    assert VIDEO.derive_media([]) == {}


@pytest.mark.parametrize("size", [32, 64])
def test_a_frame_vit_from_scratch_cuts_any_derived_size_into_4_by_4_patches(size: int) -> None:
    from dualmedia.modalities.trunks.video import VideoTrunk

    config = VIDEO.Encoder(
        pretrained=None,
        trainable_layers=None,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        temporal_layers=1,
        temporal_heads=2,
    )
    assert config.patch_size is None  # follows the frame
    media = MediaConfig.model_validate({"video": {"size": size, "frames": 3}})
    trunk = VideoTrunk(config, media)
    assert trunk.model.config.patch_size == size // 4
    assert trunk(torch.zeros(2, 3, size, size, 3, dtype=torch.uint8)).shape == (2, 32)


def test_serving_answers_a_bad_clip_with_a_4xx_and_takes_a_good_one(
    clips: dict[str, bytes],
) -> None:
    good = {"video": base64.b64encode(clips["mp4"]).decode()}
    # embed embeds the value sent; insights predicts on the item, its voice track included.
    request = parse_request("embed", {"body": good}, MEDIA, ["text"], BOUNDS)
    assert request.inputs.modalities == ["video"]
    request = parse_request("insights", {"body": good}, MEDIA, ["text"], BOUNDS)
    assert request.inputs.modalities == ["audio", "video"]
    bad = {"video": base64.b64encode(clips["mp4"][:4000]).decode()}
    with pytest.raises(BadRequest) as refused:
        parse_request("embed", {"body": bad}, MEDIA, ["text"], BOUNDS)
    assert refused.value.status == 400
    assert refused.value.error == "video_truncated"
    assert "field 'video'" in str(refused.value)


def test_gx_expectations_bound_duration_and_frame_size() -> None:
    columns = {kw["column"] for _, kw in VIDEO.expectations(BOUNDS.video)}
    assert columns == {"video_duration_s", "video_width", "video_height"}


def video_spec(modality_names: list[str]) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "clips",
            "modalities": modality_names,
            "labels": {"sentiment": {"type": "categorical", "classes": ["bad", "good"]}},
        }
    )


@pytest.mark.parametrize("share", [False, True])
def test_the_video_trunk_embeds_clips_with_its_own_or_the_image_frame_encoder(
    tmp_path: Path, share: bool
) -> None:
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    config.encoders.video = config.encoders.video.model_copy(update={"share_image_trunk": share})
    torch.manual_seed(0)
    model = build_fused_model(video_spec(["text", "image", "video"]), MEDIA, config).eval()
    image_trunk, video_trunk = model.encoder.trunk("image"), model.encoder.trunk("video")
    image_params = {id(p) for p in image_trunk.parameters()}
    video_params = {id(p) for p in video_trunk.parameters()}
    assert bool(image_params & video_params) is False  # never registered twice
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(np.stack([VIDEO.random_input(MEDIA, rng) for _ in range(3)]))
    out = video_trunk(batch)
    assert out.shape == (3, video_trunk.hidden_size)
    # Shared: changing the image trunk's weights changes the clip's embedding.
    with torch.no_grad():
        for p in image_trunk.parameters():
            p.add_(0.5)
        changed = not torch.allclose(video_trunk(batch), out)
    assert changed is share
    # Saved and loaded (safetensors refuses shared tensors: none are saved twice).
    save_fused_model(model, tmp_path)
    loaded = load_fused_model_dir(tmp_path)
    torch.testing.assert_close(loaded.encoder.trunk("video")(batch), video_trunk(batch))


def test_a_text_and_video_model_has_only_those_trunks() -> None:
    config = load_train_config(REPO_CONFIGS / "tiny.yaml").model
    model = build_fused_model(video_spec(["text", "video"]), MEDIA, config)
    assert list(model.encoder.trunks) == ["text", "video"]
