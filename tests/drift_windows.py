"""Synthetic monitoring windows with modality signals, for the drift checks and pages."""

from __future__ import annotations

import numpy as np

from monitoring.report import Window
from monitoring.window import _frame_from_rows

SENTIMENTS = ["negative", "neutral", "positive"]


def signal_window(
    n: int,
    seed: int,
    audio_gate: float = 0.45,
    alignment: float = 0.6,
    disagree_rate: float = 0.05,
    audio_rate: float = 0.9,
    embed_rows: int = 0,
) -> Window:
    """n items with text and (at audio_rate) a voice note, their gate weights, text/audio
    alignment and disagreement; plus `embed_rows` single-modality `embed` requests."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n + embed_rows):
        whole = i < n
        has_audio = whole and rng.random() < audio_rate
        row = {
            "whole_item": whole,
            "has_text": True,
            "has_audio": has_audio,
            "text_length": float(rng.integers(20, 200)),
        }
        if whole:
            row["pred_sentiment"] = str(rng.choice(SENTIMENTS))
        if has_audio:
            gate = float(np.clip(rng.normal(audio_gate, 0.05), 0, 1))
            row |= {
                "gate_audio": gate,
                "gate_text": 1 - gate,
                "align_text_audio": float(np.clip(rng.normal(alignment, 0.1), -1, 1)),
                "disagree_sentiment": float(rng.random() < disagree_rate),
            }
        elif whole:
            row["gate_text"] = 1.0
        rows.append(row)
    frame = _frame_from_rows(rows)
    text = rng.normal(size=(len(rows), 32))
    audio = np.where(
        frame["has_audio"].to_numpy()[:, None], rng.normal(size=(len(rows), 32)), np.nan
    )
    return Window(frame, {"text": text, "audio": audio})
