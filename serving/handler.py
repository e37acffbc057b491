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

        threads = Settings().serving_threads
        self.runtime = InferenceRuntime.from_folder(model_dir, version, threads=threads)
        from serving.served_log import ServedLog

        self.recorder = ServedLog.from_archive(model_dir, self.task, version)
        self.initialized = True
        log.info("dualmedia %s model version %s ready", self.task, version)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        from serving.protocol import BadRequest, parse_request

        answers: list[Any] = [None] * len(data)
        valid: list[tuple[int, Any]] = []
        catalogue = self.runtime.catalogue_modalities() or self.runtime.modalities
        for i, row in enumerate(data):
            context.set_response_content_type(i, "application/json")
            try:
                request = parse_request(
                    self.task, row, self.runtime.media, catalogue, self.runtime.bounds
                )
                valid.append((i, request))
            except BadRequest as exc:
                context.set_response_status(exc.status, _phrase(exc.status), i)
                answers[i] = json.dumps(exc.to_dict())
        if valid:
            try:
                results = self.runtime.answer(self.task, [r for _, r in valid])
            except ValueError as exc:  # e.g. a modality this model has no encoder for
                for i, _ in valid:
                    context.set_response_status(422, "Unprocessable Entity", i)
                    answers[i] = json.dumps({"error": "unprocessable", "message": str(exc)})
            else:
                for (i, request), result in zip(valid, results, strict=True):
                    embeddings = result.pop("_embeddings", None)
                    answers[i] = json.dumps(result)
                    if self.recorder is not None:
                        self.recorder.record(request, result, embeddings)
        return answers


def _phrase(status: int) -> str:
    return {400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}.get(status, "Error")
