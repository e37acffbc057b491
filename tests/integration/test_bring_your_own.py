"""The README's bring-your-own-data path, as a new user runs it, on a dataset the
generator did not make: scikit-learn's real handwritten digits (scans, upscaled to
32 x 32 PNG) with a short note each, its own name, modalities and label.

upload → ingest → train → promote → publish → monitor, every command through the CLI with
no --model: each finds the dataset's registered model by itself (none of them falls back
to the demo's `customer-feedback`).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualmedia.settings import Settings
from dualmedia.stack import Stack
from tests.conftest import make_settings
from tests.integration.test_cli import run_cli

pytestmark = pytest.mark.integration

NAME = "digit-notes"
CLASSES = ["zero", "one", "two"]
DATASET_YAML = f"""\
name: {NAME}
modalities: [text, image]
labels:
  digit: {{type: categorical, classes: [{", ".join(CLASSES)}]}}
"""
NOTES = [
    "written in the first box of the form",
    "a hurried stroke, slightly slanted",
    "copied from the delivery slip",
    "the ink is faint on this one",
    "second line of the order card",
]


def write_digits(folder: Path, batch: str, rows: range) -> None:
    """A batch of real scans from sklearn's digits (classes 0-2), one note per item."""
    from sklearn.datasets import load_digits

    digits = load_digits(n_class=len(CLASSES))
    out = folder / batch
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in rows:
        pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(out / "images" / f"{i}.png")
        lines.append(
            {
                "id": f"digit-{i:04d}",
                "text": NOTES[i % len(NOTES)],
                "image": f"images/{i}.png",
                "labels": {"digit": CLASSES[int(digits.target[i])]},
            }
        )
    (out / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "dataset.yaml").write_text(DATASET_YAML)


@pytest.fixture(scope="module")
def byo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    s = make_settings(tmp_path_factory.mktemp("byo") / "home")
    stack = Stack(s, only=["s3", "mlflow"])
    stack.up()
    yield s
    stack.down()


def user_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    """The CLI with the stack's settings, and DUALMEDIA_MODEL_NAME unset as in a new
    user's shell (Settings.child_env exports every setting, defaults included)."""
    return run_cli(settings, *args, unset=("DUALMEDIA_MODEL_NAME",))


def cli_json(settings: Settings, *args: str) -> dict:
    result = user_cli(settings, *args, "--json")
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return json.loads(result.stdout)


def test_the_documented_path_on_a_dataset_of_ones_own(byo_stack: Settings, tmp_path: Path) -> None:
    s = byo_stack
    assert s.model_name == "customer-feedback"  # the demo's default, never registered here
    folder, uri = tmp_path / NAME, f"s3://{s.raw_bucket}/{NAME}"
    write_digits(folder, "batch-0001", range(0, 150))
    assert user_cli(s, "upload", str(folder), uri).returncode == 0

    snapshot = cli_json(s, "ingest", uri)
    assert (snapshot["dataset"], snapshot["accepted"], snapshot["quarantined"]) == (NAME, 150, 0)

    trained = cli_json(
        s, "train", "--snapshot", snapshot["snapshot_uri"], "--config", "configs/train/tiny.yaml"
    )
    assert trained["registered"]["registered_model"] == NAME
    assert "test/fusion/digit/macro_f1" in trained["metrics"]

    promoted = cli_json(s, "promote")
    assert promoted["promoted"] is True and promoted["registered_model"] == NAME

    published = cli_json(s, "publish")
    assert published["model_version"] == "1"
    rows = published["rows"]
    assert rows["image_embedding"] == rows["text_embedding"] == 150
    assert "audio_embedding" not in rows  # the dataset has no audio: that view stays empty

    write_digits(folder, "batch-0002", range(150, 230))  # new feedback arrives
    assert user_cli(s, "upload", str(folder), uri).returncode == 0
    judged = cli_json(s, "monitor", "--batch", "batch-0002", "--no-trigger")
    assert judged["model"] == NAME and judged["verdict"] in ("drift", "no drift")
