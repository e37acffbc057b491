"""The drift report a person reads: the verdict first, then Evidently's sections.

One truth per report: the page opens with the verdict, every check it used with its
score, threshold and result, and the checks it could not run with why. Evidently's
sections follow, computed on the rows the verdict judged (`Verdict.windows`), with the
verdict's own methods and thresholds: raw fields with Evidently's default test per
field (the verdict's), predicted classes with the verdict's test, and the embedding and
modality checks as our metrics (monitoring/evidently_metrics.py). No preset's headline
is shown: the data-drift preset's "dataset drift" share over raw fields is not what
decides, so it is left out.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.drift import DriftConfig, DriftResult
from monitoring.report import PRESENCE_COLUMNS, Verdict
from monitoring.signals import WHOLE_ITEM

DRIFT_COLOUR, OK_COLOUR, SKIP_COLOUR = "#c0392b", "#27ae60", "#b9770e"


def evidently_report(
    verdict: Verdict, config: DriftConfig, timestamp: datetime | None = None
) -> Any:
    """Evidently's report (a Snapshot: HTML, JSON, the UI's workspace) on the verdict's rows."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    from monitoring.evidently_metrics import (
        EmbeddingDomainClassifierAUC,
        ModalitySignalShift,
        embedding_columns,
    )
    from monitoring.report import comparable

    if verdict.windows is None:
        raise ValueError("a verdict without its windows cannot be reported")
    reference, current = verdict.windows
    compared = comparable(reference, current, config)  # what the verdict looked at
    signal_columns = [c.column for c in compared.signals if c.column not in PRESENCE_COLUMNS]
    numeric = compared.numeric + signal_columns
    categorical = [WHOLE_ITEM, *PRESENCE_COLUMNS, *compared.predictions]
    embeddings = {
        m: embedding_columns(m, ref.shape[1]) for m, (ref, _) in compared.embeddings.items()
    }

    def frame(window: Any) -> pd.DataFrame:
        out = window.frame[numeric + categorical].copy()
        for col in categorical:  # strings, and a missing prediction stays missing
            out[col] = out[col].map(lambda v: None if pd.isna(v) else str(v)).astype(object)
        vectors = [
            pd.DataFrame(window.embeddings[m].astype(np.float32), columns=cols)
            for m, cols in embeddings.items()
        ]
        return pd.concat([out.reset_index(drop=True), *vectors], axis=1)

    definition = DataDefinition(
        numerical_columns=numeric, categorical_columns=categorical, embeddings=embeddings or None
    )
    metrics: list[Any] = [ValueDrift(column=c) for c in compared.numeric]
    metrics += [
        ValueDrift(column=c, method=config.prediction_method, threshold=config.prediction_threshold)
        for c in compared.predictions
    ]
    metrics += [
        EmbeddingDomainClassifierAUC.of(m, len(cols), config) for m, cols in embeddings.items()
    ]
    metrics += [ModalitySignalShift.of(check, config) for check in compared.signals]
    return Report(metrics, include_tests=True).run(
        Dataset.from_pandas(frame(current), data_definition=definition),
        Dataset.from_pandas(frame(reference), data_definition=definition),
        metadata={
            "verdict": "drift" if verdict.drifted else "no drift",
            "reasons": "; ".join(verdict.reasons),
            "not checked": "; ".join(verdict.skipped) or "-",
        },
        name="drift report",
        timestamp=timestamp,  # the report's time: the UI's panels plot against it
    )


def _value(result: DriftResult) -> str:
    if result.reference is None or result.current is None:
        return ""
    return f"{result.reference:.3g} &rarr; {result.current:.3g}"


def verdict_block(verdict: Verdict, context: Mapping[str, str]) -> str:
    """The report's first screen: the decision and everything it was made of."""
    colour = DRIFT_COLOUR if verdict.drifted else OK_COLOUR
    word = "drift" if verdict.drifted else "no drift"
    about = " &middot; ".join(
        f"{html.escape(k)}: {html.escape(str(v))}" for k, v in context.items()
    )
    rows = []
    for r in verdict.results:
        result = "drifted" if r.drifted else "ok"
        threshold = "-" if r.threshold is None else f"{r.threshold:.4g}"
        rows.append(
            f"<tr data-check='{html.escape(r.name)}' data-score='{r.score:.4f}' "
            f"data-drifted='{str(r.drifted).lower()}'>"
            f"<td>{html.escape(r.name)}</td><td>{r.score:.4f}</td><td>{threshold}</td>"
            f"<td style='color:{DRIFT_COLOUR if r.drifted else OK_COLOUR};font-weight:bold'>"
            f"{result}</td><td>{_value(r)}</td><td>{html.escape(r.method)}</td></tr>"
        )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in verdict.reasons) or "<li>-</li>"
    skipped = "".join(f"<li>{html.escape(s)}</li>" for s in verdict.skipped) or "<li>none</li>"
    return (
        "<section id='dualmedia-verdict' style='font-family:sans-serif;margin:1.5em 2em;"
        "padding:1em 1.5em;border:2px solid " + colour + ";border-radius:6px;background:#fff'>"
        f"<h1 id='verdict' data-verdict='{word}' style='color:{colour};margin-top:0'>"
        f"Verdict: {word}</h1>"
        f"<p>{about}</p>"
        f"<h3>Why</h3><ul id='reasons'>{reasons}</ul>"
        f"<p>Judged on <b>{verdict.n_reference}</b> reference and <b>{verdict.n_current}</b> "
        "current items. Every check below, and every section of Evidently's report after "
        "this box, was computed on these same rows.</p>"
        "<table id='checks' style='border-collapse:collapse'>"
        "<tr><th>check</th><th>score</th><th>threshold</th><th>result</th>"
        "<th>reference &rarr; current</th><th>method</th></tr>" + "".join(rows) + "</table>"
        f"<p>{html.escape(verdict.raw_fields)}.</p>"
        f"<h3 style='color:{SKIP_COLOUR}'>Not checked</h3><ul id='skipped'>{skipped}</ul>"
        "<p style='color:#555'>Evidently's prediction sections show its Jensen-Shannon test "
        "alone; the verdict also needs the chi-square p in the method column. Its raw-field "
        "sections are the verdict's tests; whether they ask for retraining is the line "
        "above the table.</p>"
        "<style>#checks td,#checks th{padding:3px 9px;border-bottom:1px solid #ddd;"
        "text-align:left;font-size:14px}</style></section>"
    )


def write_report(
    verdict: Verdict,
    config: DriftConfig,
    context: Mapping[str, str],
    folder: Path,
    timestamp: datetime | None = None,
) -> Any:
    """report.html (the verdict, then Evidently's sections), report.json and the
    Evidently snapshot; returns the snapshot (None for a window too small to report)."""
    block = verdict_block(verdict, context)
    if verdict.n_current < 10:
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'></head><body>{block}</body></html>"
        )
        (folder / "report.html").write_text(page, encoding="utf-8")
        return None
    snapshot = evidently_report(verdict, config, timestamp)
    snapshot.save_html(str(folder / "evidently.html"))
    snapshot.save_json(str(folder / "report.json"))
    (folder / "evidently_snapshot.json").write_text(snapshot.dumps())
    page = (folder / "evidently.html").read_text(encoding="utf-8")
    body = re.search(r"<body[^>]*>", page)
    if body is None:
        raise ValueError("Evidently's report has no <body>")
    page = page[: body.end()] + block + page[body.end() :]
    (folder / "report.html").write_text(page, encoding="utf-8")
    (folder / "evidently.html").unlink()
    return snapshot
