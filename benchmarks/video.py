"""Video beside photos in one run: decoding, ingestion records/s, served `embed` latency.

Clips are rendered here (a square moving over a scrolling gradient with fixed noise, 3 s)
and written with `synthetic.videos.encode_clip` (H.264 in MP4, VP9 in WebM), so
nothing depends on the synthetic generator. Photos are JPEGs (quality 90) of a frame of the
same clip, so both sides decode the same pixels at the same size.

1. decode: `VideoSpec.read` (header probe and bounds, then only the sampled frames
   converted and scaled to the model's `frames` x `size`^2, plus the audio track as log-mel
   when there is one) on 96x96 at 8 fps and 640x360 at 30 fps clips, MP4 and WebM, and
   the MP4 with an AAC track, also with numpy's BLAS (OpenBLAS) held to one thread as a
   serving worker holds it (the track's log-mel is a BLAS call; ingestion sets no such
   limit); beside it `ImageSpec.read` of the JPEG of the same frame size (the photo
   cost). Per-call median, clips/s, sampled frames/s (model input), decoded frames/s
   (every frame the decoder went through: the clip's), ratio to the photo's time. The
   cells run in interleaved rounds, each for a time budget.
2. ingestion: two local datasets in the contract with the same records (text, a 96x96
   JPEG, a 2 s WAV, labels), one also with a `video` field per record (a 3 s 96x96 at
   8 fps MP4 with an AAC track, like a phone clip) and declaring video. Two figures:
   - the per-record path: `ingestion.checks.parse_line` + `check_media` over every manifest
     line, through a pool of `IngestConfig.fetch_workers` threads as
     `ingestion.validation` runs it (also with BLAS held to one thread), and on one
     thread; media come from the local folder through a stand-in for `DatasetSource`
     (`media_uri` / `fetch` read files, with its size bound), so the S3 round trips (the
     same for both datasets) are left out; interleaved rounds;
   - end to end: `ingestion.pipeline.ingest` (plan, fetch from S3, checks, Parquet shards,
     Great Expectations, publish) against a private rclone S3 server, each dataset under
     a fresh prefix per round (nothing reused), after one uncounted warm-up ingest.
     Skipped with --no-s3.
3. serving: a model whose dataset declares text, image and video (the default
   architecture, configs/train/default.yaml, random weights: speed does not depend on
   training), loaded as a TorchServe worker loads it (`InferenceRuntime.from_folder`, the
   configured `serving_threads`), answering `embed` in-process (parse_request with the
   model's bounds + `InferenceRuntime.answer`, no HTTP) for {"video": <base64 clip>} vs
   {"image": <base64 JPEG>} at both frame sizes: p50/p99 ms and the ratio clip / photo.
   The same clip with its audio track is also sent once, and its answer (or refusal)
   printed.

PyAV decodes with FFmpeg's own threads (`thread_type = "AUTO"`), whatever torch's thread
count. Timings only: nothing here fails on a threshold.

    .venv/bin/python benchmarks/video.py [--quick] [--no-s3] [--json]

About 3 minutes on 2 cores (--quick: about 1; --no-s3 saves about 30 s). Progress goes to
stderr; the tables (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# This folder's serving.py would hide the `serving` package: the repository root first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(HERE))  # bench_support

from bench_support import serving_benchmark  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "train" / "default.yaml"
SECONDS = 3  # every clip's length
SIZES = {"96x96 8fps": (96, 96, 8), "640x360 30fps": (640, 360, 30)}
TRACK = "H.264 MP4 + AAC track"
TRACK_BLAS1 = "H.264 MP4 + AAC, BLAS 1 thread"
SENTIMENTS = ("negative", "neutral", "positive")
REVIEWS = (
    "the mug arrived cracked and the seller never answered",
    "lovely lamp, warm light, exactly as in the photos",
    "box was soaked and the book pages are stuck together",
    "wrong colour sent, otherwise a decent jacket",
)


def log(message: str) -> None:
    print(f"[video {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- media ---------------------------------------------------------------------------------
def render_frames(width: int, height: int, fps: int, seed: int = 0) -> list[np.ndarray]:
    """SECONDS of RGB frames: a scrolling gradient, fixed noise, a square moving across."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    tint = rng.uniform(0.4, 1.0, 3)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    side = min(width, height) // 4
    frames = []
    for i in range(fps * SECONDS):
        t = i / (fps * SECONDS)
        pixels = ((ramp + 255 * t) % 256 * tint * 0.8).astype(np.uint8)
        pixels = np.broadcast_to(pixels, (height, width, 3)) + noise
        x = int(t * (width - side))
        y = int((0.5 + 0.4 * np.sin(2 * np.pi * t)) * (height - side))
        pixels[y : y + side, x : x + side] = (220, 60 + seed * 30 % 150, 40)
        frames.append(pixels)
    return frames


