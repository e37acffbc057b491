"""Speech-like voice notes whose prosody carries the speaker's true mood.

Not real words: a sequence of syllable-like voiced segments. The note opens with two words of a
toy lexicon, the product's colour and its name, each a fixed sequence of vowels (as a customer
says "my red mug ..."); the rest is babble of random vowels. Each syllable is a band-limited glottal
pulse train (all harmonics up to 0.45 x the sample rate), tilted by a one-pole low-pass (how
bright or harsh the voice is), shaped by three formant resonances of a random vowel, and given an
attack/decay envelope; some start with a short noise burst like a consonant. Syllables group into
words separated by pauses. The mood sets pitch level, pitch movement, tempo, loudness,
brightness and roughness; the speaker (register, tempo, loudness, vocal tract) and the strength of
the expression vary on top, so no single cue separates the moods.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from synthetic.story import ItemStory, Speaker

# Peak level a normal voice note never exceeds, so no sample sits at full scale.
MAX_PEAK = 0.9
# Background noise always present (about -70 dBFS), so no normal note is digital silence.
NOISE_FLOOR_RMS = 3e-4
# Noise RMS added per unit of the audio_noise knob, relative to the voiced RMS: at 1.0 the
# signal-to-noise ratio is about 6 dB.
DRIFT_NOISE_RATIO = 0.5

# (F1, F2, F3) in Hz of a few vowels, for an adult low voice.
VOWEL_FORMANTS_HZ = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (290.0, 2250.0, 2900.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (320.0, 900.0, 2240.0),
}
FORMANT_BANDWIDTHS_HZ = (90.0, 110.0, 160.0)
# The toy lexicon: each spoken word is a fixed sequence of VOWEL_FORMANTS_HZ's vowels. Colour
# words have two syllables, product words three, and no two words share a sequence, so a
# listener that hears the vowels knows the word whatever the speaker's pitch, tempo or mood.
SPOKEN_COLOURS = {
    "red": "eo",
    "blue": "ua",
    "green": "ie",
    "yellow": "eu",
    "white": "ai",
    "purple": "ui",
    "orange": "oi",
    "grey": "ae",
    "navy": "ao",
    "tan": "au",
    "teal": "io",
    "pink": "ia",
}
SPOKEN_PRODUCTS = {
    "mug": "uau",
    "shoe": "oue",
    "lamp": "aea",
    "backpack": "aao",
    "headphones": "eoi",
}


@dataclass(frozen=True)
class Prosody:
    """How a mood sounds, before the speaker's own voice is applied."""

    pitch_mult: float  # mean pitch relative to the speaker's base pitch
    pitch_spread: float  # std of per-syllable log-pitch offsets
    contour_slope: float  # relative pitch change across a syllable; positive = rising
    phrase_slope: float  # relative pitch change across the whole utterance
    tempo_sps: float  # syllables per second
    energy_rms: float  # RMS of the voiced parts
    brightness: float  # 0 = dark, 1 = harsh: sets the spectral tilt of the source
    roughness: float  # pitch jitter, amplitude shimmer and breath noise


MOOD_PROSODY = {
    "neutral": Prosody(1.00, 0.03, 0.00, -0.06, 3.2, 0.045, 0.15, 0.02),
    "positive": Prosody(1.20, 0.09, 0.30, 0.20, 4.6, 0.085, 0.55, 0.05),
    "negative": Prosody(1.42, 0.22, -0.08, -0.04, 6.2, 0.150, 1.00, 0.35),
}


def mood_prosody(mood: str, expression: float) -> Prosody:
    """Prosody of `mood` expressed with strength `expression` (0 = sounds neutral).

    For a neutral mood, `expression` is liveliness: how far toward the positive prosody it goes.
    """
    neutral = MOOD_PROSODY["neutral"]
    target = MOOD_PROSODY["positive" if mood == "neutral" else mood]
    mixed = {
        name: getattr(neutral, name) + expression * (getattr(target, name) - getattr(neutral, name))
        for name in Prosody.__dataclass_fields__
    }
    return Prosody(**mixed)


