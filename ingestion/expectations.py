"""The Great Expectations suite and checkpoint, as code, over a batch's record table.

The record table holds one row per accepted record: id, modality presence, each
modality's statistics (its registry module names them and adds its own expectations on
them), and each label as its class name. The suite is built from
the dataset's label schema and the ingestion config, never from hard-coded labels.
Every run renders Data Docs (HTML) into a folder that ingestion uploads to S3.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dualmedia import modalities
from dualmedia.contract import BinaryLabel, DatasetSpec
from dualmedia.snapshot import stat_columns
from ingestion.config import IngestConfig

SITE = "dualmedia"


@dataclass
class FailedExpectation:
    expectation: str
    column: str | None
    observed: Any
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expectation": self.expectation,
            "column": self.column,
            "observed": self.observed,
            **self.detail,
        }


@dataclass
class SuiteOutcome:
    batch: str
    success: bool
    evaluated: int
    failed: list[FailedExpectation]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": [f.to_dict() for f in self.failed],
        }


def summary_row(row: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """An accepted snapshot row without its media: id, statistics, presence, labels."""
    summary: dict[str, Any] = {"id": row["id"]}
    for m in modalities.specs(spec.modalities):
        fields = [name for name, _ in m.record_fields()]
        summary[m.has_column] = any(row.get(f) is not None for f in fields)
        summary.update({c: row.get(c) for c in m.stat_columns})
    summary.update({k: v for k, v in row.items() if k.startswith("label__")})
    return summary


def record_table(rows: list[dict[str, Any]], spec: DatasetSpec) -> pd.DataFrame:
    """The table the suite validates, from `summary_row`s."""
    columns: dict[str, list[Any]] = {"id": [r["id"] for r in rows]}
    for col in stat_columns(spec):
        columns[col] = [r.get(col) for r in rows]
    for m in modalities.specs(spec.modalities):
        columns[m.has_column] = [bool(r.get(m.has_column)) for r in rows]
    for name, label in spec.labels.items():
        classes = label.classes
        columns[f"label_{name}"] = [
            None if r.get(f"label__{name}") is None else classes[r[f"label__{name}"]] for r in rows
        ]
    df = pd.DataFrame(columns)
    for col in stat_columns(spec):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def build_suite(spec: DatasetSpec, config: IngestConfig, n_rows: int) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=f"{spec.name}-records")
    add = suite.add_expectation
    add(gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=None))
    present = modalities.specs(spec.modalities)
    for col in ["id", *stat_columns(spec), *(m.has_column for m in present)]:
        add(gxe.ExpectColumnToExist(column=col))
    add(gxe.ExpectColumnValuesToBeOfType(column="id", type_="object"))
    add(gxe.ExpectColumnValuesToNotBeNull(column="id"))
    add(gxe.ExpectColumnValuesToBeUnique(column="id"))
    for col in stat_columns(spec):
        add(gxe.ExpectColumnValuesToBeOfType(column=col, type_="float64"))
    bounds = config.media_bounds(spec)
    for m in present:
        # Null rate per declared modality (a missing modality leaves its size column null).
        add(
            gxe.ExpectColumnValuesToNotBeNull(
                column=m.presence_column,
                mostly=round(1.0 - config.max_missing_rate, 6),
                meta={"check": "missing_rate", "modality": m.name},
            )
        )
        for expectation, kwargs in m.expectations(bounds.section(m.name)):
            add(getattr(gxe, expectation)(**kwargs))
    for name, label in spec.labels.items():
        col = f"label_{name}"
        add(gxe.ExpectColumnToExist(column=col))
        domain = label.classes
        add(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=domain))
        if n_rows < config.balance_min_records:
            continue
        # Class balance: each class's share (over labelled rows) within [min, max].
        for cls in domain:
            add(
                gxe.ExpectColumnValuesToBeInSet(
                    column=col,
                    value_set=[cls],
                    mostly=config.min_class_share,
                    meta={"check": "class_share_min", "label": name, "class": cls},
                )
            )
            add(
                gxe.ExpectColumnValuesToNotBeInSet(
                    column=col,
                    value_set=[cls],
                    mostly=round(1.0 - config.max_class_share, 6),
                    meta={"check": "class_share_max", "label": name, "class": cls},
                )
            )
        if not isinstance(label, BinaryLabel):
            add(gxe.ExpectColumnDistinctValuesToContainSet(column=col, value_set=domain))
    return suite


class Validator:
    """One GX context. `validate` runs a batch's checkpoint and returns its outcome with
    the stored result (JSON); `add_result` files such a result, made by any process, in
    this context; `index` renders the Data Docs site in `docs_dir` from every result filed
    or run here. So batches can be validated apart (one Airflow task each, on any worker)
    and their results rendered together by one step, with GX's own pages."""

    def __init__(self, docs_dir: Path) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.docs_dir = Path(docs_dir).resolve()
        self.docs_dir.mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        # The ephemeral context pre-creates a site in a random temp folder: replace it.
        for site in list(self.context.list_data_docs_sites()):
            self.context.delete_data_docs_site(site)
        self.context.add_data_docs_site(
            site_name=SITE,
            site_config={
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(self.docs_dir),
                },
            },
        )
        self.datasource = self.context.data_sources.add_pandas(name="records")

    def _add_suite(self, batch: str, spec: DatasetSpec, config: IngestConfig, n_rows: int) -> Any:
        suite = build_suite(spec, config, n_rows)
        suite.name = f"{spec.name}-{batch}"
        return self.context.suites.add(suite)

    def validate(
        self, batch: str, table: pd.DataFrame, spec: DatasetSpec, config: IngestConfig
    ) -> tuple[SuiteOutcome, dict[str, Any]]:
        """The batch's outcome, and its stored result for `add_result` (JSON-able)."""
        import great_expectations as gx

        asset = self.datasource.add_dataframe_asset(name=batch)
        batch_definition = asset.add_batch_definition_whole_dataframe(name=f"{batch}-all")
        suite = self._add_suite(batch, spec, config, len(table))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate-{batch}", data=batch_definition, suite=suite)
        )
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=f"checkpoint-{batch}",
                validation_definitions=[definition],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": table})
        failed: list[FailedExpectation] = []
        evaluated = 0
        stored: dict[str, Any] = {}
        for key, validation in result.run_results.items():
            stored = {
                "key": list(key.to_tuple()),
                "rows": len(table),
                "result": self.context.validation_results_store.serialize(validation),
            }
            evaluated += validation.statistics["evaluated_expectations"]
            for r in validation.results:
                if r.success:
                    continue
                cfg = r.expectation_config
                res = r.result or {}
                observed = res.get("observed_value")
                if observed is None and "unexpected_percent" in res:
                    observed = f"{res['unexpected_percent']:.2f}% unexpected"
                failed.append(
                    FailedExpectation(
                        cfg.type, cfg.kwargs.get("column"), observed, dict(cfg.meta or {})
                    )
                )
        return SuiteOutcome(batch, bool(result.success), evaluated, failed), stored

    def add_result(
        self, batch: str, stored: dict[str, Any], spec: DatasetSpec, config: IngestConfig
    ) -> None:
        """File a result that `validate` returned (here or in another process), with the
        suite it ran (rebuilt: the suite is a function of spec, config and row count)."""
        from great_expectations.data_context.types.resource_identifiers import (
            ValidationResultIdentifier,
        )

        self._add_suite(batch, spec, config, int(stored["rows"]))
        store = self.context.validation_results_store
        key = ValidationResultIdentifier.from_tuple(tuple(stored["key"]))
        store.set(key, store.deserialize(stored["result"]))

    def index(self) -> Path:
        """Render the site; its pages load their scripts and styles from the site itself."""
        from ingestion.data_docs import bundle

        self.context.build_data_docs(site_names=[SITE])
        bundle(self.docs_dir)
        return self.docs_dir / "index.html"
