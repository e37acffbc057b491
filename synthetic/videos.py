"""Product clips: the photo's product turning on a turntable while the camera pans over it.

The scene is drawn with the photo's pieces (images.py: background, product, damage, lighting,
drift) and then animated. The product turns about its vertical axis: its drawn width follows
|cos(angle)| and the face shades a little at grazing angles. Its back (the mirror image,
which carries a damaged item's damage) faces the camera on one run of frames the story
chooses (`ClipStory.back_frames`), its front (the product as the photo draws it) on all the
others, so the damage shows only in those frames. The camera pans left or
right by 6-12 px (half to all of `PAN_MARGIN`) over the clip, at sub-pixel steps.

Encoded as H.264 (yuv420p) in MP4 with the index (moov) at the front, or VP9 in WebM, with the
voice note as a mono AAC (MP4) or Opus (WebM) track when the story says so. The encoders run
single-threaded with fixed settings and the muxers in bit-exact mode, so the same frames give
the same bytes.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.signal import resample_poly

from synthetic.images import (
    apply_image_shift,
    draw_background,
    draw_damage,
    draw_product,
    light_map,
    product_colour,
)
from synthetic.story import VIDEO_FPS, ClipStory, ItemStory

CLIP_SIZE = 96  # frames are CLIP_SIZE x CLIP_SIZE
# The scene is wider than the frame by this much on each side: room for the camera to pan.
PAN_MARGIN = 12
_SCENE = CLIP_SIZE + 2 * PAN_MARGIN
_LAYER = 96  # product layers are drawn at 2x (images._CANVAS = 192) and scaled to this
# A product seen edge-on is still this share of its width (a turntable cutout has a thickness).
_EDGE_ON_WIDTH = 0.06
# A face seen at a grazing angle is darker: brightness 1 - _GRAZING_SHADE * (1 - |cos|).
_GRAZING_SHADE = 0.3
_SHADOW_STRENGTH = 0.35
# Damage lines twice as wide as in the photo: the frames are smaller still once a model scales
# them (64 px by default) and the face is squeezed as it turns.
_DAMAGE_STROKE = 2

# Encoder settings: fixed, single-threaded, so the bytes depend only on the pictures.
X264_OPTIONS = {
    "preset": "veryfast",
    "crf": "20",
    "threads": "1",
    # A short lookahead: these clips are a few dozen frames, and x264 starts faster.
    "x264-params": "rc-lookahead=4:bframes=2",
}


@cache
def _x264_options() -> dict[str, str]:
    """X264_OPTIONS, and on a CPU with AVX-512 x264's AVX2 code instead.

    x264's AVX-512 code paths read uninitialised memory: the same frames then encode to
    different bytes from run to run (seen with libx264 core 165). Its AVX2, AVX and SSE4.2
    paths give identical bytes to each other, so capping it at AVX2 keeps the clips the same
    on every x86 machine. Without /proc/cpuinfo (not Linux) x264 chooses for itself."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        flags = set()
    if "avx512f" in flags and "avx2" in flags:
        return {**X264_OPTIONS, "x264-params": X264_OPTIONS["x264-params"] + ":asm=AVX2"}
    return dict(X264_OPTIONS)


VP9_OPTIONS = {
    "deadline": "realtime",
    "cpu-used": "8",
    "crf": "32",
    "b": "0",
    "threads": "1",
    "row-mt": "0",
}
OPUS_RATE = 48000  # Opus in WebM always runs at 48 kHz
CONTAINERS = ("mp4", "webm")
# ISO boxes whose children hold the chunk offsets that moving the index must patch.
_ISO_CONTAINER_BOXES = (b"moov", b"trak", b"mdia", b"minf", b"stbl")


def _turn_angle(clip: ClipStory, k: int) -> float:
    """The product's angle at frame k: 0 is the front facing the camera; the back faces it
    (cos < 0) exactly on back_frames, as the turntable turns at one speed."""
    start, stop = clip.back_frames
    return math.pi / 2 + math.pi * (k - start + 0.5) / (stop - start)