def _syllable_envelope(length: int, rng: np.random.Generator) -> np.ndarray:
    attack = max(1, int(length * rng.uniform(0.1, 0.2)))
    release = max(1, int(length * rng.uniform(0.2, 0.35)))
    envelope = np.ones(length)
    envelope[:attack] = np.sin(np.linspace(0.0, np.pi / 2, attack)) ** 2
    envelope[length - release :] = np.cos(np.linspace(0.0, np.pi / 2, release)) ** 2
    return envelope


def _formant_filter(
    vowel: tuple[float, float, float], formant_scale: float, sample_rate: int
) -> np.ndarray:
    """Denominator of three cascaded two-pole resonators (numerator is 1)."""
    denominator = np.array([1.0])
    for frequency, bandwidth in zip(vowel, FORMANT_BANDWIDTHS_HZ, strict=True):
        frequency = min(frequency * formant_scale, 0.45 * sample_rate)
        radius = np.exp(-np.pi * bandwidth / sample_rate)
        theta = 2.0 * np.pi * frequency / sample_rate
        denominator = np.convolve(denominator, [1.0, -2.0 * radius * np.cos(theta), radius**2])
    return denominator


def _pulse_train(f0: np.ndarray, sample_rate: int) -> np.ndarray:
    """Band-limited pulse train: the sum of all harmonics below 0.45 x sample rate, unit each.

    Closed form of sum_{k=1..K} cos(k theta) (Dirichlet kernel), so the cost does not grow with
    the number of harmonics.
    """
    theta = 2.0 * np.pi * np.cumsum(f0) / sample_rate
    harmonics = np.clip(np.floor(0.45 * sample_rate / f0), 1, 80)
    half = np.sin(theta / 2.0)
    safe = np.abs(half) > 1e-6
    pulses = np.where(
        safe,
        np.sin((harmonics + 0.5) * theta) / (2.0 * np.where(safe, half, 1.0)) - 0.5,
        harmonics,
    )
    return pulses / np.sqrt(harmonics)


def spoken_words(story: ItemStory) -> list[str]:
    """The vowel sequences of the words the note opens with: the colour, then the product."""
    return [SPOKEN_COLOURS[story.colour], SPOKEN_PRODUCTS[story.category]]


