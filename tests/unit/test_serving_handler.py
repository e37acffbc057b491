"""The handler's per-request isolation with a stand-in runtime (an inference failure that
a real model cannot be made to raise on demand). tests/integration/test_serving.py sends
real hostile traffic to a real TorchServe beside this."""

from __future__ import annotations

import json
from typing import Any

from dualmedia.modalities import MediaBounds, MediaConfig
from serving.handler import DualmediaHandler


class Context:
    """What the handler uses of TorchServe's context: per-request status and type."""

    def __init__(self) -> None:
        self.status: dict[int, int] = {}

    def set_response_content_type(self, i: int, value: str) -> None:
        assert value == "application/json"

    def set_response_status(self, code: int, phrase: str, idx: int = 0) -> None:
        self.status[idx] = code


class Runtime:
    """Answers each text with its length; some texts make inference fail."""

    media, bounds, modalities = MediaConfig(), MediaBounds(), ["text"]

    def __init__(self, failures: dict[str, BaseException]) -> None:
        self.failures, self.calls = failures, []

    def catalogue_targets(self) -> list[str]:
        return ["text"]

    def answer(self, task: str, requests: list[Any]) -> list[dict[str, Any]]:
        texts = [r.inputs.items["text"] for r in requests]
        self.calls.append(len(requests))
        for text in texts:
            for marker, error in self.failures.items():
                if marker in text:
                    raise error
        return [{"n": len(t)} for t in texts]


def handle(bodies: list[bytes], failures: dict[str, BaseException]) -> tuple[list, dict, Runtime]:
    handler = DualmediaHandler()
    handler.task, handler.runtime = "embed", Runtime(failures)
    handler.max_body_bytes = 1 << 20
    context = Context()
    answers = handler.handle([{"body": b} for b in bodies], context)
    return [json.loads(a) for a in answers], context.status, handler.runtime


def body(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def test_a_request_that_breaks_inference_fails_alone() -> None:
    failures = {"boom": RuntimeError("a bug"), "deep": RecursionError(), "huge": MemoryError()}
    texts = ["fine one", "boom here", "fine two", "deep thought", "huge one", "fine three"]
    answers, status, runtime = handle([body(t) for t in texts], failures)
    alone = {t: handle([body(t)], {})[0][0] for t in texts if "fine" in t}
    for i, text in enumerate(texts):
        if "fine" in text:
            assert i not in status and answers[i] == alone[text]
        else:
            assert status[i] == 500 and answers[i]["error"] == "internal_error"
    assert runtime.calls[0] == len(texts)  # the batch was tried first, then one by one
    assert runtime.calls[1:] == [1] * len(texts)


def test_a_bad_body_is_refused_before_the_batch_runs() -> None:
    bodies = [body("fine"), b"[" * 50_000, b"{not json", body("also fine")]
    answers, status, runtime = handle(bodies, {})
    assert status == {1: 400, 2: 400}
    assert answers[1]["error"] == "too_deeply_nested" and answers[2]["error"] == "not_json"
    assert runtime.calls == [2]  # one batch, of the two good requests