def render_frames(
    story: ItemStory, rng: np.random.Generator, image_shift: float, clip: ClipStory | None = None
) -> np.ndarray:
    """The clip's frames, uint8 [n_frames, CLIP_SIZE, CLIP_SIZE, 3] RGB.

    `clip` defaults to the story's own. Every draw that places the scene comes before the
    damage's draws, so a damaged item's frames outside `story.damage_frames` are exactly those
    of the same item undamaged.
    """
    clip = clip or story.clip
    if clip is None:
        raise ValueError(f"item {story.index} has no clip")
    background = draw_background(rng, _SCENE).astype(np.float32)
    colour = product_colour(story, rng)
    front = draw_product(story.category, colour, rng.uniform(0.75, 1.1))
    offset = rng.integers(-6, 7, 2)
    # Lighting and drift multiply every pixel, so both are one per-pixel, per-channel factor.
    lit = apply_image_shift(light_map(rng, _SCENE)[..., None] * np.ones(3), image_shift)
    lit = lit.astype(np.float32)
    pan_px = rng.uniform(0.5, 1.0) * PAN_MARGIN
    back = front.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # the other side, seen from behind
    if story.damaged:  # last: the draws above are the same for the item undamaged
        draw_damage(back, rng, colour, stroke=_DAMAGE_STROKE)
    faces, shadows = [], []
    for face in (front, back):
        # Drawn at 2x and halved by 2x2 means (anti-aliased like the photo, and cheaper than
        # its Lanczos), with premultiplied alpha ("RGBa"): what compositing needs, and what
        # PIL resizes directly. Upright: a product on a turntable does not tilt.
        small = face.convert("RGBa").reduce(2)
        faces.append(small)
        shadows.append(small.getchannel("a").filter(ImageFilter.GaussianBlur(3)))

    top = (_SCENE - _LAYER) // 2 + int(offset[1])
    rows = slice(PAN_MARGIN, PAN_MARGIN + CLIP_SIZE)
    frames = np.empty((clip.n_frames, CLIP_SIZE, CLIP_SIZE, 3), dtype=np.uint8)
    for k in range(clip.n_frames):
        cos = math.cos(_turn_angle(clip, k))
        side = 1 if cos < 0 else 0
        width = max(2, round(_LAYER * max(abs(cos), _EDGE_ON_WIDTH)))
        left = (_SCENE - width) // 2 + int(offset[0])
        squeezed = np.asarray(
            faces[side].resize((width, _LAYER), Image.Resampling.BILINEAR), dtype=np.float32
        )
        squeezed_shadow = np.asarray(
            shadows[side].resize((width, _LAYER), Image.Resampling.BILINEAR), dtype=np.float32
        )
        scene = background.copy()
        # The shadow falls a little below and to the right of the product.
        scene[top + 3 : top + 3 + _LAYER, left + 2 : left + 2 + width] *= (
            1.0 - (_SHADOW_STRENGTH / 255.0) * squeezed_shadow
        )[..., None]
        # Premultiplied colour over the scene; a face at a grazing angle is darker.
        shade = 1.0 - _GRAZING_SHADE * (1.0 - abs(cos))
        region = scene[top : top + _LAYER, left : left + width]
        region *= 1.0 - squeezed[..., 3:4] * (1.0 / 255.0)
        region += squeezed[..., :3] * shade
        # The camera: a window sliding over the scene, sub-pixel (linear) between frames.
        x0 = PAN_MARGIN + clip.pan * pan_px * (k / max(1, clip.n_frames - 1) - 0.5)
        column = math.floor(x0)
        cols = slice(column, column + CLIP_SIZE + 1)
        window = scene[rows, cols] * lit[rows, cols]
        frac = x0 - column
        window = window[:, :-1] * (1.0 - frac) + window[:, 1:] * frac
        frames[k] = np.clip(window + 0.5, 0, 255).astype(np.uint8)  # rounded: all >= 0
    return frames


