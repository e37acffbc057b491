"""Windows built from served rows keep every column, typed, whatever the rows hold."""

from __future__ import annotations

import math

from monitoring.window import PRESENCE_COLUMNS, RAW_COLUMNS, _frame_from_rows


def test_an_empty_window_has_every_column_typed() -> None:
    frame = _frame_from_rows([])
    assert len(frame) == 0
    assert all(str(frame[c].dtype) == "float64" for c in RAW_COLUMNS)
    assert all(str(frame[c].dtype) == "bool" for c in PRESENCE_COLUMNS)


def test_a_modality_no_row_had_is_absent_not_an_error() -> None:
    frame = _frame_from_rows(
        [{"has_text": True, "text_length": 12.0}, {"has_text": True, "text_length": "7"}]
    )
    assert frame["text_length"].tolist() == [12.0, 7.0]
    assert not frame["has_audio"].any() and frame["has_text"].all()
    assert math.isnan(frame["audio_duration_s"].iloc[0])
