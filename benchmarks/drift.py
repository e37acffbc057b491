"""Embedding drift on a 10k x 256 window: our configured method vs Evidently's default.

Both judge the same reference and current windows, for no drift and for injected
drift, in one run; the table shows the time of each, their ratio, and whether their
verdicts agree.

    .venv/bin/python benchmarks/drift.py [--rows 10000] [--dim 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

from monitoring.drift import DriftConfig, embedding_drift, evidently_default_embedding_drift


def windows(rows: int, dim: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    # Correlated, anisotropic embeddings (like a model's), not isotropic noise.
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    scales = np.linspace(2.0, 0.1, dim)

    def draw(n: int) -> np.ndarray:
        return ((rng.normal(size=(n, dim)) * scales) @ mixing).astype(np.float32)

    reference = draw(rows)
    same = draw(rows)
    shifted = draw(rows)
    shifted[:, : dim // 16] += 0.5  # a shift in a few directions
    return {
        "no drift": (reference, same),
        "shift +0.5 in 1/16 of dims": (reference, shifted),
        "shift +0.1 in every dim": (reference, draw(rows) + 0.1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    config = DriftConfig()
    rows = []
    for case, (reference, current) in windows(args.rows, args.dim, args.seed).items():
        ours = embedding_drift(reference, current, config)
        default = evidently_default_embedding_drift(reference, current)
        rows.append(
            {
                "case": case,
                "ours_seconds": round(ours.seconds, 2),
                "ours_drift": ours.drifted,
                "ours_score": round(ours.score, 3),
                "default_seconds": round(default.seconds, 2),
                "default_drift": default.drifted,
                "default_score": round(default.score, 3),
                "speedup": round(default.seconds / ours.seconds, 1),
                "same_verdict": ours.drifted == default.drifted,
            }
        )
    if args.json:
        print(
            json.dumps(
                {"rows": args.rows, "dim": args.dim, "method": ours.method, "cases": rows}, indent=2
            )
        )
        return
    print(
        f"window {args.rows} x {args.dim}; ours: {ours.method}; default: Evidently Report + model()"
    )
    header = ("case", "ours s", "verdict", "default s", "verdict", "speed-up", "same")
    print("{:<28} {:>7} {:>8} {:>10} {:>8} {:>9} {}".format(*header))
    for r in rows:
        print(
            "{:<28} {:>7} {!s:>8} {:>10} {!s:>8} {:>8}x {}".format(
                r["case"],
                r["ours_seconds"],
                r["ours_drift"],
                r["default_seconds"],
                r["default_drift"],
                r["speedup"],
                r["same_verdict"],
            )
        )


if __name__ == "__main__":
    main()
