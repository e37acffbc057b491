"""Video (short clips): MP4/MOV (H.264 and whatever else FFmpeg decodes in them) and WebM
files, checked by content, any frame rate and size within the bounds, with or without an
audio track. Decoded with PyAV, which ships its own FFmpeg libraries.

The model input is `frames` frames sampled uniformly in time, each scaled and centre-cropped
to `size` x `size` RGB (the image modality's preprocessing, per frame). Duration, frame size
and frame count are checked from the container before any frame is decoded; only the
sampled frames are converted and kept, never the whole clip. The audio track, when there is
one, becomes the item's audio (the audio modality's log-mel) if the record has no audio of
its own and the dataset declares audio (`audio_from_track`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from dualmedia.modalities.audio import SPEC as AUDIO
from dualmedia.modalities.audio import DecodedAudio
from dualmedia.modalities.base import EncoderConfig, MediaError, ModalitySpec, Reading, Section
from dualmedia.modalities.image import (
    EFFICIENTNET_LITE0,
    check_picture_size,
    picture_size,
    shift_and_flip,
    stack_pixels,
)

# Containers by their first bytes: an ISO base media file (MP4, MOV) names its first box
# at offset 4; Matroska/WebM starts with the EBML magic. Anything else is refused before
# FFmpeg (which would happily probe dozens of other formats) ever sees it.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_FFMPEG_FORMAT = {"mp4": "mp4", "webm": "matroska"}  # demuxer to force, by sniffed kind


# The smoke test's clip: 8 frames of 32 x 32 grey getting brighter, 1 s of H.264 in MP4
# (made with synthetic.videos.encode_clip; the library does not encode video).
_EXAMPLE_CLIP = (
    "AAAAIGZ0eXBpc29tAAACAGlzb21pc28yYXZjMW1wNDEAAAMqbW9vdgAAAGxtdmhkAAAAAAAAAAAAAAAAAAAD6AAA"
    "A+gAAQAAAQAAAAAAAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAgAAAnl0cmFrAAAAXHRraGQAAAADAAAAAAAAAAAAAAABAAAAAAAAA+gAAAAAAAAAAAAA"
    "AAAAAAAAAAEAAAAAAAAAAAAAAAAAAAABAAAAAAAAAAAAAAAAAABAAAAAACAAAAAgAAAAAAAkZWR0cwAAABxlbHN0"
    "AAAAAAAAAAEAAAPoAAAQAAABAAAAAAHxbWRpYQAAACBtZGhkAAAAAAAAAAAAAAAAAABAAAAAQABVxAAAAAAALWhk"
    "bHIAAAAAAAAAAHZpZGUAAAAAAAAAAAAAAABWaWRlb0hhbmRsZXIAAAABnG1pbmYAAAAUdm1oZAAAAAEAAAAAAAAA"
    "AAAAACRkaW5mAAAAHGRyZWYAAAAAAAAAAQAAAAx1cmwgAAAAAQAAAVxzdGJsAAAArHN0c2QAAAAAAAAAAQAAAJxh"
    "dmMxAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAACAAIABIAAAASAAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAGP//AAAAMmF2Y0MBZAAK/+EAFmdkAAqs2UloQAAAAwBAAAAEA8SJZYABAAVo74bywP34+AAA"
    "AAAUYnRydAAAAAAAABv4AAAAAAAAABhzdHRzAAAAAAAAAAEAAAAIAAAIAAAAABRzdHNzAAAAAAAAAAEAAAABAAAA"
    "GGN0dHMAAAAAAAAAAQAAAAgAABAAAAAAHHN0c2MAAAAAAAAAAQAAAAEAAAAIAAAAAQAAADRzdHN6AAAAAAAAAAAA"
    "AAAIAAACvQAAABwAAAAcAAAAHAAAABsAAAAbAAAAHAAAABwAAAAUc3RjbwAAAAAAAAABAAADWgAAAD11ZHRhAAAA"
    "NW1ldGEAAAAAAAAAIWhkbHIAAAAAAAAAAG1kaXJhcHBsAAAAAAAAAAAAAAAACGlsc3QAAAAIZnJlZQAAA4dtZGF0"
    "AAACnQYF//+Z3EXpvebZSLeWLNgg2SPu73gyNjQgLSBjb3JlIDE2NSAtIEguMjY0L01QRUctNCBBVkMgY29kZWMg"
    "LSBDb3B5bGVmdCAyMDAzLTIwMjUgLSBodHRwOi8vd3d3LnZpZGVvbGFuLm9yZy94MjY0Lmh0bWwgLSBvcHRpb25z"
    "OiBjYWJhYz0xIHJlZj0xIGRlYmxvY2s9MTowOjAgYW5hbHlzZT0weDM6MHgxMTMgbWU9aGV4IHN1Ym1lPTIgcHN5"
    "PTEgcHN5X3JkPTEuMDA6MC4wMCBtaXhlZF9yZWY9MCBtZV9yYW5nZT0xNiBjaHJvbWFfbWU9MSB0cmVsbGlzPTAg"
    "OHg4ZGN0PTEgY3FtPTAgZGVhZHpvbmU9MjEsMTEgZmFzdF9wc2tpcD0xIGNocm9tYV9xcF9vZmZzZXQ9MCB0aHJl"
    "YWRzPTEgbG9va2FoZWFkX3RocmVhZHM9MSBzbGljZWRfdGhyZWFkcz0wIG5yPTAgZGVjaW1hdGU9MSBpbnRlcmxh"
    "Y2VkPTAgYmx1cmF5X2NvbXBhdD0wIGNvbnN0cmFpbmVkX2ludHJhPTAgYmZyYW1lcz0yIGJfcHlyYW1pZD0yIGJf"
    "YWRhcHQ9MSBiX2JpYXM9MCBkaXJlY3Q9MSB3ZWlnaHRiPTEgb3Blbl9nb3A9MCB3ZWlnaHRwPTEga2V5aW50PTI1"
    "MCBrZXlpbnRfbWluPTggc2NlbmVjdXQ9NDAgaW50cmFfcmVmcmVzaD0wIHJjX2xvb2thaGVhZD00IHJjPWNyZiBt"
    "YnRyZWU9MSBjcmY9MjAuMCBxY29tcD0wLjYwIHFwbWluPTAgcXBtYXg9NjkgcXBzdGVwPTQgaXBfcmF0aW89MS40"
    "MCBhcT0xOjEuMDAAgAAAABhliIQAO//ifwXe/u+5NU3/+96MdujDnPkAAAAYQZohGId/1c38F25nf/hKh+H/Y/Nl"
    "Kse4AAAAGEGaQhiHf9XN/BduZ3/4SmCf/Y/NlKse4QAAABhBmmMYh3/VzfwXbmd/+EniD/2PzZSrHuAAAAAXQZqE"
    "GId/1c38F25nf/hGT/9j82Uqx7kAAAAXQZqlGId/1c38F25nf/hDrP9j82Uqx7kAAAAYQZrGGId/1c38F25nf/hJ"
    "2dv9j82Uqx7hAAAAGEGa5xiHf9XN/BduZ3/4Sl9z/Y/NlKse4Q=="
)


class VideoBounds(Section):
    min_duration_s: float = Field(0.1, ge=0.0)
    # A phone clip of a parcel is seconds long; longer clips are refused from the header.
    max_duration_s: float = Field(60.0, gt=0.0)
    max_frames: int = Field(3600, ge=1, description="frames the container announces")
    min_side: int = Field(16, ge=1)
    max_side: int = Field(4096, ge=1)
    max_pixels: int = Field(4096 * 2304, ge=1, description="width x height of one frame")
    max_bytes: int = Field(200 * 1024 * 1024, ge=1)


class VideoPreprocess(Section):
    frames: int = Field(8, ge=1, le=64, description="frames sampled uniformly in time")
    size: int = Field(64, ge=8, description="each frame: size x size RGB")
    # The clip's audio track as the item's audio when the record has none of its own.
    audio_from_track: bool = True
    # Training may mirror pictures left-right. Off by default: scans, digits and text lose
    # their meaning mirrored; a dataset of photos allows it in dataset.yaml.
    flip: bool = False


class VideoEncoder(EncoderConfig):
    """The frame encoder (the image trunk: a packaged ImageNet CNN by default, frozen, or
    a ViT from scratch with `pretrained: null`) and a small temporal transformer over the
    frame tokens, `hidden_size` wide."""

    # Measured on generated [text, video] data (600 items, same run length): zero-shot
    # category from clips 0.85 with the frozen EfficientNet-Lite0, 0.20 (chance) with a
    # ViT from scratch; 420 training clips do not teach a ViT the products' shapes.
    pretrained: str | None = EFFICIENTNET_LITE0
    trainable_layers: int | None = 0
    num_layers: int = 2  # the ViT's, when from scratch
    # The ViT's patch side; None: a quarter of the frame's side (4 x 4 tokens a frame at any
    # size: 8 frames cost about 2 photos).
    patch_size: int | None = None
    dropout: float = 0.1
    # True: the frames go through the image modality's trunk itself (same weights), when
    # the model has images; False: the video trunk has its own frame encoder.
    share_image_trunk: bool = False
    temporal_layers: int = Field(2, ge=0)
    temporal_heads: int = Field(4, ge=1)


@dataclass
class VideoProbe:
    """What the container says, checked against the bounds; nothing decoded yet."""

    data: bytes
    kind: str  # "mp4" or "webm"
    duration_s: float
    fps: float
    width: int
    height: int
    announced_frames: int  # from the header, or duration x fps when it does not say
    has_audio: bool


def _sniff(data: bytes) -> str:
    if len(data) >= 8 and data[4:8] in _ISO_BOXES:
        return "mp4"
    if data[:4] == _EBML_MAGIC:
        return "webm"
    raise MediaError("video_undecodable", "not an MP4, MOV or WebM file")


def iso_missing_bytes(data: bytes) -> int:
    """For an MP4/MOV file, how many bytes its top-level boxes claim beyond the file's end.

    A cut MP4 whose index (moov) comes last cannot even be opened, and FFmpeg only says
    "invalid data"; the box sizes tell that it was cut."""
    pos = 0
    while pos + 8 <= len(data):
        size = struct.unpack(">I", data[pos : pos + 4])[0]
        if size == 1 and pos + 16 <= len(data):  # 64-bit size follows the type
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:  # the box runs to the end of the file
            return 0
        if size < 8:
            return 0  # not a box structure we understand: let the decoder judge
        pos += size
    return max(0, pos - len(data))


class VideoSpec(ModalitySpec):
    name = "video"
    order = 3
    formats = ("MP4", "MOV", "WebM")
    reasons = (
        "video_missing",
        "video_undecodable",
        "video_truncated",
        "video_no_frames",
        "video_too_long",
        "video_size_out_of_bounds",
    )
    too_large_reason = "video_too_long"
    stat_columns = (
        "video_duration_s",
        "video_fps",
        "video_width",
        "video_height",
        "video_brightness",
    )
    presence_column = "video_duration_s"
    Bounds = VideoBounds
    Preprocess = VideoPreprocess
    Encoder = VideoEncoder

    # ---- decoding and bounds ----------------------------------------------------------------
    def decode(self, value: Any, bounds: VideoBounds) -> VideoProbe:
        """Open the container and check it against the bounds from its header alone."""
        import av

        data = self.file_bytes(value, bounds, "video_undecodable")
        kind = _sniff(data)
        if kind == "mp4" and (missing := iso_missing_bytes(data)):
            raise MediaError(
                "video_truncated", f"video is truncated: its boxes claim {missing} more bytes"
            )
        try:
            with av.open(io.BytesIO(data), format=_FFMPEG_FORMAT[kind]) as container:
                return self._probe(container, data, kind, bounds)
        except MediaError:
            raise
        except (av.FFmpegError, ValueError, OSError, MemoryError) as exc:
            raise MediaError("video_undecodable", f"video cannot be opened ({exc})") from None

    @staticmethod
    def _probe(container: Any, data: bytes, kind: str, bounds: VideoBounds) -> VideoProbe:
        if not container.streams.video:
            raise MediaError("video_no_frames", "the file has no video stream")
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        check_picture_size("video frames", width, height, bounds, "video_size_out_of_bounds")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = 0.0
        if duration <= 0.0 or fps <= 0.0:
            raise MediaError(
                "video_undecodable", "the video stream announces no duration or frame rate"
            )
        if duration > bounds.max_duration_s:
            raise MediaError(
                "video_too_long",
                f"video lasts {duration:.2f}s (from its header); the maximum is "
                f"{bounds.max_duration_s}s",
            )
        if duration < bounds.min_duration_s:
            raise MediaError(
                "video_no_frames",
                f"video lasts {duration:.3f}s; the minimum is {bounds.min_duration_s}s",
            )
        announced = int(stream.frames) or max(1, round(duration * fps))
        if announced > bounds.max_frames:
            raise MediaError(
                "video_too_long",
                f"video has {announced} frames (from its header); the maximum is "
                f"{bounds.max_frames}",
            )
        return VideoProbe(
            data=data,
            kind=kind,
            duration_s=duration,
            fps=fps,
            width=width,
            height=height,
            announced_frames=announced,
            has_audio=bool(container.streams.audio),
        )

    def read(
        self, value: Any, bounds: VideoBounds, media: Any, carry: Collection[str] = ()
    ) -> Reading:
        probe = self.decode(value, bounds)
        config: VideoPreprocess = media.video
        want_audio = config.audio_from_track and AUDIO.name in carry
        frames, audio = sample_clip(probe, config, want_audio=want_audio)
        stats = {**self.stats(probe), "video_brightness": float(frames.mean() / 255.0)}
        reading = Reading(inputs={self.name: frames}, stats={self.name: stats})
        if audio is not None:
            reading.inputs[AUDIO.name] = AUDIO.preprocess(audio, media)
            reading.stats[AUDIO.name] = AUDIO.stats(audio)
        return reading

    def stats(self, decoded: VideoProbe) -> dict[str, float]:
        """The header's statistics; `read` adds the sampled frames' brightness."""
        return {
            "video_duration_s": decoded.duration_s,
            "video_fps": decoded.fps,
            "video_width": float(decoded.width),
            "video_height": float(decoded.height),
        }

    def derive_media(
        self, stats: list[dict[str, float]], declared: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The frame size by the image rule (`picture_size`: 32 for clips of 32 x 32 or less,
        64 for a phone's), and no more sampled frames than the clips hold: the median
        clip's frame count (duration x rate) when that is below the default 8, so 0.4 s
        at 10 fps samples its 4 frames, not each of them twice."""
        probed = [s for s in stats if "video_width" in s]
        if not probed:
            return {}
        default = VideoPreprocess()
        sides = [min(s["video_width"], s["video_height"]) for s in probed]
        derived: dict[str, Any] = {"size": picture_size(sides, largest=default.size)}
        # Rounded, not truncated: 0.4 s x 10 fps may be 3.9999 in floats.
        held = round(float(np.median([s["video_duration_s"] * s["video_fps"] for s in probed])))
        if held < default.frames:
            derived["frames"] = max(1, held)
        return derived

    def preprocess(self, decoded: VideoProbe, media: Any) -> np.ndarray:
        return sample_clip(decoded, media.video, want_audio=False)[0]

    # ---- model input ------------------------------------------------------------------------
    def record_fields(self) -> list[tuple[str, str]]:
        return [("video", "binary")]  # uint8 [frames, size, size, 3]

    def to_record(self, item: np.ndarray) -> dict[str, Any]:
        return {"video": np.ascontiguousarray(item, dtype=np.uint8).tobytes()}

    def from_record(self, row: dict[str, Any], media: Any) -> np.ndarray | None:
        blob = row.get("video")
        if blob is None:
            return None
        c = media.video
        return np.frombuffer(blob, dtype=np.uint8).reshape(c.frames, c.size, c.size, 3)

    def collate(self, items: list[np.ndarray | None], media: Any) -> Any:
        c = media.video
        return stack_pixels(items, (c.frames, c.size, c.size, 3))

    def select(self, batch_input: Any, rows: Any) -> Any:
        return batch_input[rows.to(batch_input.device)]

    def augment(self, item: np.ndarray, rng: np.random.Generator, config: Any = None) -> np.ndarray:
        """The image modality's variation, the same for every frame of the clip."""
        return shift_and_flip(item, rng, config)

    # ---- monitoring and validation ----------------------------------------------------------
    def expectations(self, bounds: VideoBounds) -> list[tuple[str, dict[str, Any]]]:
        duration = {
            "column": "video_duration_s",
            "min_value": bounds.min_duration_s,
            "max_value": bounds.max_duration_s,
        }
        sides = [
            {"column": c, "min_value": bounds.min_side, "max_value": bounds.max_side}
            for c in ("video_width", "video_height")
        ]
        return [("ExpectColumnValuesToBeBetween", kw) for kw in (duration, *sides)]

    # ---- model ------------------------------------------------------------------------------
    def build_trunk(self, config: VideoEncoder, media: Any) -> Any:
        from dualmedia.modalities.trunks.video import VideoTrunk

        return VideoTrunk(config, media)

    # ---- synthetic data ---------------------------------------------------------------------
    def random_input(self, media: Any, rng: np.random.Generator) -> np.ndarray:
        c = media.video
        return rng.integers(0, 256, (c.frames, c.size, c.size, 3), dtype=np.uint8)

    def example_value(self) -> str:
        return _EXAMPLE_CLIP

    def preview(self, item: np.ndarray) -> tuple[str, Any]:
        return ("picture", np.asarray(item)[len(item) // 2])


def _fit(frame: Any, size: int) -> np.ndarray:
    """One decoded frame scaled (aspect kept) and centre-cropped to size x size RGB; FFmpeg
    scales it, so the full-size RGB frame is never made."""
    w, h = frame.width, frame.height
    scale = size / min(w, h)
    sw, sh = max(size, round(w * scale)), max(size, round(h * scale))
    rgb = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="BILINEAR")
    pixels = rgb.to_ndarray()
    top, left = (sh - size) // 2, (sw - size) // 2
    return pixels[top : top + size, left : left + size]


def sample_clip(
    probe: VideoProbe, config: VideoPreprocess, want_audio: bool
) -> tuple[np.ndarray, DecodedAudio | None]:
    """`config.frames` frames at uniform times (the middle of equal slices of the clip), as
    uint8 [frames, size, size, 3], and the audio track as mono samples when asked and there.

    Frames are decoded in order and only the sampled ones are converted and kept; the
    audio is decoded up to the clip's (bounded) duration."""
    import av

    n = config.frames
    # Less a microsecond: when a clip holds exactly `n` frames each sits half a frame before
    # its target, and float rounding (0.3 + 0.05 < 3.5 * 0.4 / 4) must not skip the last.
    targets = [(k + 0.5) * probe.duration_s / n - 1e-6 for k in range(n)]
    kept: list[np.ndarray] = []
    half_frame = 0.5 / probe.fps
    last_time = -1.0
    samples: list[np.ndarray] = []
    rate = 0
    decoded_frames = 0
    try:
        with av.open(io.BytesIO(probe.data), format=_FFMPEG_FORMAT[probe.kind]) as container:
            video = container.streams.video[0]
            video.thread_type = "AUTO"
            streams = [video]
            if want_audio and container.streams.audio:
                streams.append(container.streams.audio[0])
                resampler = av.AudioResampler(format="flt", layout="mono")
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        rate = frame.sample_rate
                        for mono in resampler.resample(frame):
                            samples.append(mono.to_ndarray().reshape(-1))
                        continue
                    decoded_frames += 1
                    time = float(frame.time) if frame.time is not None else last_time + 1e-3
                    last_time = time
                    while len(kept) < n and time + half_frame >= targets[len(kept)]:
                        kept.append(_fit(frame, config.size))
                if len(kept) == n and len(streams) == 1:
                    break
    except av.FFmpegError as exc:
        if not kept:
            raise MediaError("video_undecodable", f"video cannot be decoded ({exc})") from None
        raise MediaError(
            "video_truncated", f"video data ends after {decoded_frames} frames ({exc})"
        ) from None
    if decoded_frames == 0:
        raise MediaError("video_no_frames", "the video stream holds no decodable frame")
    # A clip that stops well before the duration its header announced was cut.
    if len(kept) < n and last_time + 2.0 / probe.fps < probe.duration_s * 0.9:
        raise MediaError(
            "video_truncated",
            f"video data ends at {last_time:.2f}s; its header announces {probe.duration_s:.2f}s",
        )
    while len(kept) < n:  # the last slice ended past the last frame (rounding): repeat it
        kept.append(kept[-1])
    audio = None
    if samples and rate:
        track = np.concatenate(samples).astype(np.float32)
        track = track[: int(probe.duration_s * rate) + rate]  # never more than the clip
        if len(track) and float(np.max(np.abs(track))) >= 1e-3:  # a silent track is no audio
            audio = DecodedAudio(np.clip(track, -1.0, 1.0), int(rate))
    return np.stack(kept), audio


SPEC = VideoSpec()