def synthesize_voice(
    prosody: Prosody,
    speaker: Speaker,
    sample_rate: int,
    seconds: float,
    rng: np.random.Generator,
    opening_words: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """A voice note without background noise, and the mask of its voiced samples.

    `opening_words` are vowel sequences spoken first (stressed, a little slower), as far as
    the note's length allows; random babble follows.
    """
    n_samples = round(seconds * sample_rate)
    f0 = np.zeros(n_samples)
    speech = np.zeros(n_samples)
    voiced = np.zeros(n_samples, dtype=bool)
    tempo = prosody.tempo_sps * speaker.tempo_factor
    level_hz = speaker.base_pitch_hz * prosody.pitch_mult
    brightness_cutoff_hz = 250.0 + 3200.0 * prosody.brightness**1.5
    tilt_pole = float(np.exp(-2.0 * np.pi * brightness_cutoff_hz / sample_rate))

    # (start, stop, vowel letter or None for a random vowel)
    syllables: list[tuple[int, int, str | None]] = []
    t = rng.uniform(0.05, 0.2)
    end = seconds - rng.uniform(0.08, 0.2)
    words = list(opening_words)
    while t < end:
        word: Sequence[str | None] = words.pop(0) if words else [None] * int(rng.integers(1, 4))
        for vowel in word:
            # Words of the lexicon are said with care: a little slower than babble.
            stretch = (0.9, 1.2) if vowel is not None else (0.6, 1.0)
            duration = rng.uniform(*stretch) / tempo
            if t + duration > end:
                break
            start, stop = int(t * sample_rate), int((t + duration) * sample_rate)
            position = t / seconds - 0.5
            level = level_hz * (1.0 + prosody.phrase_slope * position)
            level *= float(np.exp(rng.normal(0.0, prosody.pitch_spread)))
            slope = prosody.contour_slope + rng.normal(0.0, 0.04 + 0.5 * prosody.pitch_spread)
            ramp = np.linspace(-0.5, 0.5, stop - start)
            f0[start:stop] = level * np.clip(1.0 + slope * ramp, 0.5, 1.8)
            syllables.append((start, stop, vowel))
            t += duration + rng.uniform(0.015, 0.045)
        # Pauses between words shrink with tempo: fast talkers pause less.
        t += rng.uniform(0.25, 0.9) / tempo

    if not syllables:  # only for absurdly short notes (corrupt "too short" payloads)
        syllables.append((0, n_samples, None))
        f0[:] = level_hz
    # Fill unvoiced stretches with the neighbouring pitch so the pulse phase stays continuous.
    filled = np.where(f0 > 0, f0, np.nan)
    valid = np.flatnonzero(~np.isnan(filled))
    filled = np.interp(np.arange(n_samples), valid, filled[valid])
    # Jitter: slow random pitch wobble, stronger in a rough (angry) voice.
    wobble = lfilter([0.02], [1.0, -0.98], rng.normal(0.0, 1.0, n_samples))
    filled *= 1.0 + prosody.roughness * 0.25 * wobble
    source = _pulse_train(filled, sample_rate)
    source = lfilter([1.0 - tilt_pole], [1.0, -tilt_pole], source)
    source += prosody.roughness * 0.6 * np.std(source) * rng.normal(0.0, 1.0, n_samples)

    babble_vowels = list(VOWEL_FORMANTS_HZ)
    for start, stop, vowel in syllables:
        babble = babble_vowels[int(rng.integers(len(babble_vowels)))]
        formants = VOWEL_FORMANTS_HZ[babble if vowel is None else vowel]
        segment = lfilter(
            [1.0], _formant_filter(formants, speaker.formant_scale, sample_rate), source[start:stop]
        )
        segment /= np.sqrt(np.mean(segment**2)) + 1e-12
        stress = rng.uniform(1.0 - 0.3 - prosody.roughness, 1.0)
        if vowel is not None:
            stress = 1.0
        segment *= _syllable_envelope(stop - start, rng) * max(stress, 0.3)
        if rng.random() < 0.4 + prosody.roughness:
            # Consonant-like onset: a short burst of high-passed noise.
            burst = min(stop - start, int(rng.uniform(0.015, 0.04) * sample_rate))
            noise = np.diff(rng.normal(0.0, 1.0, burst + 1))
            segment[:burst] += rng.uniform(0.2, 0.5) * noise * np.hanning(burst)
        speech[start:stop] = segment
        voiced[start:stop] = True

    voiced_rms = np.sqrt(np.mean(speech[voiced] ** 2)) + 1e-12
    speech *= prosody.energy_rms * speaker.gain / voiced_rms
    return speech, voiced


def add_background(
    speech: np.ndarray, voiced: np.ndarray, noise_level: float, rng: np.random.Generator
) -> np.ndarray:
    """Add a low rumble-and-hiss background: a fixed floor plus `noise_level` x voice RMS."""
    hiss = rng.normal(0.0, 1.0, speech.size)
    rumble = lfilter([0.05], [1.0, -0.95], rng.normal(0.0, 1.0, speech.size))
    background = hiss / np.std(hiss) + 2.0 * rumble / (np.std(rumble) + 1e-12)
    background /= np.std(background)
    voiced_rms = np.sqrt(np.mean(speech[voiced] ** 2)) if voiced.any() else 0.0
    noise_rms = NOISE_FLOOR_RMS + noise_level * DRIFT_NOISE_RATIO * voiced_rms
    out = speech + noise_rms * background
    peak = np.max(np.abs(out))
    if peak > MAX_PEAK:
        # Only the loudest notes get here; scaling keeps their shape and stays off full scale.
        out *= MAX_PEAK / peak
    return out


def render_voice(
    story: ItemStory,
    rng: np.random.Generator,
    noise_rng: np.random.Generator,
    noise_level: float,
    *,
    sample_rate: int | None = None,
    seconds: float | None = None,
) -> np.ndarray:
    """The item's voice note as float samples in [-MAX_PEAK, MAX_PEAK]."""
    prosody = mood_prosody(story.sentiment, story.expression)
    speech, voiced = synthesize_voice(
        prosody,
        story.speaker,
        sample_rate or story.audio_rate,
        seconds or story.audio_seconds,
        rng,
        spoken_words(story),
    )
    return add_background(speech, voiced, noise_level, noise_rng)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples (full scale 1.0) as little-endian 16-bit integers."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono PCM WAV; the stdlib writer puts nothing variable in the header."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(to_pcm16(samples).tobytes())
    return buffer.getvalue()
