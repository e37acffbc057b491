"""Serving latency and throughput: TorchServe vs `mlflow models serve` vs the in-process model.

One run starts its own private services on free ports in a temporary folder (object
storage for the served-request log, TorchServe with token auth, `mlflow models serve`)
and stops them at the end; the default ports (a demo stack) are never touched. The
model is the default architecture (configs/train/default.yaml), randomly initialised:
speed does not depend on training.

For `embed` (one text) and `insights` (text + JPEG + WAV) it measures p50 / p99 latency
and throughput at concurrency 1, 8, 16 (embed) and 32, side by side, for
  - TorchServe with the configured settings (Settings.serving_batch_size,
    serving_max_batch_delay_ms, serving_workers, serving_threads), registered the
    way serving.deploy registers them,
  - TorchServe without batching (the effect of batching), batching with no wait
    (batch 2 / 0 ms: what is already queued; a lone request never waits), and with the
    cores split as 1 or 2 workers x 1 thread or 1 worker x 2 threads
    (more with --variants),
  - `mlflow models serve` (1 worker) of the same weights, saved as the training pyfunc.
    The pyfunc only predicts, so its `embed` row is a text-only prediction (the same
    text encoder plus the fusion heads): the nearest thing it can answer,
  - the in-process model (InferenceRuntime.answer on one parsed request: preprocessing
    and forward, no HTTP, no JSON; torch and numpy's BLAS on the configured threads),
    at concurrency 1, and TorchServe's GET /ping (the HTTP floor: client, frontend and
    token check, no worker),
  - the in-process model on batches of the configured batch size with all the threads
    TorchServe's workers have together (workers x threads): the throughput ceiling on
    these cores, at concurrency >= the batch size; TorchServe's throughput is also
    given as a ratio to it,
and prints the ratios the serving targets are stated in. At concurrency 1 it also
splits each TorchServe p50 into the worker's own time (its PredictionTime metric,
matched to the request by x-request-id) and the rest (frontend, the hop to the Python
worker and back). Every text is unique, so the frozen text encoder's cache never answers.

The servers of one cell are measured in interleaved rounds (A B C, B C A, ...), so
on a machine shared with other work they see the same background load; the `bg`
column says how many cores other processes used meanwhile. Timings only: nothing
here fails on a threshold.

    .venv/bin/python benchmarks/serving.py [--requests 200] [--quick] [--json]
        [--variants nobatch,nowait,w1t1,w2t1,w1t2]  # more: see --help

The default run takes about 4-6 minutes on 2 cores (--quick: about 2).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path and its name would hide
# the `serving` package: look packages up from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_CONFIG = REPO / "configs" / "train" / "default.yaml"
VENV_BIN = Path(sys.executable).parent
TASKS = ("embed", "insights")
GRID = [(t, c) for t in TASKS for c in {"embed": (1, 8, 16, 32), "insights": (1, 8, 32)}[t]]
MLFLOW = "mlflow models serve"
IN_PROCESS = "in-process"
IN_PROCESS_BATCHED = "in-process batched"
REVIEWS = (
    "the mug arrived cracked and the seller never answered my emails",
    "lovely lamp, warm light, exactly as in the photos",
    "headphones sound fine but the left ear cup rattles when I walk",
    "wrong colour sent, otherwise a decent jacket for the price",
    "the blender is loud but crushes ice in seconds, very happy",
    "box was soaked and the book pages are stuck together",
)


# ---- request bodies ------------------------------------------------------------------
def _jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    gradient = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1, 3)
    pixels = np.clip(gradient + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode()


def _wav(seed: int, seconds: float = 2.0, rate: int = 16000) -> str:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    voice = 0.3 * np.sin(2 * np.pi * rng.uniform(120, 300) * t) + 0.02 * rng.normal(size=t.size)
    buffer = io.BytesIO()
    sf.write(buffer, voice, rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


class Bodies:
    """Request fields; every text is unique (no cache hits), media cycle a few files."""

    def __init__(self) -> None:
        self.images = [_jpeg(seed) for seed in range(4)]
        self.audios = [_wav(seed) for seed in range(4)]
        self.counter = itertools.count()

    def fields(self, task: str) -> dict[str, str]:
        i = next(self.counter)
        text = f"order {i}: {REVIEWS[i % len(REVIEWS)]}"
        if task == "embed":
            return {"text": text}
        return {"text": text, "image": self.images[i % 4], "audio": self.audios[i % 4]}


# ---- measuring -----------------------------------------------------------------------
class CpuMeter:
    """CPU the rest of the machine used meanwhile, in cores. This process and everything
    it started (services, their workers) do not count."""

    def __init__(self) -> None:
        self.root = psutil.Process()

    def _ours(self) -> float:
        total = 0.0
        for p in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "steal", 0.0)

    def __enter__(self) -> CpuMeter:
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = max(time.perf_counter() - self.t0, 1e-9)
        ours = self._ours() - self.ours0
        self.other_core_seconds = max(0.0, (self._busy() - self.busy0) - ours)


@dataclass
class Measured:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # TorchServe answers with an x-request-id; its metrics log names the same id.
    seconds_by_request_id: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    other_core_seconds: float = 0.0

    def add(self, other: Measured) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.seconds_by_request_id |= other.seconds_by_request_id
        self.wall += other.wall
        self.other_core_seconds += other.other_core_seconds


def load_http(
    url: str,
    headers: dict[str, str],
    bodies: list[bytes],
    concurrency: int,
    budget_s: float,
    method: str = "POST",
) -> Measured:
    """Send the bodies `concurrency` at a time, one keep-alive connection per thread; no
    new request starts after `budget_s`. Latency counts until the whole answer is read.

    The client is http.client, not `requests`: `requests` spends about 1.5 ms of Python
    per call on this machine, which would be charged to every server measured."""
    result = Measured()
    lock = threading.Lock()
    order = iter(range(len(bodies)))
    headers = {**headers, "Content-Type": "application/json"}
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    gate = threading.Barrier(concurrency + 1)
    stop_at = [math.inf]

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def worker() -> None:
        connection = connect()
        mine: list[float] = []
        by_id: dict[str, float] = {}
        gate.wait()
        while time.perf_counter() < stop_at[0]:
            with lock:
                i = next(order, None)
            if i is None:
                break
            body = bodies[i] if method == "POST" else None
            t0 = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200
                why = f"HTTP {response.status}: {answer[:200].decode(errors='replace')}"
            except (OSError, http.client.HTTPException) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = connect()
            elapsed = time.perf_counter() - t0
            if ok:
                mine.append(elapsed)
                request_id = response.getheader("x-request-id")
                if request_id:
                    by_id[request_id] = elapsed
            else:
                with lock:
                    result.errors.append(why)
        with lock:
            result.latencies.extend(mine)
            result.seconds_by_request_id |= by_id
        connection.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + budget_s
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    result.wall = time.perf_counter() - t0
    return result


class Endpoint:
    """One thing to measure: a served model (HTTP) or the in-process runtime."""

    name: str
    kind: str  # "torchserve" | "mlflow" | "in-process" | "http floor"
    config: ServingConfig | None = None

    def applies(self, task: str, concurrency: int) -> bool:
        return True

    def payloads(self, task: str, n: int) -> list[Any]:
        raise NotImplementedError

    def measure(self, task: str, payloads: list[Any], concurrency: int, budget: float) -> Measured:
        raise NotImplementedError


class HttpEndpoint(Endpoint):
    def __init__(
        self,
        name: str,
        kind: str,
        url_of: Callable[[str], str],
        headers: Callable[[], dict[str, str]],
        wrap: Callable[[dict[str, str]], Any],
        bodies: Bodies,
        config: ServingConfig | None = None,
    ) -> None:
        self.name, self.kind, self.url_of, self.headers = name, kind, url_of, headers
        self.wrap, self.bodies, self.config = wrap, bodies, config

    def payloads(self, task: str, n: int) -> list[bytes]:
        return [json.dumps(self.wrap(self.bodies.fields(task))).encode() for _ in range(n)]

    def measure(self, task: str, payloads: list[Any], concurrency: int, budget: float) -> Measured:
        return load_http(self.url_of(task), self.headers(), payloads, concurrency, budget)


class PingEndpoint(Endpoint):
    """TorchServe's GET /ping, answered by its frontend without a worker: the floor of
    any request (client, HTTP, token check), shown next to embed at concurrency 1."""

    kind = "http floor"

    def __init__(self, url: str, headers: Callable[[], dict[str, str]]) -> None:
        self.name, self.url, self.headers = "TorchServe GET /ping (HTTP floor)", url, headers

    def applies(self, task: str, concurrency: int) -> bool:
        return (task, concurrency) == ("embed", 1)

    def payloads(self, task: str, n: int) -> list[bytes]:
        return [b""] * n

    def measure(self, task: str, payloads: list[Any], concurrency: int, budget: float) -> Measured:
        return load_http(self.url, self.headers(), payloads, concurrency, budget, method="GET")


class InProcessEndpoint(Endpoint):
    """InferenceRuntime.answer on one freshly parsed request at a time."""

    kind = IN_PROCESS

    def applies(self, task: str, concurrency: int) -> bool:
        return concurrency == 1

    def __init__(self, runtime: Any, threads: int, bodies: Bodies) -> None:
        from serving.protocol import parse_request

        self.runtime, self.bodies, self.parse = runtime, bodies, parse_request
        self.threads = threads
        self.catalogue = runtime.catalogue_targets() or runtime.modalities
        self.name = f"in-process ({threads_label(threads)})"

    def payloads(self, task: str, n: int) -> list[dict[str, str]]:
        return [self.bodies.fields(task) for _ in range(n)]

    def measure(self, task: str, payloads: list[Any], concurrency: int, budget: float) -> Measured:
        # The runtime bounds torch and numpy's BLAS to `threads`, as in a TorchServe worker.
        result = Measured()
        stop_at = time.perf_counter() + budget
        t_start = time.perf_counter()
        for body in payloads:
            if time.perf_counter() >= stop_at:
                break
            t0 = time.perf_counter()
            request = self.parse(
                task, {"body": body}, self.runtime.media, self.catalogue, self.runtime.bounds
            )
            self.runtime.answer(task, [request])
            result.latencies.append(time.perf_counter() - t0)
        result.wall = time.perf_counter() - t_start
        return result


class InProcessBatchedEndpoint(InProcessEndpoint):
    """The ceiling a server can approach on these cores: InferenceRuntime.answer on
    batches of the configured batch size, on all the threads TorchServe's workers use
    together (workers x threads), with no HTTP, no queueing and no second process. Each
    request's latency is its batch's."""

    kind = IN_PROCESS_BATCHED

    def __init__(self, runtime: Any, threads: int, batch: int, bodies: Bodies) -> None:
        super().__init__(runtime, threads, bodies)
        self.batch = batch
        self.name = f"in-process batched ({batch}/batch, {threads_label(threads)})"

    def applies(self, task: str, concurrency: int) -> bool:
        return concurrency >= self.batch

    def measure(self, task: str, payloads: list[Any], concurrency: int, budget: float) -> Measured:
        result = Measured()
        stop_at = time.perf_counter() + budget
        t_start = time.perf_counter()
        for at in range(0, len(payloads), self.batch):
            if time.perf_counter() >= stop_at:
                break
            t0 = time.perf_counter()
            batch = [
                self.parse(
                    task, {"body": body}, self.runtime.media, self.catalogue, self.runtime.bounds
                )
                for body in payloads[at : at + self.batch]
            ]
            self.runtime.answer(task, batch)
            result.latencies += [time.perf_counter() - t0] * len(batch)
        result.wall = time.perf_counter() - t_start
        return result


def threads_label(threads: int) -> str:
    return f"{threads} thread" + ("s" if threads != 1 else "")


@dataclass
class Cell:
    server: str
    kind: str
    task: str
    concurrency: int
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    throughput_rps: float | None
    errors: int
    background_cores: float
    config: dict[str, Any] | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)
    error_sample: str = ""
    # TorchServe at concurrency 1, per request matched by id to the worker's PredictionTime
    # (the whole handler: parse, forward, JSON answer, served-log record): its p50, and the
    # p50 of the rest of each request's time (client and HTTP, frontend, the hop to the
    # Python worker and TorchServe's protocol code there), over `handler_matched` requests.
    handler_p50_ms: float | None = None
    outside_handler_p50_ms: float | None = None
    handler_matched: int = 0
    client_ms_by_request_id: dict[str, float] = field(default_factory=dict, repr=False)


def to_cell(endpoint: Endpoint, task: str, concurrency: int, m: Measured) -> Cell:
    ms = np.asarray(m.latencies) * 1000.0
    ok = len(ms) > 0
    return Cell(
        server=endpoint.name,
        kind=endpoint.kind,
        task=task,
        concurrency=concurrency,
        requests=len(m.latencies) + len(m.errors),
        p50_ms=round(float(np.percentile(ms, 50)), 1) if ok else None,
        p99_ms=round(float(np.percentile(ms, 99)), 1) if ok else None,
        throughput_rps=round(len(ms) / m.wall, 1) if ok and m.wall > 0 else None,
        errors=len(m.errors),
        background_cores=round(m.other_core_seconds / m.wall, 2) if m.wall > 0 else 0.0,
        config=asdict(endpoint.config) if endpoint.config else None,
        error_sample=m.errors[0][:300] if m.errors else "",
        client_ms_by_request_id={i: s * 1000.0 for i, s in m.seconds_by_request_id.items()},
    )


def measure_cell(
    endpoints: list[Endpoint],
    task: str,
    concurrency: int,
    args: argparse.Namespace,
    progress: Callable[[str], None],
) -> list[Cell]:
    """Warm every endpoint up, then measure them in rotating interleaved rounds."""
    here = [e for e in endpoints if e.applies(task, concurrency)]
    warmup = max(4, concurrency)
    for e in here:
        e.measure(task, e.payloads(task, warmup), concurrency, budget=math.inf)
    totals = {e.name: Measured() for e in here}
    per_round = math.ceil(args.requests / args.rounds)
    budget = args.cell_seconds / args.rounds
    for r in range(args.rounds):
        shift = r % len(here)
        for e in here[shift:] + here[:shift]:
            payloads = e.payloads(task, per_round)
            with CpuMeter() as meter:
                m = e.measure(task, payloads, concurrency, budget)
            m.other_core_seconds = meter.other_core_seconds * (m.wall / meter.wall)
            totals[e.name].add(m)
    cells = [to_cell(e, task, concurrency, totals[e.name]) for e in here]
    for c in cells:
        progress(
            f"  {task:<8} c={concurrency:<3} {c.server:<46} p50 {_fmt(c.p50_ms):>7} ms  "
            f"p99 {_fmt(c.p99_ms):>7} ms  {_fmt(c.throughput_rps):>6} req/s  "
            f"n {c.requests:<4} err {c.errors}  bg {c.background_cores:.2f}"
        )
    return cells


# ---- services ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TORCHSERVE_PORTS = [
    "torchserve_inference_port",
    "torchserve_management_port",
    "torchserve_metrics_port",
    "torchserve_grpc_inference_port",
    "torchserve_grpc_management_port",
]


def private_settings(home: Path) -> Any:
    """Settings for the services of this run only: a temp home, free ports, no .env."""
    from dualmedia.settings import Settings

    ports = [
        "s3_port",
        "mlflow_port",
        "airflow_port",
        "airflow_worker_log_port",
        "airflow_trigger_log_port",
        *TORCHSERVE_PORTS,
    ]
    values: dict[str, Any] = {name: free_port() for name in ports}
    return Settings(_env_file=None, home=home, startup_timeout_s=240.0, **values)  # type: ignore[call-arg]


def build_model(
    tmp: Path, settings: Any = None, catalogue_items: int = 200, version: str = "1"
) -> tuple[Path, Path, int]:
    """The default architecture, random weights: saved model dir, .mar archive, size.
    With `settings`, a search catalogue of random unit vectors (`catalogue_items` per
    modality and fused; the default index choice) goes to its object storage."""
    import torch

    from dualmedia.modalities import MediaConfig
    from dualmedia.settings import get_settings
    from dualmedia.storage import ObjectStore
    from serving.archive import build_archive
    from serving.catalogue import Catalogue, CatalogueItem
    from serving.search_store import publish_catalogue, search_prefix
    from synthetic import dataset_spec
    from training.config import load_train_config
    from training.models.factory import build_fused_model, save_fused_model

    torch.manual_seed(0)
    config = load_train_config(DEFAULT_CONFIG).model
    model = build_fused_model(dataset_spec(), MediaConfig(), config)
    model_dir = tmp / "model"
    save_fused_model(model, model_dir)
    params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    vectors = {}
    for m in ("text", "image", "audio", "fused"):
        v = rng.normal(size=(catalogue_items, config.embed_dim)).astype(np.float32)
        vectors[m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    ids = [f"item-{i:06d}" for i in range(catalogue_items)]
    items = {
        i: CatalogueItem(text="review", batch=f"batch-{n % 100:03d}") for n, i in enumerate(ids)
    }
    catalogue = Catalogue(
        {m: ids for m in vectors}, vectors, items, version, get_settings().search_index
    )
    info = {"dataset": "benchmark", "run_id": "benchmark", "snapshot_id": "benchmark"}
    if settings is not None:
        prefix = search_prefix(settings, "benchmark", version)
        info["search_uri"] = publish_catalogue(ObjectStore(settings), catalogue, prefix)["uri"]
    archive = build_archive(model_dir, info, tmp / "archives", "benchmark", version)
    return model_dir, archive, params


@dataclass
class ServingConfig:
    key: str  # "configured" or the variant's model-name prefix
    batch_size: int
    max_batch_delay_ms: int
    workers: int
    threads: int

    @property
    def name(self) -> str:
        batching = (
            f"batch {self.batch_size}/{self.max_batch_delay_ms}ms"
            if self.batch_size > 1
            else "no batching"
        )
        star = " *" if self.key == "configured" else ""
        return f"TorchServe {self.workers}w x {self.threads}t, {batching}{star}"

    @property
    def instance(self) -> int:
        """What needs a TorchServe of its own: the threads (from the worker's environment)."""
        return self.threads

    @property
    def shape(self) -> tuple[Any, ...]:
        delay = self.max_batch_delay_ms if self.batch_size > 1 else 0
        return (self.batch_size, delay, self.workers, self.threads)

    def model_name(self, task: str) -> str:
        # The handler takes the task from the name's last "-" part.
        return task if self.key == "configured" else f"{self.key}-{task}"


DEFAULT_VARIANTS = "nobatch,nowait,w1t1,w2t1,w1t2"


def variants(c: ServingConfig) -> dict[str, ServingConfig]:
    batch, delay = max(c.batch_size, 8), c.max_batch_delay_ms
    return {
        v.key: v
        for v in [
            ServingConfig("nobatch", 1, 0, c.workers, c.threads),
            # No wait: TorchServe batches what is already queued, at most 2 (pollBatch).
            ServingConfig("nowait", 2, 0, c.workers, c.threads),
            ServingConfig("delay2", batch, 2, c.workers, c.threads),
            ServingConfig("delay1", batch, 1, c.workers, c.threads),
            ServingConfig("delay5", batch, 5, c.workers, c.threads),
            ServingConfig("w1t1", c.batch_size, delay, 1, 1),
            ServingConfig("w2t1", c.batch_size, delay, 2, 1),
            ServingConfig("w1t2", c.batch_size, delay, 1, 2),
        ]
    }


def configurations(settings: Any, chosen: list[str]) -> list[ServingConfig]:
    """The configured settings first, then the chosen variants that differ from them."""
    c = ServingConfig(
        "configured",
        settings.serving_batch_size,
        settings.serving_max_batch_delay_ms,
        settings.serving_workers,
        settings.serving_threads,
    )
    known = variants(c)
    unknown = set(chosen) - set(known)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(known)}")
    out = [c]
    for key in chosen:
        if known[key].shape not in {o.shape for o in out}:  # not equal to one already there
            out.append(known[key])
    return out


