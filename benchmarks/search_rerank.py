"""Does search's re-ranking stage help? recall@k with and without it, where the answer is known.

A tiny model is trained on a generated dataset (real S3 and MLflow on loopback). Its
catalogue holds every item. The queries are the test items drawn again with drift knobs
(`--shift`: new wording and another lighting), so a query is never a catalogue vector:
it is the same item said and photographed differently, and the right answer is that
item. For each task (words -> photos, photo -> reviews, words + photo -> fused items)
the table gives recall@1, @5 and @10 for each re-ranking weight, side by side.

    .venv/bin/python benchmarks/search_rerank.py [--items 600] [--shift 0.3]
        [--weights 0,0.2,0.4] [--config tiny] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before benchmarks/, whose serving.py shadows the package

TASKS = {
    "words -> photos": ({"text": 1.0}, "image"),
    "photo -> reviews": ({"image": 1.0}, "text"),
    "words + photo -> fused": ({"text": 0.5, "image": 0.5}, "fused"),
}


def catalogue_of(model: Any, arrays: Any) -> Any:
    from serving.catalogue import FUSED, Catalogue
    from training.models.scoring import score_arrays

    scores = score_arrays(model, arrays)
    ids: dict[str, list[str]] = {}
    vectors: dict[str, np.ndarray] = {}
    for m in model.modalities:
        keep = scores.present[m]
        ids[m] = [i for i, k in zip(scores.ids, keep, strict=True) if k]
        vectors[m] = scores.embeddings[m][keep].astype(np.float32)
    ids[FUSED], vectors[FUSED] = list(scores.ids), scores.fused
    return Catalogue(ids, vectors, {}, "bench", "exact"), scores


def recall(catalogue: Any, queries: Any, task: tuple, weight: float, ks: list[int]) -> dict:
    weights, target = task
    hits = {k: 0 for k in ks}
    asked = 0
    for n, item_id in enumerate(queries.ids):
        if not all(queries.present[m][n] for m in weights) or item_id not in catalogue.rows[target]:
            continue
        given = {m: queries.embeddings[m][n] for m in weights}
        found = [r["id"] for r in catalogue.search(given, weights, target, max(ks), rerank=weight)]
        asked += 1
        for k in ks:
            hits[k] += item_id in found[:k]
    return {"queries": asked, **{f"recall@{k}": round(hits[k] / max(asked, 1), 3) for k in ks}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--shift", type=float, default=0.3, help="drift knobs of the queries")
    parser.add_argument("--weights", default="0,0.2,0.4", help="re-ranking weights to compare")
    parser.add_argument("--config", default="tiny", help="training configuration")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from dualmedia.snapshot import Snapshot
    from dualmedia.stack import Stack
    from dualmedia.storage import ObjectStore
    from synthetic import GeneratorKnobs
    from synthetic.fixtures import synthetic_snapshot
    from tests.conftest import make_settings
    from training.config import REPO_CONFIGS, load_train_config
    from training.registry import load_registered_model, register
    from training.train import train

    weights = [float(w) for w in args.weights.split(",")]
    with tempfile.TemporaryDirectory(prefix="dualmedia-bench-rerank-") as tmp:
        settings = make_settings(Path(tmp) / "home")
        stack = Stack(settings, only=["s3", "mlflow"])
        stack.up()
        try:
            store = ObjectStore(settings)
            uri = synthetic_snapshot(store, settings.lake_bucket, Path(tmp) / "d", args.items, 7)
            knobs = GeneratorKnobs(text_shift=args.shift, image_shift=args.shift)
            shifted = synthetic_snapshot(
                store, settings.lake_bucket, Path(tmp) / "q", args.items, 7, knobs
            )
            print(f"training ({args.config}) on {args.items} items", file=sys.stderr)
            config = load_train_config(REPO_CONFIGS / f"{args.config}.yaml")
            summary = train(uri, config, settings, progress=False)
            version = register(summary, settings, "rerank-bench")["version"]
            model, _ = load_registered_model("rerank-bench", version, settings)
            catalogue, _ = catalogue_of(model, Snapshot(store, uri).arrays())
            _, queries = catalogue_of(model, Snapshot(store, shifted).arrays("test"))
        finally:
            stack.down()
    ks = [1, 5, 10]
    table = {
        name: {str(w): recall(catalogue, queries, task, w, ks) for w in weights}
        for name, task in TASKS.items()
    }
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"recall@k of the same item drawn with drift knobs {args.shift} "
          f"({args.items} items, config {args.config})")  # fmt: skip
    header = "| task | queries | " + " | ".join(f"re-rank {w}: @1 / @5 / @10" for w in weights)
    print(header + " |")
    print("|---|---|" + "---|" * len(weights))
    for name, by_weight in table.items():
        cells = [
            f"{r['recall@1']:.3f} / {r['recall@5']:.3f} / {r['recall@10']:.3f}"
            for r in by_weight.values()
        ]
        queries_n = next(iter(by_weight.values()))["queries"]
        print(f"| {name} | {queries_n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
