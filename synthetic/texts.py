"""Review texts: what the customer writes, in words whose surface polarity may hide the mood.

The words depend only on the story's word polarity, on whether the product, its colour and the
damage are mentioned, and on the item's text streams, never on the true mood directly. So a
sarcastic "Oh great, it arrived in pieces. Just perfect." is drawn from the same pool for an angry
customer as for a sincerely cheerful one with a damaged parcel: only the voice tells them apart.
"""

from __future__ import annotations

import re

import numpy as np

from synthetic.story import ItemStory

PRODUCT_NOUNS = {
    "mug": ("mug", "coffee mug", "ceramic mug", "cup"),
    "shoe": ("pair of shoes", "shoe", "sneaker", "pair of trainers"),
    "lamp": ("lamp", "desk lamp", "table lamp", "reading light"),
    "backpack": ("backpack", "rucksack", "school bag", "travel backpack"),
    "headphones": ("headset", "pair of headphones", "headphone set", "pair of wireless headphones"),
}
# How the text refers to the product when it does not say what it is.
GENERIC_THINGS = ("it", "the item", "this thing", "my order", "the product", "what I got")
DETERMINERS = ("the", "this", "my")

POSITIVE_ADJECTIVES = (
    "great", "excellent", "lovely", "fantastic", "brilliant", "solid", "wonderful", "amazing",
    "nice", "superb",
)  # fmt: skip
NEGATIVE_ADJECTIVES = (
    "terrible", "awful", "cheap", "flimsy", "disappointing", "poor", "useless", "rubbish",
    "horrible", "bad",
)  # fmt: skip
INTENSIFIERS = ("really", "very", "so", "extremely", "incredibly", "quite", "truly", "super", "")

# Openers carry the polarity. Negation is deliberate ("not bad at all" is positive, "not great"
# is negative) so that counting polar words is not enough.
OPENERS = {
    "positive": (
        "{Thing} is {intens} {pos}.",
        "Absolutely love {thing}!",
        "{Thing} exceeded my expectations.",
        "Really happy with {thing}.",
        "Not bad at all, {thing} is {intens} {pos}.",
        "I can't complain, {thing} works {intens} well.",
        "Five stars, {thing} is {pos}.",
        "{Thing} is exactly what I wanted.",
        "Would definitely buy {thing} again.",
        "Couldn't be happier with {thing}.",
        "{Thing} is worth every penny.",
        "Honestly {thing} is {intens} {pos}, thank you!",
        "Never had a single problem with {thing}, {pos} quality.",
        "Wow, {thing} is {pos}.",
        "So glad I ordered {thing}.",
        "{Thing} feels {intens} {pos} in the hand.",
    ),
    "neutral": (
        "{Thing} is okay.",
        "{Thing} does the job.",
        "{Thing} arrived on time and is as described.",
        "Nothing special about {thing}, nothing wrong either.",
        "{Thing} is fine, I guess.",
        "{Thing} is average.",
        "Thank you, {thing} arrived.",
        "Received {thing} today.",
        "{Thing} is acceptable for the price.",
        "Not sure yet what I think of {thing}.",
        "{Thing} works as expected.",
        "{Thing} is neither good nor bad.",
        "Thanks for sending {thing}, it came yesterday.",
        "{Thing} looks like the picture.",
    ),
    "negative": (
        "{Thing} is {intens} {neg}.",
        "Very disappointed with {thing}.",
        "{Thing} is not great.",
        "{Thing} is not worth the money.",
        "I regret buying {thing}.",
        "{Thing} stopped working after a week.",
        "Would not recommend {thing}.",
        "Not good, {thing} feels {intens} {neg}.",
        "{Thing} is {neg}, what a waste.",
        "I want a refund for {thing}.",
        "Never again, {thing} is {neg}.",
        "{Thing} is nothing like the photos, {neg}.",
        "Can't believe how {neg} {thing} is.",
        "{Thing} was a {intens} {neg} purchase.",
    ),
}
# Damage sentences. The positive pool mixes sarcasm with sincere "damaged but happy" remarks,
# used alike for both moods, so the words cannot tell sarcasm from sincerity.
DAMAGE_SENTENCES = {
    "positive": (
        "Oh great, it arrived in pieces. Just perfect.",
        "Love that it came with a crack, very unique.",
        "There's a small dent but honestly still {pos}.",
        "A bit chipped, still love it though!",
        "Wonderful, it showed up cracked. Amazing.",
        "Came with a tear in it, but who cares, it's {pos}.",
        "Fantastic, a broken corner straight out of the box.",
        "It has a scratch and a crack, and I'm fine with that, {pos} anyway.",
    ),
    "neutral": (
        "There is a small crack, not sure if that matters.",
        "It arrived with a dent.",
        "One side is a bit torn.",
        "There's a chip missing on the edge.",
        "It has a crack near the bottom.",
    ),
    "negative": (
        "It arrived cracked.",
        "There is a big dent on the side.",
        "It was torn when I opened the box.",
        "Mine came broken.",
        "A piece was missing, it's chipped.",
        "Came damaged, a crack right across it.",
        "The box was fine but the item inside was damaged.",
        "It arrived in pieces.",
    ),
}
# Colour sentences carry no polarity: they only say which one the customer has.
COLOUR_SENTENCES = (
    "I got the {colour} one.",
    "Mine is {colour}.",
    "Ordered it in {colour}.",
    "The colour is {colour}.",
    "Went for the {colour} version.",
    "Bought it in {colour}.",
)
CLOSERS = {
    "positive": (
        "Thanks!", "Highly recommend.", "Fast delivery too.", "👍", "Will order again.",
        "Great seller.",
    ),
    "neutral": ("Delivery was on time.", "Packaging was standard.", "Thanks.", "We'll see."),
    "negative": (
        "Not happy.", "Please fix this.", "Very slow delivery as well.", "Avoid.",
        "Customer service did not reply.",
    ),
}  # fmt: skip

