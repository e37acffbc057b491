"""The latent story of one feedback item: everything that is true before any modality is rendered.

The story is drawn first, from the item's own random streams, and the modalities are rendered
from it afterwards; dropping a modality or drifting how one is rendered never changes the labels.
Every decision reads a fixed position of a fixed-length vector of uniforms, so a knob that moves a
probability moves only the items near the threshold and never re-shuffles the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from statistics import NormalDist
from typing import TypeVar

import numpy as np

from dualmedia.contract import Modality

SENTIMENTS = ("negative", "neutral", "positive")
CATEGORIES = ("mug", "shoe", "lamp", "backpack", "headphones")
# The product's colour: what makes one item findable among others of its kind. The photo shows
# it, most texts name it and every voice note says it, so same-item retrieval across modalities
# has something to go on beyond the labels. RGB before per-photo jitter; two are dark, so "dark
# pixels" alone is not a perfect damage detector.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "blue": (40, 90, 190),
    "green": (40, 150, 80),
    "yellow": (235, 200, 60),
    "white": (240, 240, 235),
    "purple": (150, 90, 200),
    "orange": (240, 130, 40),
    "grey": (90, 90, 100),
    "navy": (60, 70, 110),
    "tan": (180, 140, 100),
    "teal": (30, 170, 170),
    "pink": (230, 120, 170),
}

# The generative story's probabilities (documented in docs/generator.md).
BASE_DAMAGE_RATE = 0.25
# How much class_shift=1 adds to the damage rate.
DAMAGE_RATE_SHIFT = 0.35
# P(sentiment | damaged), order as SENTIMENTS: damage pushes the mood toward negative.
SENTIMENT_PRIOR_INTACT = (0.20, 0.35, 0.45)
SENTIMENT_PRIOR_DAMAGED = (0.70, 0.20, 0.10)
# At class_shift=1 this share of the non-negative mass moves to negative.
SENTIMENT_SHIFT = 0.6
# P(words disagree with the voice | mood). Angry customers are often sarcastic or coldly polite;
# happy ones now and then use negative words ("ugh, not great" with a laugh).
MISMATCH_RATE_BY_MOOD = {"negative": 0.35, "neutral": 0.0, "positive": 0.08}
# Of the negative-mood mismatches, this share uses positive words (sarcasm); the rest use
# neutral, polite words.
SARCASM_SHARE = 0.6
CATEGORY_MENTION_RATE = 0.5
COLOUR_MENTION_RATE = 0.85
DAMAGE_MENTION_RATE = 0.4
# Expression strength of a non-neutral mood in the voice: weak expressions sound almost neutral,
# which keeps audio from being a perfect sentiment oracle.
EXPRESSION_RANGE = (0.2, 1.0)
# A neutral voice is lively up to this much of the way toward the positive prosody.
NEUTRAL_LIVELINESS_MAX = 0.3
IMAGE_FORMAT_SHARES = (("jpg", 0.55), ("png", 0.35), ("webp", 0.10))
AUDIO_RATE_SHARES = ((16000, 0.80), (22050, 0.10), (8000, 0.10))
AUDIO_SECONDS_RANGE = (1.0, 3.5)
# Speakers: two voice registers, with their own base pitch, tempo, loudness and vocal tract.
LOW_VOICE_PITCH_HZ = 110.0
HIGH_VOICE_PITCH_HZ = 205.0

LABEL_CLASSES: dict[str, tuple[str, ...] | tuple[bool, ...]] = {
    "sentiment": SENTIMENTS,
    "category": CATEGORIES,
    "damaged": (False, True),
    "mismatch": (False, True),
}

CREATED_AT_EPOCH = np.datetime64("2026-11-01T00:00:00", "s")
_STANDARD_NORMAL = NormalDist()


class Stream(IntEnum):
    """Independent random streams of one item; adding draws to one never shifts another."""

    STORY = 1
    PRESENCE = 2
    LABEL_NOISE = 3
    CORRUPT = 4
    TEXT = 5
    TEXT_DRIFT = 6
    IMAGE = 7
    AUDIO = 8
    AUDIO_NOISE = 9
    CORRUPT_PAYLOAD = 10


def item_rng(seed: int, index: int, stream: Stream) -> np.random.Generator:
    """The random generator of one stream of item `index`; depends on nothing else."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, int(stream)]))


@dataclass(frozen=True)
class Speaker:
    """Who speaks the voice note: varies pitch, tempo and loudness independently of mood."""

    base_pitch_hz: float
    tempo_factor: float
    gain: float
    formant_scale: float


@dataclass(frozen=True)
class ItemStory:
    """The latent truth of one item and the rendering decisions that follow from it."""

    index: int
    category: str
    colour: str  # a key of COLOURS: shown in the photo, said in the voice, often written
    damaged: bool
    sentiment: str  # the customer's true mood, carried by the voice
    word_polarity: str  # the polarity the words show on the surface
    mismatch: bool  # words disagree with the voice
    mentions_category: bool
    mentions_colour: bool
    mentions_damage: bool
    expression: float  # 0..1, how strongly the voice shows the mood (liveliness if neutral)
    speaker: Speaker
    image_format: str
    audio_rate: int
    audio_seconds: float
    present: tuple[Modality, ...]  # modalities kept in the manifest, canonical order
    labels: dict[str, str | bool] = field(default_factory=dict)  # as written, after label noise

    @property
    def true_labels(self) -> dict[str, str | bool]:
        """The labels before label noise."""
        return {
            "sentiment": self.sentiment,
            "category": self.category,
            "damaged": self.damaged,
            "mismatch": self.mismatch,
        }


