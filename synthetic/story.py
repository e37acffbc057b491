"""The latent story of one feedback item: everything that is true before any modality is rendered.

The story is drawn first, from the item's own random streams, and the modalities are rendered
from it afterwards; dropping a modality or drifting how one is rendered never changes the labels.
Every decision reads a fixed position of a fixed-length vector of uniforms, so a knob that moves a
probability moves only the items near the threshold and never re-shuffles the rest.
"""

from __future__ import annotations

import math
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

# The modalities a dataset declares unless told otherwise; video joins them when clips are made.
DEFAULT_MODALITIES = ("text", "image", "audio")
MODALITY_NAMES = (*DEFAULT_MODALITIES, "video")  # canonical order
# Clips (story.ClipStory, rendered by videos.py): a few seconds of the product turning.
VIDEO_FPS = 8
CLIP_SECONDS_RANGE = (2.0, 4.0)
# Share of clips whose audio track is the item's voice note (the rest are silent films).
VOICE_TRACK_RATE = 0.5
# Share of a clip's frames in which the product's back (where damage sits) faces the camera.
BACK_SHARE_RANGE = (1 / 3, 1 / 2)
# Share of damaged items with a clip whose photo shows the intact front, so that only the clip
# shows the damage (some labels then need the clip, not only the photo).
DAMAGE_HIDDEN_IN_PHOTO_RATE = 0.5

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
    VIDEO = 11  # the clip's story: whether there is one, its length, motion, audio track
    VIDEO_RENDER = 12  # the clip's pictures: scene, product placement, lighting, damage


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
class ClipStory:
    """What the item's clip shows: the product turning on a turntable while the camera pans.

    The product's back (mirrored, and where a damaged item's damage is) faces the camera on
    frames back_frames[0] <= k < back_frames[1], one run that may open or close the clip but
    never both; its front faces it on the other frames.
    Every clip turns this way, damaged or not, so the motion says nothing about the label.
    """

    n_frames: int  # at VIDEO_FPS
    pan: int  # +1: the camera pans to the right over the scene, -1: to the left
    back_frames: tuple[int, int]  # [start, stop): frames in which the back faces the camera
    voice_track: bool  # the item's voice note is the clip's audio track
    damage_in_photo: bool  # for a damaged item: False = the photo shows only the intact front

    @property
    def seconds(self) -> float:
        return self.n_frames / VIDEO_FPS


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
    clip: ClipStory | None = None  # only with video_rate > 0, for about that share of items

    @property
    def photo_shows_damage(self) -> bool:
        """Whether the product photo shows damage (without a clip: exactly when damaged)."""
        return self.damaged and (self.clip is None or self.clip.damage_in_photo)

    @property
    def damage_frames(self) -> range:
        """The clip frames that show damage: the back-facing ones of a damaged item."""
        if self.clip is None or not self.damaged:
            return range(0)
        return range(*self.clip.back_frames)

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


def declared_modalities(
    modalities: Sequence[str] | None = None, video_rate: float = 0.0
) -> tuple[str, ...]:
    """The modalities a generated dataset declares, in canonical order.

    None: text, image and audio, plus video when video_rate > 0. An explicit list must be a
    non-empty subset of MODALITY_NAMES; declaring video needs clips (video_rate > 0) and
    clips need video declared, so a dataset never declares a modality it cannot hold.
    """
    if not 0.0 <= video_rate <= 1.0:
        raise ValueError(f"video_rate must be in [0, 1], got {video_rate!r}")
    if modalities is None:
        return (*DEFAULT_MODALITIES, "video") if video_rate > 0 else DEFAULT_MODALITIES
    names = [str(getattr(m, "value", m)) for m in modalities]
    unknown = sorted(set(names) - set(MODALITY_NAMES))
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"modalities must be distinct names among {', '.join(MODALITY_NAMES)}, got {names}"
        )
    if "video" in names and video_rate <= 0:
        raise ValueError("modalities include video: give video_rate > 0 (1.0: a clip per item)")
    if "video" not in names and video_rate > 0:
        raise ValueError(f"video_rate is {video_rate} but modalities {names} leave video out")
    if names == ["video"] and video_rate < 1:
        raise ValueError("a video-only dataset needs video_rate=1 (every item needs a clip)")
    return tuple(m for m in MODALITY_NAMES if m in names)


