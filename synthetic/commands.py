"""`dualmedia generate`: the synthetic dataset, as a CLI command of the generator package
(plugged in through the `dualmedia.commands` entry point group)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from dualmedia.console import JsonOpt, emit, out, progress_bar
from dualmedia.settings import get_settings


def register(app: typer.Typer) -> None:
    app.command()(generate)


def generate(
    dest: Annotated[str, typer.Argument(help="A local folder or an s3://bucket/dataset URI.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of records.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    batch: Annotated[str, typer.Option(help="Batch folder name.")] = "batch-0001",
    start_index: Annotated[int, typer.Option(help="Index of the first record (its id).")] = 0,
    missing_modality_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.1,
    label_noise: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    corrupt_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of bad records.")] = 0.0,
    image_shift: Annotated[
        float, typer.Option(min=0, max=1, help="Drift: photo colour/light.")
    ] = 0.0,
    text_shift: Annotated[float, typer.Option(min=0, max=1, help="Drift: new vocabulary.")] = 0.0,
    audio_noise: Annotated[float, typer.Option(min=0, max=1, help="Drift: noisier audio.")] = 0.0,
    class_shift: Annotated[float, typer.Option(min=0, max=1, help="Drift: label priors.")] = 0.0,
    video_rate: Annotated[
        float,
        typer.Option(
            min=0,
            max=1,
            help="Share of items with a 2-4 s clip (96x96, 8 fps MP4) of the product turning; "
            "> 0 declares video too. Damage shows only in some frames; half the clips carry "
            "the voice note as their audio track.",
        ),
    ] = 0.0,
    modalities: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated modalities to declare instead of text,image,audio(,video), "
            "e.g. text,video (video needs --video-rate > 0).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a labelled synthetic customer-feedback dataset (text, photo, voice note, and
    with --video-rate a short clip).

    Labels: sentiment, product category, damaged, and mismatch (words and voice tone
    disagree). See docs/generator.md for how each label shows in each modality.
    """
    from synthetic import GeneratorKnobs, generate_dataset
    from synthetic.story import declared_modalities

    declared = None
    if modalities is not None:
        declared = [m.strip() for m in modalities.split(",") if m.strip()]
    try:  # a bad combination is a usage error, named before anything is written
        declared_modalities(declared, video_rate)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--modalities / --video-rate") from None

    knobs = GeneratorKnobs(
        missing_modality_rate=missing_modality_rate,
        label_noise=label_noise,
        corrupt_rate=corrupt_rate,
        image_shift=image_shift,
        text_shift=text_shift,
        audio_noise=audio_noise,
        class_shift=class_shift,
    )

    def run(folder: Path) -> dict[str, Any]:
        with progress_bar("generating", n) as advance:
            summary = generate_dataset(
                folder,
                n,
                seed=seed,
                batch=batch,
                knobs=knobs,
                start_index=start_index,
                progress=advance,
                video_rate=video_rate,
                modalities=declared,
            )
        return summary.to_dict()

    if dest.startswith("s3://"):
        from dualmedia.datasets import folder_size, upload_dataset
        from dualmedia.storage import ObjectStore

        store = ObjectStore(get_settings())
        with tempfile.TemporaryDirectory(prefix="dualmedia-gen-") as tmp:
            result = run(Path(tmp))
            with progress_bar("uploading", folder_size(Path(tmp)), unit_bytes=True) as advance:
                result["upload"] = upload_dataset(Path(tmp), dest, store, progress=advance)
        result["out_dir"] = dest
    else:
        result = run(Path(dest))
    emit(result, as_json, _print_generate)


def _print_generate(r: dict[str, Any]) -> None:
    out.print(
        f"wrote {r['n_records']} records ({r['n_corrupt']} deliberately bad) as batch "
        f"[bold]{r['batch']}[/] to {r['out_dir']}"
    )