def damage_rate(class_shift: float) -> float:
    """P(damaged) at the given class shift."""
    return BASE_DAMAGE_RATE + DAMAGE_RATE_SHIFT * class_shift


def sentiment_prior(damaged: bool, class_shift: float) -> tuple[float, float, float]:
    """P(mood) in SENTIMENTS order, given damage and the class shift."""
    _, neutral, positive = SENTIMENT_PRIOR_DAMAGED if damaged else SENTIMENT_PRIOR_INTACT
    keep = 1.0 - SENTIMENT_SHIFT * class_shift
    return (1.0 - keep * (neutral + positive), keep * neutral, keep * positive)


T = TypeVar("T")


def _pick(u: float, shares: Sequence[tuple[T, float]]) -> T:
    """The value whose share of [0, 1) holds `u` (inverse CDF, so shares move monotonically)."""
    cumulative = 0.0
    for value, share in shares:
        cumulative += share
        if u < cumulative:
            return value
    return shares[-1][0]


def _draw_presence(seed: int, index: int, missing_modality_rate: float) -> tuple[Modality, ...]:
    u = item_rng(seed, index, Stream.PRESENCE).random(4)
    kept = [m for m, draw in zip(Modality, u[:3], strict=True) if draw >= missing_modality_rate]
    if not kept:
        # The contract needs one modality; keep one at random rather than re-drawing.
        kept = [list(Modality)[int(u[3] * 3) % 3]]
    return tuple(kept)


def _noisy_labels(
    seed: int, index: int, true_labels: dict[str, str | bool], label_noise: float
) -> dict[str, str | bool]:
    u = item_rng(seed, index, Stream.LABEL_NOISE).random(1 + len(LABEL_CLASSES))
    if u[0] >= label_noise:
        return dict(true_labels)
    noisy: dict[str, str | bool] = {}
    for draw, (name, classes) in zip(u[1:], LABEL_CLASSES.items(), strict=True):
        others = [c for c in classes if c != true_labels[name]]
        noisy[name] = others[int(draw * len(others)) % len(others)]
    return noisy


def draw_story(
    seed: int,
    index: int,
    *,
    class_shift: float = 0.0,
    missing_modality_rate: float = 0.0,
    label_noise: float = 0.0,
) -> ItemStory:
    """Draw the story of item `index`: a function of (seed, index) and the knobs only."""
    u = item_rng(seed, index, Stream.STORY).random(20)
    category = CATEGORIES[int(u[0] * len(CATEGORIES)) % len(CATEGORIES)]
    damaged = bool(u[1] < damage_rate(class_shift))
    prior = sentiment_prior(damaged, class_shift)
    sentiment = _pick(u[2], list(zip(SENTIMENTS, prior, strict=True)))
    mismatch = bool(u[3] < MISMATCH_RATE_BY_MOOD[sentiment])
    if not mismatch:
        word_polarity = sentiment
    elif sentiment == "negative":
        word_polarity = "positive" if u[4] < SARCASM_SHARE else "neutral"
    else:
        word_polarity = "negative"
    mentions_category = bool(u[5] < CATEGORY_MENTION_RATE)
    mentions_damage = damaged and bool(u[6] < DAMAGE_MENTION_RATE)
    low, high = EXPRESSION_RANGE
    if sentiment == "neutral":
        expression = NEUTRAL_LIVELINESS_MAX * float(u[7])
    else:
        expression = low + (high - low) * float(u[7])

    register = LOW_VOICE_PITCH_HZ if u[8] < 0.5 else HIGH_VOICE_PITCH_HZ
    speaker = Speaker(
        base_pitch_hz=register * float(np.exp(0.15 * _normal(u[9]))),
        tempo_factor=0.75 + 0.55 * float(u[10]),
        gain=float(np.exp(0.4 * _normal(u[11]))),
        # A higher register goes with a shorter vocal tract: higher formants.
        formant_scale=(1.0 if register == LOW_VOICE_PITCH_HZ else 1.12) * (0.95 + 0.1 * u[12]),
    )
    # Slots 16 and 17 were unused before colours existed, so the other decisions are unchanged.
    colour = list(COLOURS)[int(u[16] * len(COLOURS)) % len(COLOURS)]
    true_labels: dict[str, str | bool] = {
        "sentiment": sentiment,
        "category": category,
        "damaged": damaged,
        "mismatch": mismatch,
    }
    return ItemStory(
        index=index,
        category=category,
        colour=colour,
        damaged=damaged,
        sentiment=sentiment,
        word_polarity=word_polarity,
        mismatch=mismatch,
        mentions_category=mentions_category,
        mentions_colour=bool(u[17] < COLOUR_MENTION_RATE),
        mentions_damage=mentions_damage,
        expression=expression,
        speaker=speaker,
        image_format=_pick(u[13], IMAGE_FORMAT_SHARES),
        audio_rate=_pick(u[14], AUDIO_RATE_SHARES),
        audio_seconds=AUDIO_SECONDS_RANGE[0]
        + (AUDIO_SECONDS_RANGE[1] - AUDIO_SECONDS_RANGE[0]) * float(u[15]),
        present=_draw_presence(seed, index, missing_modality_rate),
        labels=_noisy_labels(seed, index, true_labels, label_noise),
    )


def _normal(u: float) -> float:
    """Standard normal quantile of a uniform, clipped to +-3 so no speaker is absurd."""
    clipped = min(max(u, 0.00135), 0.99865)
    return _STANDARD_NORMAL.inv_cdf(clipped)


def created_at(index: int) -> str:
    """Derived from the index, never from the clock, so reruns are byte-identical."""
    stamp = CREATED_AT_EPOCH + np.timedelta64(index, "m")
    return f"{np.datetime_as_string(stamp, unit='s')}Z"
