"""Training throughput and memory of the default model, side by side in one run.

Trains each stage (alignment, fusion) of the default configuration on the synthetic demo data
and reports items per second and peak memory for:
  - the Lightning Trainer against a plain PyTorch loop over the same LightningModule's
    training_step, optimiser, schedule, model and batches (target: Lightning within 3%);
  - the frozen text encoder's cache on (the default) and off: MiniLM dominates CPU time,
    so the cache is what makes the CPU default train in minutes;
  - the precision the hardware gets by default (32-true on CPU, bf16-mixed on GPU).
The clock runs from the third batch to the last (setup and warm-up are one-off costs).
Each variant runs in a fresh process (peak RSS on CPU, peak allocated memory on GPU) and
the best of `--repeats` runs counts, so a neighbour's burst does not decide a ratio.
On a GPU machine, run it there as well (accelerator auto picks the GPU).

    .venv/bin/python benchmarks/train_throughput.py [--items 600] [--epochs 1] [--repeats 3]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# (stage, text cache, loop)
# Batches not timed at the start of a run: the Trainer's setup and the first steps' warm-up
# (allocator, autograd graph caches) are a one-off cost, not the training step's.
WARMUP_BATCHES = 2
VARIANTS = (
    ("alignment", False, "lightning"),
    ("alignment", True, "lightning"),
    ("alignment", True, "plain"),
    ("fusion", True, "lightning"),
    ("fusion", True, "plain"),
)


class StepClock:
    """Wall time and items of the batches after the first WARMUP_BATCHES."""

    def __init__(self) -> None:
        self.batches, self.items, self.started, self.stopped = 0, 0, 0.0, 0.0

    def batch_start(self) -> None:
        if self.batches == WARMUP_BATCHES:
            self.started = time.perf_counter()

    def batch_end(self, size: int) -> None:
        self.batches += 1
        if self.batches > WARMUP_BATCHES:
            self.items += size
            self.stopped = time.perf_counter()


def run_lightning(module: Any, loader: Any, epochs: int, hardware: Any, clock: StepClock) -> None:
    import pytorch_lightning as pl

    from training.train import precision_for

    class Timing(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            clock.batch_start()

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, i: int):
            clock.batch_end(len(batch["ids"]))

    trainer = pl.Trainer(
        callbacks=[Timing()],
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
    trainer.fit(module, train_dataloaders=loader)


def run_plain(module: Any, loader: Any, epochs: int, device: str, clock: StepClock) -> None:
    """What the Trainer does for these modules, by hand: the same training_step (its
    self.log calls are no-ops without a trainer), AdamW over the same parameter groups,
    the same one-cycle schedule stepped per batch, the logit-scale clamp after each step."""
    import torch

    from training.lit import ClampedOneCycleLR

    module.to(device).train()
    groups = module._groups()
    optimizer = torch.optim.AdamW(groups)
    total = max(4, len(loader) * epochs)
    warmup = min(max(module.stage.warmup_steps, 2), total // 2)
    schedule = ClampedOneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total, pct_start=warmup / total
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    for _ in range(epochs):
        for i, batch in enumerate(loader):
            clock.batch_start()
            batch = module.transfer_batch_to_device(batch, torch.device(device), 0)
            with autocast:
                loss = module.training_step(batch, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            module.model.encoder.clamp_logit_scale()
            clock.batch_end(len(batch["ids"]))


def measure(folder: str, stage: str, cache: bool, loop: str, epochs: int) -> dict[str, Any]:
    """One variant in this (fresh) process: seconds and peak memory."""
    import logging

    import torch
    from torch.utils.data import DataLoader

    from dualmedia.modalities import MediaConfig
    from synthetic import dataset_spec
    from synthetic.fixtures import arrays_from_folder
    from training.config import load_train_config
    from training.data import MultimodalDataset, collate_with
    from training.lit import AlignmentModule, FusionModule
    from training.models.factory import build_fused_model

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    config = load_train_config(REPO / "configs" / "train" / "default.yaml")
    arrays = arrays_from_folder(Path(folder))
    torch.manual_seed(0)
    model = build_fused_model(dataset_spec(), MediaConfig(), config.model)
    model.encoder.trunk("text").cache_texts = cache
    loader = DataLoader(
        MultimodalDataset(arrays, model.modalities),
        batch_size=config.data.batch_size,
        shuffle=True,
        collate_fn=collate_with(model.media, model.modalities),
    )
    module_type = AlignmentModule if stage == "alignment" else FusionModule
    module = module_type(model, config.alignment if stage == "alignment" else config.fusion)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cache:  # what a second epoch sees: every text already encoded once
        model.to(device)
        with torch.no_grad():
            model.encoder.trunk("text")([t for t in arrays.inputs["text"] if t is not None])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock()
    if loop == "lightning":
        run_lightning(module, loader, epochs, config.hardware, clock)
    else:
        run_plain(module, loader, epochs, device, clock)
    seconds = clock.stopped - clock.started
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "stage": stage,
        "text_cache": cache,
        "loop": loop,
        "seconds": round(seconds, 2),
        "items_per_second": round(clock.items / seconds, 1),
        "peak_mb": round(peak_mb, 1),
        "device": device,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=600, help="synthetic items (default 600)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per variant (default 1)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per variant; the fastest counts (default 3)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from synthetic import generate_dataset

    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="dualmedia-bench-") as tmp:
        generate_dataset(Path(tmp) / "ds", args.items, seed=0)
        runs: dict[tuple, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        # Interleaved, so a slow minute on a shared machine hits every variant alike.
        for _ in range(args.repeats):
            for variant in VARIANTS:
                with spawn.Pool(1) as pool:
                    runs[variant].append(
                        pool.apply(measure, (str(Path(tmp) / "ds"), *variant, args.epochs))
                    )
    rows = [max(rs, key=lambda r: r["items_per_second"]) for rs in runs.values()]
    by = {(r["stage"], r["text_cache"], r["loop"]): r for r in rows}

    def ratio(stage: str, key: str) -> float:
        return round(by[(stage, True, "lightning")][key] / by[(stage, True, "plain")][key], 3)

    report = {
        "device": rows[0]["device"],
        "threads": rows[0]["threads"],
        "items": args.items,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "rows": rows,
        "lightning_vs_plain_throughput": {
            s: ratio(s, "items_per_second") for s in ("alignment", "fusion")
        },
        "lightning_vs_plain_peak_memory": {s: ratio(s, "peak_mb") for s in ("alignment", "fusion")},
        "text_cache_speedup": round(
            by[("alignment", True, "lightning")]["items_per_second"]
            / by[("alignment", False, "lightning")]["items_per_second"],
            2,
        ),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"default config, {args.items} items x {args.epochs} epoch(s) on {report['device']} "
        f"({report['threads']} threads), best of {args.repeats}"
    )
    print(
        f"{'stage':<10} {'text cache':>10} {'loop':>10} {'seconds':>8} {'items/s':>8} "
        f"{'peak MB':>8}"
    )
    for r in rows:
        print(
            f"{r['stage']:<10} {r['text_cache']!s:>10} {r['loop']:>10} {r['seconds']:>8} "
            f"{r['items_per_second']:>8} {r['peak_mb']:>8}"
        )
    for stage in ("alignment", "fusion"):
        print(
            f"{stage}: Lightning / plain loop = "
            f"{report['lightning_vs_plain_throughput'][stage]}x throughput, "
            f"{report['lightning_vs_plain_peak_memory'][stage]}x peak memory (target: within 3%)"
        )
    print(f"text cache: {report['text_cache_speedup']}x the alignment throughput")


if __name__ == "__main__":
    main()
