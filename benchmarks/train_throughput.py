"""Training throughput and memory of the default model, side by side in one run.

Trains each stage (alignment, fusion) of the default configuration on the synthetic demo data
and reports items per second and peak memory for:
  - today's default against the previous one (`before`: image ViT and audio AST from
    scratch, audio cut or padded to 4 s; `default`: the packaged EfficientNet-Lite0 and
    Whisper encoder, frozen, the audio clip length ingestion derives from the recordings),
    target 2x the alignment items/s;
  - the Lightning Trainer against a plain PyTorch loop over the same LightningModule's
    training_step, optimiser, schedule, model and batches (target: Lightning within 3%);
  - the frozen text and audio encoders' output caches on (the default; what every epoch
    after the first sees) and off (what the first epoch costs): MiniLM and Whisper would
    dominate CPU time, so the caches are what make the CPU default train in minutes;
  - the precision the hardware gets by default (32-true on CPU, bf16-mixed on GPU).
Then where an alignment step's time goes, for both configurations: loading the batch
(augmentation and collation), each modality's trunk and projection, the loss, backward and
the optimiser step (ms per batch, plain loop, after the warm-up).
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
# (stage, output caches of the frozen encoders, loop, configuration)
# Batches not timed at the start of a run: the Trainer's setup and the first steps' warm-up
# (allocator, autograd graph caches) are a one-off cost, not the training step's.
WARMUP_BATCHES = 2
VARIANTS = (
    ("alignment", True, "lightning", "before"),
    ("alignment", False, "lightning", "default"),
    ("alignment", True, "lightning", "default"),
    ("alignment", True, "plain", "default"),
    ("fusion", True, "lightning", "before"),
    ("fusion", True, "lightning", "default"),
    ("fusion", True, "plain", "default"),
)
CONFIGS = ("before", "default")
PROFILED_BATCHES = 8


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


def derived_media(folder: Path, spec: Any) -> dict[str, dict[str, Any]]:
    """What ingestion derives from this local folder (ModalitySpec.derive_media on the
    statistics of the first values of each media modality that derives anything, read from
    disk where ingestion/derive.py fetches from object storage)."""
    from dualmedia import modalities
    from dualmedia.modalities import MediaBounds, MediaError
    from ingestion.derive import derives

    bounds, derived = MediaBounds(), {}
    manifests = sorted(folder.glob("*/manifest.jsonl"))
    for modality in modalities.specs(spec.modalities):
        if modality.inline or not derives(modality):
            continue
        stats: list[dict[str, float]] = []
        for manifest in manifests:
            for line in filter(str.strip, manifest.read_text().splitlines()):
                path = json.loads(line).get(modality.name)
                file = manifest.parent / path if isinstance(path, str) else None
                if file is None or not file.is_file() or len(stats) >= 200:
                    continue
                try:
                    section = bounds.section(modality.name)
                    stats.append(modality.stats(modality.decode(file.read_bytes(), section)))
                except MediaError:
                    continue  # corrupt on purpose: ingestion skips it too
        derived[modality.name] = modality.derive_media(stats, spec.media.get(modality.name))
    return derived


def setup(folder: str, stage: str, cache: bool, config_name: str) -> tuple[Any, Any, Any]:
    """The configuration, model, stage module and loader of one variant."""
    import logging

    import torch
    from torch.utils.data import DataLoader

    from dualmedia import modalities
    from dualmedia.contract import load_dataset_spec
    from dualmedia.modalities.audio import AudioEncoder
    from dualmedia.modalities.image import ImageEncoder
    from synthetic.fixtures import arrays_from_folder
    from training.config import load_train_config
    from training.data import MultimodalDataset, collate_with
    from training.lit import AlignmentModule, FusionModule
    from training.models.factory import build_fused_model

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    config = load_train_config(REPO / "configs" / "train" / "default.yaml")
    spec = load_dataset_spec(Path(folder))
    if config_name == "before":  # the defaults of 2026-12-03 (session 19): both from scratch
        config.model.encoders.image = ImageEncoder(pretrained=None, trainable_layers=None)
        config.model.encoders.audio = AudioEncoder(pretrained=None, trainable_layers=None)
        media = spec.media_config(overrides={"audio": {"features": "logmel"}})
    else:
        media = spec.media_config(derived=derived_media(Path(folder), spec))
    arrays = arrays_from_folder(Path(folder), media=media)
    torch.manual_seed(0)
    model = build_fused_model(spec, media, config.model)
    model.encoder.cache_outputs(cache)
    cached = [m for m in model.modalities if hasattr(model.encoder.trunk(m), "cache_outputs")]
    loader = DataLoader(
        MultimodalDataset(arrays, model.modalities, augment=config.data.augment, media=media),
        batch_size=config.data.batch_size,
        shuffle=True,
        collate_fn=collate_with(model.media, model.modalities),
    )
    module_type = AlignmentModule if stage == "alignment" else FusionModule
    module = module_type(model, config.alignment if stage == "alignment" else config.fusion)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cache:  # what a second epoch sees: every text (and Whisper clip) encoded once
        model.to(device)
        for m in cached:
            present = [x for x in arrays.inputs[m] if x is not None]
            with torch.no_grad():
                for first in range(0, len(present), 64):
                    chunk = present[first : first + 64]
                    value = chunk if m == "text" else modalities.get(m).collate(chunk, media)
                    model.encoder.trunk(m)(value)
    return config, module, loader


def measure(
    folder: str, stage: str, cache: bool, loop: str, config_name: str, epochs: int
) -> dict[str, Any]:
    """One variant in this (fresh) process: seconds and peak memory."""
    import torch

    config, module, loader = setup(folder, stage, cache, config_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
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
        "cache": cache,
        "loop": loop,
        "config": config_name,
        "seconds": round(seconds, 2),
        "items_per_second": round(clock.items / seconds, 1),
        "peak_mb": round(peak_mb, 1),
        "device": device,
        "threads": torch.get_num_threads(),
    }


def profile(folder: str, config_name: str) -> dict[str, Any]:
    """Where an alignment step's time goes (ms per batch): loading, each trunk with its
    projection (forward), the loss, backward, the optimiser step. Synchronised on a GPU."""
    import torch

    _, module, loader = setup(folder, "alignment", True, config_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device).train()
    encoder = module.model.encoder
    optimizer = torch.optim.AdamW(module._groups())

    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    parts: dict[str, float] = {}
    timed = 0
    batches = iter(())
    for i in range(WARMUP_BATCHES + PROFILED_BATCHES):
        started = now()
        raw = next(batches, None)
        if raw is None:  # a small dataset: another epoch
            batches = iter(loader)
            raw = next(batches)
        batch = module.transfer_batch_to_device(raw, device, 0)
        marks = {"load": now() - started}
        embeddings = {}
        for m in encoder.modalities:
            started = now()
            embeddings[m] = encoder.encode(m, batch, batch["present"][m])
            marks[f"trunk:{m}"] = now() - started
        started = now()
        loss, _ = module._contrastive(embeddings, batch["present"], batch["labels"])
        marks["loss"] = now() - started
        started = now()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks["backward"] = now() - started
        started = now()
        optimizer.step()
        marks["optimiser"] = now() - started
        if i >= WARMUP_BATCHES:
            timed += 1
            for name, seconds in marks.items():
                parts[name] = parts.get(name, 0.0) + seconds
    ms = {name: round(1000 * total / timed, 1) for name, total in parts.items()}
    return {"config": config_name, "ms_per_batch": ms, "total_ms": round(sum(ms.values()), 1)}


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
        folder = str(Path(tmp) / "ds")
        generate_dataset(Path(folder), args.items, seed=0)
        runs: dict[tuple, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        # Interleaved, so a slow minute on a shared machine hits every variant alike.
        for _ in range(args.repeats):
            for variant in VARIANTS:
                with spawn.Pool(1) as pool:
                    runs[variant].append(pool.apply(measure, (folder, *variant, args.epochs)))
        profiles = []
        for config_name in CONFIGS:
            with spawn.Pool(1) as pool:
                profiles.append(pool.apply(profile, (folder, config_name)))
    rows = [max(rs, key=lambda r: r["items_per_second"]) for rs in runs.values()]
    by = {(r["stage"], r["cache"], r["loop"], r["config"]): r for r in rows}

    def ratio(a: tuple, b: tuple, key: str = "items_per_second") -> float:
        return round(by[a][key] / by[b][key], 3)

    def default(stage: str, loop: str = "lightning") -> tuple:
        return (stage, True, loop, "default")

    report = {
        "device": rows[0]["device"],
        "threads": rows[0]["threads"],
        "items": args.items,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "rows": rows,
        "default_vs_before_throughput": {
            s: ratio(default(s), (s, True, "lightning", "before")) for s in ("alignment", "fusion")
        },
        "lightning_vs_plain_throughput": {
            s: ratio(default(s), default(s, "plain")) for s in ("alignment", "fusion")
        },
        "lightning_vs_plain_peak_memory": {
            s: ratio(default(s), default(s, "plain"), "peak_mb") for s in ("alignment", "fusion")
        },
        "cache_speedup": ratio(default("alignment"), ("alignment", False, "lightning", "default")),
        "alignment_step_profile": profiles,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.items} items x {args.epochs} epoch(s) on {report['device']} "
        f"({report['threads']} threads), best of {args.repeats}"
    )
    print(
        f"{'stage':<10} {'config':>8} {'cache':>6} {'loop':>10} {'seconds':>8} "
        f"{'items/s':>8} {'peak MB':>8}"
    )
    for r in rows:
        print(
            f"{r['stage']:<10} {r['config']:>8} {r['cache']!s:>6} {r['loop']:>10} "
            f"{r['seconds']:>8} {r['items_per_second']:>8} {r['peak_mb']:>8}"
        )
    for stage in ("alignment", "fusion"):
        print(
            f"{stage}: default / before = {report['default_vs_before_throughput'][stage]}x "
            f"throughput (target 2x for alignment); Lightning / plain loop = "
            f"{report['lightning_vs_plain_throughput'][stage]}x throughput, "
            f"{report['lightning_vs_plain_peak_memory'][stage]}x peak memory (target: within 3%)"
        )
    speedup = report["cache_speedup"]
    print(f"output caches (a later epoch vs the first): {speedup}x the alignment throughput")
    print("alignment step, ms per batch:")
    names = list(profiles[0]["ms_per_batch"])
    print(f"  {'part':<14}" + "".join(f"{p['config']:>10}" for p in profiles))
    for name in [*names, "total"]:
        cells = [p["total_ms"] if name == "total" else p["ms_per_batch"][name] for p in profiles]
        print(f"  {name:<14}" + "".join(f"{c:>10}" for c in cells))


if __name__ == "__main__":
    main()