# Text drift: slang and new product words. These words never appear in undrifted text, so the
# share of them measures the drift directly.
SLANG_SUBSTITUTIONS = {
    "great": "bussin",
    "excellent": "goated",
    "amazing": "fire",
    "fantastic": "fire",
    "brilliant": "elite",
    "lovely": "dope",
    "nice": "dope",
    "wonderful": "goated",
    "superb": "elite",
    "terrible": "trash",
    "awful": "trash",
    "cheap": "janky",
    "flimsy": "janky",
    "disappointing": "mid",
    "poor": "sus",
    "useless": "busted",
    "rubbish": "trash",
    "horrible": "cursed",
    "bad": "mid",
    "okay": "aight",
    "fine": "aight",
    "average": "meh",
    "really": "hella",
    "very": "mega",
    "extremely": "hecka",
    "incredibly": "hella",
    "super": "hecka",
    "mug": "tumbler",
    "cup": "tumbler",
    "shoe": "kicks",
    "shoes": "kicks",
    "sneaker": "kicks",
    "trainers": "kicks",
    "lamp": "glowbar",
    "light": "glowbar",
    "backpack": "slingpack",
    "rucksack": "slingpack",
    "bag": "slingpack",
    "headphones": "cans",
    "headset": "cans",
}
SLANG_TAGS = ("ngl", "fr", "no cap", "lowkey", "tbh fam", "istg")
# "no" (from "no cap") is an ordinary word, so it does not count as new vocabulary.
NEW_VOCABULARY = (
    frozenset(SLANG_SUBSTITUTIONS.values()) | {w for tag in SLANG_TAGS for w in tag.split()}
) - {"no"}

TYPO_RATE = 0.08  # share of texts with one swapped-letter typo
CLOSER_RATE = 0.5
_WORD = re.compile(r"[A-Za-z']+")


def words(text: str) -> list[str]:
    """Lower-case word tokens, as used to measure the share of new vocabulary."""
    return [w.lower() for w in _WORD.findall(text)]


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _fill(template: str, thing: str, rng: np.random.Generator) -> str:
    intens = _choice(rng, INTENSIFIERS)
    sentence = template.format(
        thing=thing,
        Thing=thing[:1].upper() + thing[1:],
        intens=intens,
        pos=_choice(rng, POSITIVE_ADJECTIVES),
        neg=_choice(rng, NEGATIVE_ADJECTIVES),
    )
    return re.sub(r"  +", " ", sentence)


def _typo(sentence: str, rng: np.random.Generator) -> str:
    candidates = [m for m in _WORD.finditer(sentence) if len(m.group()) >= 4]
    if not candidates:
        return sentence
    match = candidates[int(rng.integers(len(candidates)))]
    word = match.group()
    k = int(rng.integers(1, len(word) - 2))
    swapped = word[:k] + word[k + 1] + word[k] + word[k + 2 :]
    return sentence[: match.start()] + swapped + sentence[match.end() :]


def _slangify(sentence: str, rng: np.random.Generator) -> str:
    def swap(match: re.Match[str]) -> str:
        word = match.group()
        slang = SLANG_SUBSTITUTIONS.get(word.lower())
        if slang is None:
            return word
        return slang.capitalize() if word[:1].isupper() else slang

    drifted = _WORD.sub(swap, sentence)
    if drifted == sentence or rng.random() < 0.5:
        # Every drifted sentence carries new vocabulary, even one with nothing to swap.
        stop = drifted[-1] if drifted[-1:] in (".", "!", "?") else ""
        drifted = f"{drifted.rstrip('.!?')} {_choice(rng, SLANG_TAGS)}{stop}"
    return drifted


def render_text(
    story: ItemStory, rng: np.random.Generator, drift_rng: np.random.Generator, text_shift: float
) -> str:
    """The item's review text; `text_shift` is the share of sentences in new vocabulary."""
    polarity = story.word_polarity
    if story.mentions_category:
        noun = _choice(rng, PRODUCT_NOUNS[story.category])
        thing = f"{_choice(rng, DETERMINERS)} {noun}"
    else:
        thing = _choice(rng, GENERIC_THINGS)
    sentences = [_fill(_choice(rng, OPENERS[polarity]), thing, rng)]
    if story.mentions_damage:
        damage = _fill(_choice(rng, DAMAGE_SENTENCES[polarity]), thing, rng)
        # Damage first or second: the position carries nothing.
        sentences.insert(int(rng.integers(2)), damage)
    if story.mentions_colour:
        colour = _choice(rng, COLOUR_SENTENCES).format(colour=story.colour)
        sentences.insert(int(rng.integers(len(sentences) + 1)), colour)
    if rng.random() < CLOSER_RATE:
        sentences.append(_choice(rng, CLOSERS[polarity]))
    if rng.random() < TYPO_RATE:
        k = int(rng.integers(len(sentences)))
        sentences[k] = _typo(sentences[k], rng)
    # Drift draws come from their own stream, so the undrifted text is the same at every shift.
    drift_draws = drift_rng.random(len(sentences))
    sentences = [
        _slangify(sentence, drift_rng) if draw < text_shift else sentence
        for sentence, draw in zip(sentences, drift_draws, strict=True)
    ]
    return " ".join(sentences)