def tone(seconds: float, seed: int = 0, rate: int = 16000) -> Any:
    """A voice-like tone with a little noise (DecodedAudio)."""
    from dualmedia.modalities.audio import DecodedAudio

    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    voice = 0.3 * np.sin(2 * np.pi * rng.uniform(120, 300) * t) + 0.02 * rng.normal(size=t.size)
    return DecodedAudio(voice.astype(np.float32), rate)


def clip(frames: np.ndarray, fps: int, container: str, audio: Any = None) -> bytes:
    """A clip file (the generator's encoder); `audio`: a DecodedAudio for its track."""
    from synthetic.videos import encode_clip

    if audio is None:
        return encode_clip(frames, fps, container=container)
    return encode_clip(
        frames, fps, container=container, audio=audio.samples, sample_rate=audio.sample_rate
    )


def jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def wav(seconds: float, seed: int = 0) -> bytes:
    import soundfile as sf

    audio = tone(seconds, seed)
    buffer = io.BytesIO()
    sf.write(buffer, audio.samples, audio.sample_rate, format="WAV")
    return buffer.getvalue()


@dataclass
class Media:
    """One frame size's clips (by container) and the JPEG of its middle frame."""

    label: str
    width: int
    height: int
    fps: int
    clips: dict[str, bytes]
    photo: bytes


