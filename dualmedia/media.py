"""Decoding and preprocessing of media, shared by ingestion (snapshots) and serving.

Both sides must turn a photo or a voice note into exactly the same tensor, so the
one implementation lives here: images become fixed-size RGB uint8 arrays, audio
becomes a fixed-size log-mel spectrogram (resampled from any rate). The parameters
are recorded in every snapshot and model archive (`MediaConfig`).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from scipy.signal import resample_poly

# Truncated images must fail loudly, never decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class MediaError(ValueError):
    """A media file cannot be used; `reason` is a contract.RejectReason value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MediaConfig:
    """How media become model inputs; stored with snapshots and models."""

    image_size: int = 64
    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int = 512
    hop_length: int = 320  # 20 ms
    max_audio_s: float = 4.0  # longer clips are cropped (centre), shorter ones padded

    @property
    def audio_frames(self) -> int:
        return int(self.max_audio_s * self.sample_rate) // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MediaConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


# ---- images ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # H x W x 3 uint8, original size
    width: int
    height: int


def decode_image(data: bytes) -> DecodedImage:
    """Decode JPEG/PNG/WebP bytes fully; MediaError(reason) when that is impossible."""
    if len(data) == 0:
        raise MediaError("image_empty", "image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError("image_undecodable", "not a decodable JPEG/PNG/WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc).lower()
        if "truncated" in text or "broken data stream" in text or "end of file" in text:
            raise MediaError("image_truncated", f"image data is truncated ({exc})") from None
        raise MediaError("image_undecodable", f"image cannot be decoded ({exc})") from None
    img = ImageOps.exif_transpose(img).convert("RGB")
    return DecodedImage(np.asarray(img, dtype=np.uint8), img.width, img.height)


def image_to_model_input(image: DecodedImage, config: MediaConfig) -> np.ndarray:
    """Resize (keeping aspect, centre crop) to image_size x image_size RGB uint8."""
    img = Image.fromarray(image.pixels)
    size = config.image_size
    img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def image_stats(image: DecodedImage) -> dict[str, float]:
    """Summary statistics for data-quality monitoring."""
    px = image.pixels.astype(np.float32)
    return {
        "image_width": float(image.width),
        "image_height": float(image.height),
        "image_brightness": float(px.mean() / 255.0),
        "image_saturation": float((px.max(axis=2) - px.min(axis=2)).mean() / 255.0),
    }


# ---- audio ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # mono float32 in [-1, 1], at `sample_rate`
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def wav_missing_bytes(data: bytes) -> int:
    """For a RIFF/WAVE file, how many bytes its data chunk claims beyond the file's end.

    libsndfile quietly shortens a truncated WAV to what is there, so the header has
    to be read here to notice that the file was cut."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk_id == b"data":
            return max(0, pos + 8 + size - len(data))
        pos += 8 + size + (size & 1)
    return 0


def decode_audio(data: bytes) -> DecodedAudio:
    """Decode WAV/FLAC/OGG bytes to mono float32; MediaError(reason) when impossible."""
    if len(data) == 0:
        raise MediaError("audio_undecodable", "audio file is empty (0 bytes)")
    missing = wav_missing_bytes(data)
    if missing:
        raise MediaError(
            "audio_truncated", f"audio is truncated: the WAV header promises {missing} more bytes"
        )
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            expected = f.frames
            samples = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise MediaError(
            "audio_undecodable", f"not a decodable WAV/FLAC/OGG file ({exc})"
        ) from None
    if expected > 0 and len(samples) < expected:
        raise MediaError(
            "audio_truncated",
            f"audio is truncated: header says {expected} frames, file holds {len(samples)}",
        )
    return DecodedAudio(samples.mean(axis=1).astype(np.float32), int(rate))


def resample(audio: DecodedAudio, rate: int) -> DecodedAudio:
    if audio.sample_rate == rate:
        return audio
    g = np.gcd(audio.sample_rate, rate)
    out = resample_poly(audio.samples, rate // g, audio.sample_rate // g).astype(np.float32)
    return DecodedAudio(out, rate)


def audio_stats(audio: DecodedAudio) -> dict[str, float]:
    """Summary statistics for data quality and monitoring."""
    x = audio.samples
    rms = float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
    return {
        "audio_duration_s": audio.duration_s,
        "audio_sample_rate": float(audio.sample_rate),
        "audio_rms_db": 20.0 * float(np.log10(max(rms, 1e-10))),
        "audio_peak": float(np.max(np.abs(x))) if len(x) else 0.0,
        "audio_clipped_fraction": float(np.mean(np.abs(x) >= 0.999)) if len(x) else 0.0,
    }


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular mel filters (Slaney-style mel scale), shape n_mels x (n_fft//2+1)."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(
        hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate / 2)), n_mels + 2
    )
    hz_points = mel_to_hz(mel_points)
    bank = np.zeros((n_mels, len(fft_freqs)), dtype=np.float32)
    for i in range(n_mels):
        lo, mid, hi = hz_points[i], hz_points[i + 1], hz_points[i + 2]
        rising = (fft_freqs - lo) / max(mid - lo, 1e-6)
        falling = (hi - fft_freqs) / max(hi - mid, 1e-6)
        bank[i] = np.maximum(0.0, np.minimum(rising, falling))
    return bank


def log_mel(audio: DecodedAudio, config: MediaConfig) -> tuple[np.ndarray, int]:
    """Fixed-size log-mel spectrogram (n_mels x audio_frames, float32) and the number of
    frames that hold real audio (the rest is padding)."""
    x = resample(audio, config.sample_rate).samples
    max_len = int(config.max_audio_s * config.sample_rate)
    if len(x) > max_len:  # centre crop
        start = (len(x) - max_len) // 2
        x = x[start : start + max_len]
    valid = min(config.audio_frames, len(x) // config.hop_length + 1)
    x = np.pad(x, (0, max_len - len(x)))
    pad = config.n_fft // 2
    x = np.pad(x, (pad, pad), mode="reflect")
    n_frames = config.audio_frames
    idx = np.arange(config.n_fft)[None, :] + config.hop_length * np.arange(n_frames)[:, None]
    frames = x[idx] * np.hanning(config.n_fft).astype(np.float32)[None, :]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels) @ power.T
    spec = np.log(mel + 1e-6).astype(np.float32)
    spec[:, valid:] = np.log(1e-6)
    return spec, valid
