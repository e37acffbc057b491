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

import base64
import io
import struct
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from dualmedia.modalities.audio import SPEC as AUDIO
from dualmedia.modalities.audio import DecodedAudio
from dualmedia.modalities.base import EncoderConfig, MediaError, ModalitySpec, Reading, Section

# Containers by their first bytes: an ISO base media file (MP4, MOV) names its first box
# at offset 4; Matroska/WebM starts with the EBML magic. Anything else is refused before
# FFmpeg (which would happily probe dozens of other formats) ever sees it.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_FFMPEG_FORMAT = {"mp4": "mp4", "webm": "matroska"}  # demuxer to force, by sniffed kind


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


class VideoEncoder(EncoderConfig):
    """The per-frame ViT (the image trunk's architecture; `pretrained` loads a frame
    encoder like the image one) and a small temporal transformer over the frame tokens."""

    num_layers: int = 2
    patch_size: int = 16  # 16 tokens a 64 x 64 frame: 8 frames cost about 2 photos
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
        lo, hi = bounds.min_side, bounds.max_side
        if not (lo <= width <= hi and lo <= height <= hi):
            raise MediaError(
                "video_size_out_of_bounds",
                f"video frames are {width}x{height} px; each side must be within {lo}..{hi}",
            )
        if width * height > bounds.max_pixels:
            raise MediaError(
                "video_size_out_of_bounds",
                f"video frames are {width}x{height} = {width * height} px; "
                f"the bound is {bounds.max_pixels} px",
            )
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

    def read(self, value: Any, bounds: VideoBounds, media: Any) -> Reading:
        probe = self.decode(value, bounds)
        config: VideoPreprocess = media.video
        frames, audio = sample_clip(probe, config, want_audio=config.audio_from_track)
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
        import torch

        c = media.video
        out = np.zeros((len(items), c.frames, c.size, c.size, 3), dtype=np.uint8)
        for i, item in enumerate(items):
            if item is not None:
                out[i] = np.asarray(item)
        return torch.from_numpy(out)

    def select(self, batch_input: Any, rows: Any) -> Any:
        return batch_input[rows.to(batch_input.device)]

    def augment(self, item: np.ndarray, rng: np.random.Generator, config: Any = None) -> np.ndarray:
        """The image modality's variation, the same for every frame of the clip (a camera
        does not jump between frames): a small translation, and a horizontal flip unless
        the data forbids it (`flip: false`)."""
        max_shift = 4
        flip = True if config is None else bool(getattr(config, "flip", True))
        out = np.asarray(item)
        if flip and rng.random() < 0.5:
            out = out[:, :, ::-1]
        dy, dx = rng.integers(-max_shift, max_shift + 1, 2)
        return np.ascontiguousarray(np.roll(out, shift=(int(dy), int(dx)), axis=(1, 2)))

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
        frames = [np.full((32, 32, 3), 40 + 20 * i, dtype=np.uint8) for i in range(8)]
        return base64.b64encode(encode_clip(frames, fps=8)).decode()

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
    targets = [(k + 0.5) * probe.duration_s / n for k in range(n)]
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


def encode_clip(
    frames: list[np.ndarray],
    fps: int,
    container: str = "mp4",
    audio: DecodedAudio | None = None,
) -> bytes:
    """Encode RGB frames (and an optional mono track) as H.264/AAC in MP4 (index first,
    `faststart`) or VP9/Opus in WebM, deterministically. Examples, tests and the generator
    use it; FFmpeg's faststart pass needs a real file, hence the temporary one."""
    import av

    video_codec, audio_codec = (
        ("libx264", "aac") if container == "mp4" else ("libvpx-vp9", "libopus")
    )
    height, width = frames[0].shape[:2]
    # bitexact: no encoder version strings or random segment ids, so the bytes repeat.
    options = {"fflags": "+bitexact"}
    if container == "mp4":
        options["movflags"] = "+faststart"
    with tempfile.TemporaryDirectory(prefix="dualmedia-clip-") as tmp:
        path = Path(tmp) / f"clip.{container}"
        with av.open(str(path), "w", format=container, options=options) as out:
            stream = out.add_stream(video_codec, rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1  # deterministic bytes
            track = None
            if audio is not None:
                rate = audio.sample_rate if container == "mp4" else 48000
                track = out.add_stream(audio_codec, rate=rate)
                track.layout = "mono"
            for pixels in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
            if track is not None and audio is not None:
                from dualmedia.modalities.audio import resample

                samples = resample(audio, track.rate).samples
                frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
                frame.sample_rate = track.rate
                for packet in track.encode(frame):
                    out.mux(packet)
                for packet in track.encode():
                    out.mux(packet)
        return path.read_bytes()


SPEC = VideoSpec()
