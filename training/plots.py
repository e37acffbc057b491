"""Evaluation figures as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from dualmedia import modalities
from dualmedia.snapshot import SnapshotArrays


def plot_confusion_matrices(
    matrices: dict[str, np.ndarray], classes: dict[str, list[str]], path: Path
) -> Path:
    """One panel per label: rows are the true class, columns the predicted one."""
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        ax.imshow(matrix, cmap="Blues")
        ticks = range(len(classes[name]))
        ax.set_xticks(ticks, classes[name], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, classes[name], fontsize=8)
        for (i, j), value in np.ndenumerate(matrix):
            colour = "white" if value > matrix.max() / 2 else "black"
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=colour)
        ax.set_title(name)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _show_item(ax: plt.Axes, arrays: SnapshotArrays, index: int, modality: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    item = arrays.inputs[modality][index]
    kind, value = ("caption", "") if item is None else modalities.get(modality).preview(item)
    if kind == "picture" and np.ndim(value) == 3:
        ax.imshow(value)
    elif kind == "picture":  # a 2-D map (e.g. a spectrogram)
        ax.imshow(value, origin="lower", aspect="auto", cmap="magma")
    else:
        ax.text(0.02, 0.5, textwrap.fill(str(value), 28), fontsize=7, va="center", wrap=True)


def plot_retrieval_examples(
    arrays: SnapshotArrays,
    queries: list[int],
    ranked: list[list[int]],
    query_modality: str,
    candidate_modality: str,
    path: Path,
) -> Path:
    """Each row: a query item, then its top candidates (green frame: the same item)."""
    k = max((len(r) for r in ranked), default=0)
    fig, axes = plt.subplots(
        len(queries), k + 1, figsize=(1.8 * (k + 1), 1.8 * len(queries)), squeeze=False
    )
    for row, (query, hits) in enumerate(zip(queries, ranked, strict=True)):
        _show_item(axes[row][0], arrays, query, query_modality)
        axes[row][0].set_title(f"{query_modality} query", fontsize=8)
        for col, hit in enumerate(hits, start=1):
            ax = axes[row][col]
            _show_item(ax, arrays, hit, candidate_modality)
            same = arrays.ids[hit] == arrays.ids[query]
            for spine in ax.spines.values():
                spine.set_edgecolor("green" if same else "lightgrey")
                spine.set_linewidth(3 if same else 1)
            ax.set_title(f"#{col}", fontsize=8)
    fig.suptitle(f"{query_modality} -> {candidate_modality} retrieval (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