def _iso_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of the ISO boxes laid end to end in data[start:end]."""
    end = len(data) if end is None else end
    boxes = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
        elif size == 0:
            size = end - pos
        if size < 8:
            raise ValueError(f"bad ISO box {kind!r} of size {size} at {pos}")
        boxes.append((kind, pos, size))
        pos += size
    return boxes


def _patch_chunk_offsets(moov: bytearray, start: int, end: int, shift: int) -> None:
    for kind, pos, size in _iso_boxes(bytes(moov), start, end):
        if kind in _ISO_CONTAINER_BOXES:
            _patch_chunk_offsets(moov, pos + 8, pos + size, shift)
        elif kind in (b"stco", b"co64"):
            count = struct.unpack(">I", moov[pos + 12 : pos + 16])[0]
            dtype = ">u4" if kind == b"stco" else ">u8"
            at = pos + 16
            width = 4 if kind == b"stco" else 8
            offsets = np.frombuffer(bytes(moov[at : at + count * width]), dtype=dtype)
            moov[at : at + count * width] = (offsets + shift).astype(dtype).tobytes()


def faststart(mp4: bytes) -> bytes:
    """The MP4 with its index (moov) moved in front of the media data, as `movflags=+faststart`
    does. FFmpeg's own pass reopens the output by file name, which an in-memory file has not;
    this one is pure bytes: move the box and shift every chunk offset by its size."""
    boxes = _iso_boxes(mp4)
    kinds = [kind for kind, _, _ in boxes]
    if kinds[:1] != [b"ftyp"]:
        raise ValueError("not an MP4 from the muxer: it does not start with an ftyp box")
    if b"moov" not in kinds or b"mdat" not in kinds or kinds.index(b"moov") < kinds.index(b"mdat"):
        return mp4
    _, moov_at, moov_size = boxes[kinds.index(b"moov")]
    moov = bytearray(mp4[moov_at : moov_at + moov_size])
    _patch_chunk_offsets(moov, 8, moov_size, moov_size)
    head = [mp4[pos : pos + size] for kind, pos, size in boxes if kind == b"ftyp"]
    rest = [mp4[pos : pos + size] for kind, pos, size in boxes if kind not in (b"ftyp", b"moov")]
    return b"".join([*head, bytes(moov), *rest])


def encode_clip(
    frames: Sequence[np.ndarray] | np.ndarray,
    fps: int | Fraction = VIDEO_FPS,
    *,
    container: str = "mp4",
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
) -> bytes:
    """RGB uint8 frames (all one even-sided size) as a clip file, in memory, deterministically.

    mp4: H.264 yuv420p, index first (faststart); `audio` (mono floats in [-1, 1] at
    `sample_rate`) as AAC at its own rate. webm: VP9, audio as Opus at 48 kHz. No frames and
    some audio: a file with only the sound (no video stream).
    """
    import av  # PyAV: only the generator's video path needs it

    if container not in CONTAINERS:
        raise ValueError(f"unknown container {container!r}; use one of {', '.join(CONTAINERS)}")
    if audio is not None and sample_rate is None:
        raise ValueError("audio needs its sample_rate")
    if len(frames) == 0 and audio is None:
        raise ValueError("a clip needs frames or audio")
    buffer = io.BytesIO()
    # bitexact: no muxer version string or random ids in the container.
    with av.open(buffer, "w", format=container, options={"fflags": "+bitexact"}) as out:
        stream = None
        if len(frames):
            codec, options = (
                ("libx264", _x264_options()) if container == "mp4" else ("libvpx-vp9", VP9_OPTIONS)
            )
            stream = out.add_stream(codec, rate=Fraction(fps), options=dict(options))
            height, width = np.asarray(frames[0]).shape[:2]
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1
        track = None
        if audio is not None and sample_rate is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
            if container == "webm":
                common = math.gcd(OPUS_RATE, sample_rate)
                resampled = resample_poly(samples, OPUS_RATE // common, sample_rate // common)
                samples = np.clip(resampled, -1.0, 1.0).astype(np.float32)
                sample_rate = OPUS_RATE
            # The fast AAC coder: twice as fast as the default, plenty for a voice note.
            track = out.add_stream(
                "aac" if container == "mp4" else "libopus",
                rate=sample_rate,
                options={"aac_coder": "fast"} if container == "mp4" else {},
            )
            track.layout = "mono"
        if stream is not None:
            for pixels in frames:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
                for packet in stream.encode(picture):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        if track is not None:
            sound = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
            sound.sample_rate = sample_rate
            for packet in track.encode(sound):
                out.mux(packet)
            for packet in track.encode():
                out.mux(packet)
    data = buffer.getvalue()
    return faststart(data) if container == "mp4" else data


def render_clip(
    story: ItemStory,
    rng: np.random.Generator,
    image_shift: float,
    *,
    voice: np.ndarray | None = None,
    sample_rate: int | None = None,
    container: str = "mp4",
    clip: ClipStory | None = None,
) -> bytes:
    """The item's clip file: `render_frames` encoded, with `voice` (the item's voice note at
    `sample_rate`, default the story's audio rate) as its audio track when given."""
    frames = render_frames(story, rng, image_shift, clip)
    return encode_clip(
        frames,
        VIDEO_FPS,
        container=container,
        audio=voice,
        sample_rate=sample_rate or story.audio_rate,
    )
