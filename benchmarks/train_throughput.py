"""Training throughput of the default model, side by side in one run.

Trains one epoch of each stage (alignment, fusion) on the synthetic demo data with the
default configuration and reports items per second, for:
  - the frozen text encoder's cache on (the default) and off: MiniLM dominates CPU time,
    so the cache is what makes the CPU default train in minutes;
  - the precision the hardware gets by default (32-true on CPU, bf16-mixed on GPU).
On a GPU machine, run it there as well (accelerator auto picks the GPU).

    .venv/bin/python benchmarks/train_throughput.py [--items 600] [--epochs 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_stage(model: Any, module: Any, loader: Any, epochs: int, hardware: Any) -> float:
    import pytorch_lightning as pl

    from training.train import precision_for

    trainer = pl.Trainer(
        accelerator=hardware.accelerator,
        devices=1,
        precision=precision_for(hardware),  # type: ignore[arg-type]
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    import torch
    from torch.utils.data import DataLoader

    from dualmedia.media import MediaConfig
    from dualmedia.synthetic import generate_dataset
    from training.config import load_train_config
    from training.data import MultimodalDataset, collate
    from training.factory import build_fused_model
    from training.lit import AlignmentModule, FusionModule
    from training.testing import arrays_from_folder

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    config = load_train_config(REPO / "configs" / "train" / "default.yaml")
    with tempfile.TemporaryDirectory(prefix="dualmedia-bench-") as tmp:
        generate_dataset(Path(tmp) / "ds", args.items, seed=0)
        arrays = arrays_from_folder(Path(tmp) / "ds")
    from dualmedia.synthetic import dataset_spec

    spec = dataset_spec()
    rows = []
    for stage, cache in (("alignment", False), ("alignment", True), ("fusion", True)):
        torch.manual_seed(0)
        model = build_fused_model(spec, MediaConfig(), config.model)
        model.encoder.trunk("text").cache_texts = cache
        loader = DataLoader(
            MultimodalDataset(arrays, model.modalities),
            batch_size=config.data.batch_size,
            shuffle=True,
            collate_fn=collate,
        )
        module_type = AlignmentModule if stage == "alignment" else FusionModule
        stage_config = config.alignment if stage == "alignment" else config.fusion
        module = module_type(model, stage_config)
        if cache:  # what a second epoch sees: every text already encoded once
            with torch.no_grad():
                model.encoder.trunk("text")([t for t in arrays.text if t is not None])
        seconds = run_stage(model, module, loader, args.epochs, config.hardware)
        rows.append(
            {
                "stage": stage,
                "text_cache": cache,
                "seconds": round(seconds, 2),
                "items_per_second": round(args.items * args.epochs / seconds, 1),
            }
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {
        "device": device,
        "threads": torch.get_num_threads(),
        "items": args.items,
        "epochs": args.epochs,
        "rows": rows,
        "text_cache_speedup": round(rows[1]["items_per_second"] / rows[0]["items_per_second"], 2),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"default config, {args.items} items x {args.epochs} epoch(s) on {device}")
    print(f"{'stage':<10} {'text cache':>10} {'seconds':>8} {'items/s':>8}")
    for r in rows:
        print(
            f"{r['stage']:<10} {r['text_cache']!s:>10} {r['seconds']:>8} {r['items_per_second']:>8}"
        )
    print(f"text cache: {report['text_cache_speedup']}x the alignment throughput")


if __name__ == "__main__":
    main()