def make_media(label: str, width: int, height: int, fps: int) -> Media:
    frames = render_frames(width, height, fps)
    clips = {
        "H.264 MP4": clip(frames, fps, "mp4"),
        "VP9 WebM": clip(frames, fps, "webm"),
        TRACK: clip(frames, fps, "mp4", audio=tone(SECONDS)),
    }
    return Media(label, width, height, fps, clips, jpeg(frames[len(frames) // 2]))


# ---- timing --------------------------------------------------------------------------------
def interleaved(
    cells: dict[str, Callable[[], Any]], rounds: int, budget_s: float, warmup: int = 2
) -> dict[str, list[float]]:
    """Each cell's call timings, the cells taking turns (rotated order) for `rounds` rounds
    of about `budget_s` seconds each, so all of them share the machine's background load."""
    names = list(cells)
    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        for _ in range(warmup):
            cells[name]()
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            call, stop_at = cells[name], time.perf_counter() + budget_s
            while True:
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
                if time.perf_counter() >= stop_at:
                    break
    return times


def blas_one_thread(call: Callable[[], Any]) -> Callable[[], Any]:
    """`call` with numpy's BLAS (OpenBLAS) held to one thread, as a serving worker holds it."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()

    def limited() -> Any:
        with controller.limit(limits=1, user_api="blas"):
            return call()

    return limited


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---- 1. decoding ---------------------------------------------------------------------------
def bench_decode(sizes: list[Media], rounds: int, budget_s: float) -> list[dict[str, Any]]:
    from dualmedia import modalities

    video, image = modalities.get("video"), modalities.get("image")
    bounds, media = modalities.MediaBounds(), modalities.MediaConfig()
    sampled = media.video.frames

    def reader(spec: Any, data: bytes) -> Callable[[], Any]:
        section = bounds.section(spec.name)
        # The track is decoded only for an item that lacks audio: say it lacks it.
        return lambda: spec.read(data, section, media, carry={"audio"})

    cells: dict[tuple[str, str], Callable[[], Any]] = {}
    for m in sizes:
        cells[(m.label, "JPEG photo")] = reader(image, m.photo)
        for kind, data in m.clips.items():
            cells[(m.label, kind)] = reader(video, data)
        cells[(m.label, TRACK_BLAS1)] = blas_one_thread(reader(video, m.clips[TRACK]))
    keyed = {f"{a}|{b}": call for (a, b), call in cells.items()}
    times = interleaved(keyed, rounds, budget_s)
    rows = []
    for m in sizes:
        photo_s = statistics.median(times[f"{m.label}|JPEG photo"])
        for kind in ("JPEG photo", *m.clips, TRACK_BLAS1):
            t = times[f"{m.label}|{kind}"]
            median = statistics.median(t)
            is_clip = kind != "JPEG photo"
            data = m.clips.get(kind, m.clips[TRACK]) if is_clip else m.photo
            rows.append(
                {
                    "size": m.label,
                    "media": kind,
                    "kb": round(len(data) / 1024, 1),
                    "calls": len(t),
                    "median_ms": round(median * 1000, 2),
                    "items_per_s": round(1 / median, 1),
                    "sampled_frames_per_s": round((sampled if is_clip else 1) / median, 1),
                    "decoded_frames_per_s": round((m.fps * SECONDS if is_clip else 1) / median, 1),
                    "x_photo": round(median / photo_s, 2),
                }
            )
    return rows


# ---- 2. ingestion --------------------------------------------------------------------------
def write_datasets(root: Path, n: int, distinct_clips: int = 8) -> dict[str, Path]:
    """Two datasets in the contract with the same n records; "video" adds a clip to each."""
    import yaml

    clips = [
        clip(render_frames(96, 96, 8, seed=s), 8, "mp4", audio=tone(SECONDS, seed=s))
        for s in range(distinct_clips)
    ]
    photos = [render_frames(96, 96, 8, seed=s)[12] for s in range(16)]
    folders = {}
    for name, with_video in (("photo", False), ("video", True)):
        folder = root / f"bench-{name}"
        batch = folder / "batch-0001"
        for sub in ("images", "audio", "videos"):
            (batch / sub).mkdir(parents=True, exist_ok=True)
        spec = {
            "name": f"bench-{name}",
            "modalities": ["text", "image", "audio", *(["video"] if with_video else [])],
            "labels": {"sentiment": {"type": "categorical", "classes": list(SENTIMENTS)}},
        }
        (folder / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        lines = []
        for i in range(n):
            rid = f"fb-{i:06d}"
            (batch / "images" / f"{rid}.jpg").write_bytes(jpeg(photos[i % 16]))
            (batch / "audio" / f"{rid}.wav").write_bytes(wav(2.0, seed=i))
            record: dict[str, Any] = {
                "id": rid,
                "text": f"order {i}: {REVIEWS[i % len(REVIEWS)]}",
                "image": f"images/{rid}.jpg",
                "audio": f"audio/{rid}.wav",
                "labels": {"sentiment": SENTIMENTS[i % 3]},
                "created_at": "2026-12-01T10:00:00Z",
            }
            if with_video:
                (batch / "videos" / f"{rid}.mp4").write_bytes(clips[i % distinct_clips])
                record["video"] = f"videos/{rid}.mp4"
            lines.append(json.dumps(record))
        (batch / "manifest.jsonl").write_text("\n".join(lines) + "\n")
        folders[name] = folder
    return folders


class LocalSource:
    """The part of `ingestion.source.DatasetSource` the per-record path uses, over a local
    folder: manifest lines (its own line splitter and bound), media paths relative to the
    batch, fetched with the size bound. No S3 requests."""

    def __init__(self, folder: Path, max_line_bytes: int) -> None:
        self.folder = folder
        self.max_line_bytes = max_line_bytes

    def manifest_lines(self, batch: Any) -> Iterator[bytes]:
        from ingestion.source import split_lines

        with open(self.folder / batch.name / "manifest.jsonl", "rb") as f:
            yield from split_lines(f.read, self.max_line_bytes)

    def media_uri(self, batch: Any, path: str) -> Path:
        return self.folder / batch.name / path

    def fetch(self, uri: Path, max_bytes: int) -> bytes:
        from ingestion.source import MediaTooLarge

        if uri.stat().st_size > max_bytes:
            raise MediaTooLarge(f"{uri} is over {max_bytes} bytes, the bound")
        return uri.read_bytes()


def per_record_pass(folder: Path, workers: int) -> Callable[[], int]:
    """One pass of parse_line + check_media over the folder's batch, the checks of a chunk
    in a pool of `workers` threads as ingestion.validation runs them; returns accepted."""
    from dualmedia.contract import parse_dataset_spec
    from dualmedia.settings import Settings
    from dualmedia.storage import S3Uri
    from ingestion.checks import ParsedRecord, Rejection, check_media, parse_line
    from ingestion.config import IngestConfig
    from ingestion.source import Batch
    from ingestion.validation import CHUNK

    spec = parse_dataset_spec((folder / "dataset.yaml").read_text(), where=str(folder))
    config = IngestConfig()
    source = LocalSource(folder, Settings(_env_file=None).manifest_max_line_bytes)
    batch = Batch("batch-0001", S3Uri.parse(f"s3://local/{folder.name}/batch-0001"), "local")

    def run() -> int:
        seen: set[str] = set()
        accepted = 0
        lines = [(n, raw) for n, raw in enumerate(source.manifest_lines(batch), 1) if raw.strip()]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(lines), CHUNK):
                parsed = [
                    parse_line(raw, n, spec, config, seen) for n, raw in lines[start:][:CHUNK]
                ]
                futures = [
                    pool.submit(check_media, p, batch, source, spec, config)
                    for p in parsed
                    if isinstance(p, ParsedRecord)
                ]
                for future in futures:
                    outcome = future.result()
                    if isinstance(outcome, Rejection):
                        raise RuntimeError(f"benchmark record rejected: {outcome.message}")
                    accepted += 1
        return accepted

    return run


def bench_ingest_local(
    folders: dict[str, Path], n: int, rounds: int, budget_s: float
) -> list[dict[str, Any]]:
    from ingestion.config import IngestConfig

    pool = IngestConfig().fetch_workers
    modes = (
        (f"pool of {pool} (as ingestion)", pool, False),
        (f"pool of {pool}, BLAS 1 thread", pool, True),
        ("1 thread", 1, False),
    )
    cells = {}
    for mode, workers, limited in modes:
        for name, folder in folders.items():
            call = per_record_pass(folder, workers)
            cells[f"{mode}|{name}"] = blas_one_thread(call) if limited else call
    times = interleaved(cells, rounds, budget_s, warmup=1)
    rows = []
    for key, t in times.items():
        mode, name = key.split("|")
        median = statistics.median(t)
        rows.append(
            {
                "path": "per-record (local files)",
                "mode": mode,
                "dataset": name,
                "records": n,
                "passes": len(t),
                "records_per_s": round(n / median, 1),
                "ms_per_record": round(median / n * 1000, 2),
            }
        )
    return rows


def bench_ingest_s3(
    folders: dict[str, Path], n: int, rounds: int, tmp: Path
) -> list[dict[str, Any]]:
    from dualmedia.datasets import upload_dataset
    from dualmedia.stack import Stack
    from dualmedia.storage import ObjectStore
    from ingestion.pipeline import ingest

    settings = serving_benchmark().private_settings(tmp / "home")
    stack = Stack(settings, only=["s3"])
    log("starting a private rclone S3 server")
    stack.up()
    seconds: dict[str, list[float]] = {name: [] for name in folders}
    try:
        store = ObjectStore(settings)
        warmup = f"s3://{settings.raw_bucket}/bench-warmup"  # imports, GX's first context
        upload_dataset(folders["photo"], warmup, store)
        ingest(warmup, settings)
        for r in range(rounds):
            order = list(folders) if r % 2 == 0 else list(folders)[::-1]
            for name in order:
                uri = f"s3://{settings.raw_bucket}/bench-{name}-{r}"
                upload_dataset(folders[name], uri, store)
                t0 = time.perf_counter()
                summary = ingest(uri, settings)
                seconds[name].append(time.perf_counter() - t0)
                if summary.get("accepted") != n:
                    raise RuntimeError(f"{uri}: accepted {summary.get('accepted')} of {n}")
                log(f"  ingest {name} round {r + 1}: {seconds[name][-1]:.1f}s")
    finally:
        stack.down()
    return [
        {
            "path": "ingest() via rclone S3",
            "mode": "end to end",
            "dataset": name,
            "records": n,
            "passes": len(t),
            "records_per_s": round(n / statistics.median(t), 1),
            "ms_per_record": round(statistics.median(t) / n * 1000, 2),
        }
        for name, t in seconds.items()
    ]


# ---- 3. serving ----------------------------------------------------------------------------
@dataclass
class ServingResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    with_track: str = ""
    threads: int = 1


def build_video_model(folder: Path) -> Path:
    """Text + image + video, the default architecture, random weights, saved as served."""
    import torch

    from dualmedia.contract import DatasetSpec
    from dualmedia.modalities import MediaConfig
    from training.config import load_train_config
    from training.models.factory import build_fused_model, save_fused_model

    torch.manual_seed(0)
    spec = DatasetSpec.model_validate(
        {
            "name": "bench-video",
            "modalities": ["text", "image", "video"],
            "labels": {"sentiment": {"type": "categorical", "classes": list(SENTIMENTS)}},
        }
    )
    model = build_fused_model(spec, MediaConfig(), load_train_config(DEFAULT_CONFIG).model)
    save_fused_model(model, folder)
    return folder


def bench_serving(sizes: list[Media], tmp: Path, rounds: int, budget_s: float) -> ServingResult:
    from dualmedia.settings import Settings
    from serving.protocol import BadRequest, parse_request
    from serving.runtime import InferenceRuntime

    threads = Settings(_env_file=None).serving_threads
    runtime = InferenceRuntime.from_folder(build_video_model(tmp / "model"), "1", threads=threads)
    catalogue = runtime.catalogue_targets() or runtime.modalities

    def answer(body: dict[str, str]) -> list[dict[str, Any]]:
        request = parse_request("embed", {"body": body}, runtime.media, catalogue, runtime.bounds)
        return runtime.answer("embed", [request])

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    def caller(modality: str, data: bytes) -> Callable[[], list[dict[str, Any]]]:
        body = {modality: b64(data)}
        return lambda: answer(body)

    cells: dict[str, Callable[[], Any]] = {}
    for m in sizes:
        cells[f"{m.label}|photo (JPEG)"] = caller("image", m.photo)
        cells[f"{m.label}|3 s clip (H.264 MP4)"] = caller("video", m.clips["H.264 MP4"])
    for key, call in cells.items():  # every body is answered with an embedding
        out = call()[0]
        if "embedding" not in out:
            raise RuntimeError(f"{key}: no embedding in {out}")
    times = interleaved(cells, rounds, budget_s, warmup=3)
    result = ServingResult(threads=threads)
    for m in sizes:
        photo = times[f"{m.label}|photo (JPEG)"]
        for what in ("photo (JPEG)", "3 s clip (H.264 MP4)"):
            t = times[f"{m.label}|{what}"]
            result.rows.append(
                {
                    "size": m.label,
                    "request": f"embed {what}",
                    "requests": len(t),
                    "p50_ms": round(pct(t, 50) * 1000, 1),
                    "p99_ms": round(pct(t, 99) * 1000, 1),
                    "x_photo_p50": round(pct(t, 50) / pct(photo, 50), 2),
                }
            )
    # A phone clip has a sound track: what `embed` makes of one.
    clip = sizes[0].clips[TRACK]
    try:
        out = answer({"video": b64(clip)})[0]
        result.with_track = f"answered: modality {out.get('modality')!r}, dim {out.get('dim')}"
    except BadRequest as exc:
        result.with_track = f"refused: {exc.status} {exc.error}: {exc}"
    except Exception as exc:  # report, do not hide: the benchmark goes on
        result.with_track = f"raised {type(exc).__name__}: {exc}"
    return result


# ---- report --------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Rows as a fixed-width table; columns are (key, header, format)."""
    cells = [[format(r[k], f) if f else str(r[k]) for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(columns)]
    lines = [
        "  ".join(
            h.ljust(w) if i < 2 else h.rjust(w)
            for i, ((_, h, _), w) in enumerate(zip(columns, widths, strict=True))
        )
    ]
    lines.append("-" * len(lines[0]))
    for c in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if i < 2 else v.rjust(w)
                for i, (v, w) in enumerate(zip(c, widths, strict=True))
            )
        )
    return "\n".join(lines)


def ratios(ingest_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """records/s with video / without, per path and mode."""
    out = []
    seen = list(dict.fromkeys((r["path"], r["mode"]) for r in ingest_rows))
    for path, mode in seen:
        by = {r["dataset"]: r for r in ingest_rows if (r["path"], r["mode"]) == (path, mode)}
        out.append(
            {
                "path": path,
                "mode": mode,
                "video_over_photo": round(
                    by["video"]["records_per_s"] / by["photo"]["records_per_s"], 2
                ),
            }
        )
    return out


def print_report(report: dict[str, Any]) -> None:
    print("1. decode (Spec.read: probe, sampled frames, model input)")
    print(
        table(
            report["decode"],
            [
                ("size", "frame size", ""),
                ("media", "media", ""),
                ("kb", "KB", ".1f"),
                ("median_ms", "median ms", ".2f"),
                ("items_per_s", "items/s", ".1f"),
                ("sampled_frames_per_s", "sampled fr/s", ".1f"),
                ("decoded_frames_per_s", "decoded fr/s", ".1f"),
                ("x_photo", "x photo", ".2f"),
            ],
        )
    )
    print(
        f"sampled: {report['frames']} frames of {report['frame_size']}x{report['frame_size']} "
        f"per clip; a photo is 1 frame; clips last {SECONDS} s"
    )
    print()
    print(f"2. ingestion records/s ({report['records']} records: text + JPEG + WAV, + MP4 clip)")
    print(
        table(
            report["ingest"],
            [
                ("path", "path", ""),
                ("mode", "mode", ""),
                ("dataset", "dataset", ""),
                ("passes", "passes", "d"),
                ("records_per_s", "records/s", ".1f"),
                ("ms_per_record", "ms/record", ".2f"),
            ],
        )
    )
    for r in report["ingest_ratios"]:
        print(f"with video / without, {r['path']}, {r['mode']}: {r['video_over_photo']:.2f}x")
    print()
    serving = report["serving"]
    print(
        f"3. serving embed, in-process ({serving['threads']} torch thread(s); "
        "parse + InferenceRuntime.answer)"
    )
    print(
        table(
            serving["rows"],
            [
                ("size", "frame size", ""),
                ("request", "request", ""),
                ("requests", "requests", "d"),
                ("p50_ms", "p50 ms", ".1f"),
                ("p99_ms", "p99 ms", ".1f"),
                ("x_photo_p50", "p50 x photo", ".2f"),
            ],
        )
    )
    print(f"embed of a clip with an AAC track (96x96): {serving['with_track']}")
    print(
        f"\n{report['cores']} cores, load average {report['load']}; {report['wall_s']:.0f} s in all"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and records")
    parser.add_argument("--records", type=int, default=None, help="records per dataset (48)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    parser.add_argument("--no-s3", action="store_true", help="skip the end-to-end ingest()")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import os

    from dualmedia.modalities import MediaConfig

    rounds = args.rounds or (2 if args.quick else 3)
    budget = 0.5 if args.quick else 1.0
    n = args.records or (16 if args.quick else 48)
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dualmedia-bench-video-") as tmp_name:
        tmp = Path(tmp_name)
        log("encoding clips (MP4, WebM, MP4 + AAC) at " + ", ".join(SIZES))
        sizes = [make_media(label, *dims) for label, dims in SIZES.items()]
        log(f"1/3 decode: {rounds} rounds of {budget}s per cell")
        decode = bench_decode(sizes, rounds, budget)
        log(f"2/3 ingestion: writing two datasets of {n} records")
        folders = write_datasets(tmp / "datasets", n)
        ingest_rows = bench_ingest_local(folders, n, rounds, budget * 2)
        if not args.no_s3:
            ingest_rows += bench_ingest_s3(folders, n, 1 if args.quick else 2, tmp)
        log("3/3 serving: building the text + image + video model")
        serving = bench_serving(sizes, tmp, rounds, budget * 2)
    media = MediaConfig()
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "load": f"{load0:.1f} -> {os.getloadavg()[0]:.1f}",
        "frames": media.video.frames,
        "frame_size": media.video.size,
        "records": n,
        "decode": decode,
        "ingest": ingest_rows,
        "ingest_ratios": ratios(ingest_rows),
        "serving": {
            "threads": serving.threads,
            "rows": serving.rows,
            "with_track": serving.with_track,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
