"""TorchServe handler for the embed, search and insights endpoints.

TorchServe loads this file from the archive; it must define exactly one class. The
same archive is registered under three model names ("embed", "search", "insights"):
the name picks the task. Each request of a batch is validated on its own, so a bad
request gets its own 4xx JSON answer while the rest of the batch is served and the
worker keeps running. Weights load with safetensors, vectors with allow_pickle=False:
nothing from the archive is ever unpickled.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)


class DualmediaHandler:
    def __init__(self) -> None:
        self.runtime: Any = None
        self.task = ""
        self.initialized = False
        self.recorder: Any = None
        self.max_body_bytes: int | None = None  # set from the settings in initialize

    def initialize(self, context: Any) -> None:
        from serving.protocol import TASKS
        from serving.runtime import InferenceRuntime

        model_dir = context.system_properties["model_dir"]
        name = context.model_name
        self.task = name.rsplit("-", 1)[-1]
        if self.task not in TASKS:
            raise ValueError(f"model name {name!r} must end with one of {TASKS}")
        version = context.manifest["model"]["modelVersion"]
        from dualmedia.settings import Settings

        settings = Settings()
        threads = settings.serving_threads
        self.max_body_bytes = settings.serving_max_request_bytes
        self.runtime = InferenceRuntime.from_folder(model_dir, version, threads, settings)
        from serving.served_log import ServedLog

        self.recorder = ServedLog.from_archive(
            model_dir, self.task, version, on_drop=_dropped_rows_counter(context, name)
        )
        self.initialized = True
        log.info("dualmedia %s model version %s ready", self.task, version)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        from serving.protocol import BadRequest, parse_request

        answers: list[Any] = [None] * len(data)
        valid: list[tuple[int, Any]] = []
        catalogue = self.runtime.catalogue_targets() or self.runtime.modalities
        for i, row in enumerate(data):
            context.set_response_content_type(i, "application/json")
            try:
                request = parse_request(self.task, row, self.runtime.media, catalogue,
                                        self.runtime.bounds, self.max_body_bytes)  # fmt: skip
            except BadRequest as exc:
                answers[i] = _refusal(context, i, exc.status, exc.to_dict())
            except RecursionError:
                error = {"error": "too_deeply_nested", "field": None, "message": "the body "
                         "is nested too deeply"}  # fmt: skip
                answers[i] = _refusal(context, i, 400, error)
            except MemoryError:
                error = {"error": "payload_too_large", "field": None, "message": "too large"}
                answers[i] = _refusal(context, i, 413, error)
            except Exception:  # our bug: this request's 500, never its batch's
                log.exception("request %d of a %s batch could not be parsed", i, self.task)
                answers[i] = _refusal(context, i, 500, _INTERNAL)
            else:
                valid.append((i, request))
        for (i, request), (status, result) in self._answer(valid):
            if status != 200:
                answers[i] = _refusal(context, i, status, result)
                continue
            embeddings = result.pop("_embeddings", None)
            answers[i] = json.dumps(result)
            if self.recorder is not None:
                self.recorder.record(request, result, embeddings)
        return answers

    def _answer(self, valid: list[tuple[int, Any]]) -> list[tuple[Any, tuple[int, Any]]]:
        """(status, answer) per request: the batch's answers; when the batch fails, each
        request alone, so a request that fails gets its own error and every other one its
        normal answer."""
        from serving.protocol import BadRequest

        if not valid:
            return []
        try:
            results = self.runtime.answer(self.task, [r for _, r in valid])
            return [(item, (200, result)) for item, result in zip(valid, results, strict=True)]
        except Exception:
            log.warning("a %s batch of %d failed; answering its requests one by one",
                        self.task, len(valid))  # fmt: skip
        answered: list[tuple[Any, tuple[int, Any]]] = []
        for i, request in valid:
            try:
                answered.append(((i, request), (200, self.runtime.answer(self.task, [request])[0])))
            except BadRequest as exc:  # e.g. a filter on an attribute no item has
                answered.append(((i, request), (exc.status, exc.to_dict())))
            except ValueError as exc:  # e.g. a modality this model has no encoder for
                error = {"error": "unprocessable", "field": None, "message": str(exc)}
                answered.append(((i, request), (422, error)))
            except Exception:
                log.exception("request %d of a %s batch failed", i, self.task)
                answered.append(((i, request), (500, _INTERNAL)))
        return answered


def _dropped_rows_counter(context: Any, model_name: str) -> Any:
    """`on_drop` for the served-request log: rows it had to drop are counted in the
    TorchServe metric ServedRowsDropped (model_metrics.log, dimension ModelName)."""
    from ts.metrics.metric_type_enum import MetricTypes

    metric = context.metrics.add_metric_to_cache(
        "ServedRowsDropped", "count", ["ModelName"], MetricTypes.COUNTER
    )
    return lambda n: metric.add_or_update(n, [model_name])


_INTERNAL = {"error": "internal_error", "field": None, "message": "the server failed on this "
             "request; it keeps serving the others"}  # fmt: skip


def _refusal(context: Any, i: int, status: int, error: dict[str, Any]) -> str:
    context.set_response_status(status, _phrase(status), i)
    return json.dumps(error)


def _phrase(status: int) -> str:
    return {
        400: "Bad Request",
        404: "Not Found",
        413: "Payload Too Large",
        422: "Unprocessable Entity",
        500: "Internal Server Error",
    }.get(status, "Error")