PREDICTION_TIME = re.compile(r"PredictionTime\.ms:([\d.]+)\|.*?requestID:([0-9a-f,-]+?),timestamp")


def prediction_times(metrics_log: str) -> dict[str, float]:
    """Request id -> PredictionTime (ms) from TorchServe's model_metrics.log; a batch's
    line names all its requests, which each get the batch's time."""
    times: dict[str, float] = {}
    for match in PREDICTION_TIME.finditer(metrics_log):
        for request_id in match.group(2).split(","):
            times[request_id] = float(match.group(1))
    return times


class TorchServeInstance:
    """A private TorchServe (token auth on). The handler reads Settings.serving_threads
    from the worker's environment, so each thread count needs its own instance."""

    def __init__(self, settings: Any, archive: Path) -> None:
        from dualmedia.stack import Stack

        self.settings = settings
        self.archive = archive
        self.stack = Stack(settings, only=["torchserve"])

    def up(self) -> None:
        self.stack.up()
        store = self.settings.torchserve_model_store
        store.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.archive, store / self.archive.name)

    def register(self, config: ServingConfig) -> None:
        """The register call serving.deploy makes, with this config's batching/workers."""
        from serving.client import TorchServeClient

        client = TorchServeClient(self.settings)
        for task in TASKS:
            client.register(
                self.archive.name,
                config.model_name(task),
                batch_size=config.batch_size,
                max_batch_delay_ms=config.max_batch_delay_ms,
                workers=config.workers,
            )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.torchserve_key('inference')}"}

    def ping(self) -> PingEndpoint:
        return PingEndpoint(f"{self.settings.torchserve_inference}/ping", self.headers)

    def endpoint(self, config: ServingConfig, bodies: Bodies) -> HttpEndpoint:
        base = self.settings.torchserve_inference
        return HttpEndpoint(
            config.name,
            "torchserve",
            lambda task: f"{base}/predictions/{config.model_name(task)}",
            self.headers,
            lambda fields: fields,
            bodies,
            config,
        )

    def handler_times(self) -> dict[str, float]:
        """Request id -> the worker's PredictionTime (ms), from TorchServe's metrics log."""
        from dualmedia.stack.torchserve import TorchServeService

        path = TorchServeService(self.settings).state_dir / "logs" / "model_metrics.log"
        return prediction_times(path.read_text(errors="replace")) if path.exists() else {}

    def down(self) -> None:
        self.stack.down()