def _draw_presence(
    seed: int,
    index: int,
    missing_modality_rate: float,
    declared: tuple[str, ...] = DEFAULT_MODALITIES,
    has_clip: bool = False,
) -> tuple[Modality, ...]:
    rng = item_rng(seed, index, Stream.PRESENCE)
    u = rng.random(4)
    # Video came later: its draw follows the original four, which stay what they were.
    draws = {"text": u[0], "image": u[1], "audio": u[2], "video": rng.random()}
    available = [m for m in declared if m != "video" or has_clip]
    if not available:
        raise ValueError(f"item {index} has none of the modalities {declared} (no clip)")
    kept = [m for m in available if draws[m] >= missing_modality_rate]
    if not kept:
        # The contract needs one modality; keep one at random rather than re-drawing.
        kept = [available[int(u[3] * len(available)) % len(available)]]
    return tuple(Modality(m) for m in kept)


def draw_clip(seed: int, index: int, audio_seconds: float, video_rate: float) -> ClipStory | None:
    """The clip of item `index` (None for the items without one, a 1 - video_rate share).

    A fixed-length vector of the item's own VIDEO stream, so a higher rate only adds clips.
    `audio_seconds` is the voice note's length: a clip carrying it is long enough for all of it.
    """
    u = item_rng(seed, index, Stream.VIDEO).random(8)
    if u[0] >= video_rate:
        return None
    low, high = CLIP_SECONDS_RANGE
    n_frames = round((low + (high - low) * float(u[1])) * VIDEO_FPS)
    voice_track = bool(u[3] < VOICE_TRACK_RATE)
    if voice_track:
        n_frames = max(n_frames, math.ceil(audio_seconds * VIDEO_FPS))
    # The back faces the camera on one run of frames, with at most as many frames before and
    # after it as in it: the product turns at one speed and never shows its back twice.
    share_low, share_high = BACK_SHARE_RANGE
    back = math.ceil(n_frames * (share_low + (share_high - share_low) * float(u[4])))
    first, last = max(0, n_frames - 2 * back), min(back, n_frames - back)
    start = min(last, first + int(u[5] * (last - first + 1)))
    return ClipStory(
        n_frames=n_frames,
        pan=1 if u[2] < 0.5 else -1,
        back_frames=(start, start + back),
        voice_track=voice_track,
        damage_in_photo=bool(u[6] >= DAMAGE_HIDDEN_IN_PHOTO_RATE),
    )


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
    video_rate: float = 0.0,
    modalities: Sequence[str] | None = None,
) -> ItemStory:
    """Draw the story of item `index`: a function of (seed, index) and the knobs only.

    `modalities` and `video_rate` are as for `declared_modalities`; with the defaults the item
    has no clip and its presence is drawn over text, image and audio.
    """
    declared = declared_modalities(modalities, video_rate)
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
    audio_seconds = AUDIO_SECONDS_RANGE[0] + (
        AUDIO_SECONDS_RANGE[1] - AUDIO_SECONDS_RANGE[0]
    ) * float(u[15])
    clip = draw_clip(seed, index, audio_seconds, video_rate) if "video" in declared else None
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
        audio_seconds=audio_seconds,
        present=_draw_presence(seed, index, missing_modality_rate, declared, clip is not None),
        labels=_noisy_labels(seed, index, true_labels, label_noise),
        clip=clip,
    )


def _normal(u: float) -> float:
    """Standard normal quantile of a uniform, clipped to +-3 so no speaker is absurd."""
    clipped = min(max(u, 0.00135), 0.99865)
    return _STANDARD_NORMAL.inv_cdf(clipped)


def created_at(index: int) -> str:
    """Derived from the index, never from the clock, so reruns are byte-identical."""
    stamp = CREATED_AT_EPOCH + np.timedelta64(index, "m")
    return f"{np.datetime_as_string(stamp, unit='s')}Z"