class MlflowServe:
    """`mlflow models serve` (1 worker) of the training pyfunc over the same weights."""

    def __init__(self, model_dir: Path, tmp: Path) -> None:
        self.model_dir, self.tmp = model_dir, tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "mlflow-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import mlflow

        from training.models.factory import load_fused_model_dir
        from training.models.pyfunc import (
            PYFUNC_ENTRY,
            code_paths,
            model_signature,
            pip_requirements,
        )

        path = self.tmp / "pyfunc"
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            mlflow.pyfunc.save_model(  # what training logs (training/train.py::_log_model)
                path=str(path),
                python_model=str(PYFUNC_ENTRY),
                artifacts={
                    "weights": str(self.model_dir / "weights.safetensors"),
                    "config": str(self.model_dir / "model.json"),
                },
                signature=model_signature(load_fused_model_dir(self.model_dir)),
                pip_requirements=pip_requirements(),
                code_paths=code_paths(self.tmp / "pyfunc-code"),
            )
        env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env["MLFLOW_TRACKING_URI"] = f"file:{self.tmp / 'mlruns'}"
        command = [
            str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(path),
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.tmp,
                start_new_session=True,  # its own process group: stop() ends uvicorn too
            )

    def wait_ready(self, timeout: float = 240.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow models serve exited ({self.proc.returncode}):\n{tail}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve not ready after {timeout:.0f} s")
            time.sleep(0.5)

    def endpoint(self, bodies: Bodies) -> HttpEndpoint:
        return HttpEndpoint(
            MLFLOW + " (1 worker)",
            "mlflow",
            lambda task: f"{self.url}/invocations",
            dict,
            lambda fields: {"dataframe_records": [fields]},
            bodies,
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# ---- the run -------------------------------------------------------------------------
def run(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    from dualmedia.stack import Stack
    from serving.runtime import InferenceRuntime

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="dualmedia-bench-serving-"))
    base = private_settings(tmp / "home")
    configs = configurations(base, [v for v in args.variants.split(",") if v])
    bodies = Bodies()
    cells: list[Cell] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
        # The served-request log and the search catalogue live here, as in production.
        s3 = Stack(base, only=["s3"])
        cleanup.callback(s3.down)
        s3.up()
        model_dir, archive, params = build_model(tmp, base)
        progress(f"model: default architecture, {params / 1e6:.1f} M parameters, random init")
        mlflow = MlflowServe(model_dir, tmp)
        cleanup.callback(mlflow.stop)
        mlflow.start()  # starts while TorchServe loads
        instances: dict[Any, TorchServeInstance] = {}
        endpoints: list[Endpoint] = []
        for config in configs:
            if config.instance not in instances:
                update: dict[str, Any] = {"serving_threads": config.threads}
                if instances:  # another instance: its own home and ports
                    update["home"] = tmp / f"home-{len(instances)}"
                    update.update({name: free_port() for name in TORCHSERVE_PORTS})
                instance = TorchServeInstance(base.model_copy(update=update), archive)
                cleanup.callback(instance.down)
                t0 = time.monotonic()
                instance.up()
                instances[config.instance] = instance
                progress(f"TorchServe ({threads_label(config.threads)}/worker) up: "
                         f"{time.monotonic() - t0:.0f} s")  # fmt: skip
            t0 = time.monotonic()
            instances[config.instance].register(config)
            progress(f"registered {config.name}: {time.monotonic() - t0:.0f} s")
            endpoints.append(instances[config.instance].endpoint(config, bodies))
        mlflow.wait_ready()
        endpoints.append(mlflow.endpoint(bodies))
        threads = configs[0].threads
        runtime = InferenceRuntime.from_folder(model_dir, "1", threads=threads)
        endpoints.append(InProcessEndpoint(runtime, threads, bodies))
        cores = configs[0].workers * configs[0].threads
        batched = InferenceRuntime.from_folder(model_dir, "1", threads=cores)
        endpoints.append(
            InProcessBatchedEndpoint(batched, cores, max(configs[0].batch_size, 2), bodies)
        )
        endpoints.append(instances[configs[0].instance].ping())
        for e in endpoints:
            # First requests after loading are slow everywhere; a TorchServe worker also
            # opens its S3 client at its first served-log flush (every 32 requests).
            n = 36 * e.config.workers if e.config else 8
            for task in [t for t in TASKS if e.applies(t, 1)]:
                e.measure(task, e.payloads(task, n), 8 if e.kind != IN_PROCESS else 1, 60.0)
        progress(f"servers ready after {time.monotonic() - started:.0f} s; measuring")
        for task, concurrency in GRID:
            cells += measure_cell(endpoints, task, concurrency, args, progress)
        time.sleep(1.0)  # TorchServe writes its metrics log asynchronously
        handler_ms: dict[str, float] = {}
        for instance in instances.values():
            handler_ms.update(instance.handler_times())
        for cell in cells:
            if (cell.kind, cell.concurrency) == ("torchserve", 1):
                split_by_handler(cell, handler_ms)
    return analyse(cells, configs, args, time.monotonic() - started)


def split_by_handler(cell: Cell, handler_ms: dict[str, float]) -> None:
    """Each request's time = the worker's handler time + the rest, matched by request id;
    no split unless nearly every request matched (a missing header, a rolled-over log)."""
    measured = cell.client_ms_by_request_id
    pairs = [(total, handler_ms[i]) for i, total in measured.items() if i in handler_ms]
    cell.handler_matched = len(pairs)
    answered = cell.requests - cell.errors
    if not pairs or len(pairs) < 0.95 * answered:
        return
    cell.handler_p50_ms = round(float(np.percentile([h for _, h in pairs], 50)), 1)
    rest = [total - h for total, h in pairs]
    cell.outside_handler_p50_ms = round(float(np.percentile(rest, 50)), 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def analyse(
    cells: list[Cell], configs: list[ServingConfig], args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    def find(task: str, concurrency: int, kind: str, key: str | None = None) -> Cell | None:
        for c in cells:
            if (c.task, c.concurrency, c.kind) == (task, concurrency, kind) and (
                key is None or (c.config or {}).get("key") == key
            ):
                return c
        return None

    for cell in cells:
        if cell.kind in (IN_PROCESS, IN_PROCESS_BATCHED, PingEndpoint.kind):
            continue
        ml = find(cell.task, cell.concurrency, "mlflow")
        if cell.kind == "torchserve":
            ceiling = find(cell.task, cell.concurrency, IN_PROCESS_BATCHED)
            cell.ratios["throughput_vs_in_process_batched"] = _ratio(
                cell.throughput_rps, ceiling.throughput_rps if ceiling else None
            )
            nobatch = find(cell.task, cell.concurrency, "torchserve", "nobatch")
            cell.ratios["throughput_vs_mlflow"] = _ratio(
                cell.throughput_rps, ml.throughput_rps if ml else None
            )
            cell.ratios["throughput_vs_no_batching"] = _ratio(
                cell.throughput_rps, nobatch.throughput_rps if nobatch else None
            )
        if cell.concurrency == 1:
            inproc = find(cell.task, 1, IN_PROCESS)
            cell.ratios["p50_vs_in_process"] = _ratio(
                cell.p50_ms, inproc.p50_ms if inproc else None
            )
            if cell.handler_p50_ms is not None:
                cell.ratios["handler_vs_in_process"] = _ratio(
                    cell.handler_p50_ms, inproc.p50_ms if inproc else None
                )

    targets = []
    for config in configs:
        embed16 = find("embed", 16, "torchserve", config.key)
        embed8 = find("embed", 8, "torchserve", config.key)
        checks = [
            (
                "embed c=16 throughput >= 2x mlflow models serve",
                embed16.ratios.get("throughput_vs_mlflow") if embed16 else None,
                "x",
                lambda v: v >= 2.0,
            ),
            (
                "text embed c=8 p99 < 100 ms",
                embed8.p99_ms if embed8 else None,
                "ms",
                lambda v: v < 100.0,
            ),
        ]
        for task in TASKS:
            c1 = find(task, 1, "torchserve", config.key)
            checks.append(
                (
                    f"{task} c=1 p50 <= 1.3x in-process",
                    c1.ratios.get("p50_vs_in_process") if c1 else None,
                    "x",
                    lambda v: v <= 1.3,
                )
            )
        for target, value, unit, ok in checks:
            targets.append(
                {
                    "config": config.key,
                    "server": config.name,
                    "target": target,
                    "value": value,
                    "unit": unit,
                    "met": value is not None and bool(ok(value)),
                }
            )
    return {
        "requests_per_cell": args.requests,
        "cell_seconds": args.cell_seconds,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "configured": asdict(configs[0]),
        "configs": [asdict(c) for c in configs],
        "seconds": round(seconds, 1),
        "median_background_cores": float(np.median([c.background_cores for c in cells])),
        "targets": targets,
        "cells": [asdict(c, dict_factory=_without_per_request) for c in cells],
    }


def _without_per_request(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in items if k != "client_ms_by_request_id"}


def _fmt(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def print_table(result: dict[str, Any]) -> None:
    c = result["configured"]
    print(
        f"\nup to {result['requests_per_cell']} requests per server and cell after warm-up "
        f"(at most {result['cell_seconds']:g} s each; n = how many), "
        f"{result['rounds']} interleaved rounds, {result['cpu_count']} CPU cores, "
        f"{result['seconds']:.0f} s in all.\n* configured (Settings): batch "
        f"{c['batch_size']}, max delay {c['max_batch_delay_ms']} ms, {c['workers']} worker(s) "
        f"x {c['threads']} torch thread(s).\nembed = one text; "
        "insights = text + 320x240 JPEG + 2 s WAV (base64 JSON).\n"
        f"{MLFLOW} only predicts: its embed rows are text-only predictions.\n"
        "bg = cores used by other processes meanwhile (0 on a quiet machine).\n"
        "thr/ceiling = throughput / the in-process batched model's on the same cores.\n"
    )
    header = ("task", "c", "server", "p50 ms", "p99 ms", "req/s", "n", "err", "bg",
              "thr/mlflow", "thr/no-batch", "thr/ceiling", "p50/in-proc")  # fmt: skip
    line = "{:<8} {:>2}  {:<46} {:>7} {:>7} {:>6} {:>4} {:>3} {:>4}  {:>10} {:>12} {:>11} {:>11}"
    print(line.format(*header))
    previous = None
    for cell in result["cells"]:
        if previous is not None and (cell["task"], cell["concurrency"]) != previous:
            print()
        previous = (cell["task"], cell["concurrency"])
        r = cell["ratios"]
        print(
            line.format(
                cell["task"],
                cell["concurrency"],
                cell["server"],
                _fmt(cell["p50_ms"]),
                _fmt(cell["p99_ms"]),
                _fmt(cell["throughput_rps"]),
                cell["requests"],
                cell["errors"],
                cell["background_cores"],
                _fmt(r.get("throughput_vs_mlflow"), "x"),
                _fmt(r.get("throughput_vs_no_batching"), "x"),
                _fmt(r.get("throughput_vs_in_process_batched"), "x"),
                _fmt(r.get("p50_vs_in_process"), "x"),
            )
        )
    print(f"\nmedian bg {result['median_background_cores']:.2f} cores.")
    split = [c for c in result["cells"] if (c["kind"], c["concurrency"]) == ("torchserve", 1)]
    if split:
        print(
            "\nwhere TorchServe's time goes at concurrency 1, per request matched by x-request-id"
            " to the worker's PredictionTime:\n  handler = parse, forward, JSON answer, "
            "served-log record; rest = client and HTTP, frontend, the hop to the Python worker"
        )
        for cell in split:
            if cell["handler_p50_ms"] is None:
                print(
                    f"  {cell['task']:<8} {cell['server']:<46} no split: "
                    f"{cell['handler_matched']} of {cell['requests']} requests matched"
                )
                continue
            print(
                f"  {cell['task']:<8} {cell['server']:<46} client p50 {cell['p50_ms']} ms: "
                f"handler p50 {cell['handler_p50_ms']} ms, rest p50 "
                f"{cell['outside_handler_p50_ms']} ms (n {cell['handler_matched']})   "
                f"handler/in-process {_fmt(cell['ratios'].get('handler_vs_in_process'), 'x')}"
            )
    print("\ntargets (2 cores):")
    configs = [cfg["key"] for cfg in result["configs"]]
    names = {t["config"]: t["server"] for t in result["targets"]}
    for key in configs:
        print(f"  {names[key]}")
        for t in [t for t in result["targets"] if t["config"] == key]:
            verdict = "met" if t["met"] else "NOT met"
            print(f"    {t['target']:<48} {_fmt(t['value'], ' ' + t['unit']):>10}  {verdict}")
    for cell in [cell for cell in result["cells"] if cell["errors"]]:
        print(f"errors: {cell['server']} {cell['task']} c={cell['concurrency']}: "
              f"{cell['error_sample']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=200, help="measured requests per server and cell"
    )
    parser.add_argument(
        "--cell-seconds",
        type=float,
        default=5.0,
        help="at most this long per server and cell (a slow server sends fewer requests)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per cell")
    parser.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="TorchServe variants next to the configured settings, comma-separated, from: "
        "nobatch, nowait (batch 2 / 0 ms), delay1, delay2, delay5 (batch 8 with that max "
        "delay), w1t1, w2t1, w1t2 (workers x threads)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="40 requests, 2 rounds, 3 s per server and cell"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = min(args.requests, 40), 2
        args.cell_seconds = min(args.cell_seconds, 3.0)
    warnings.filterwarnings("ignore")
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:4.0f} s] {message}", file=sys.stderr, flush=True)

    result = run(args, progress)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
