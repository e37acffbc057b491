"""Drift verdicts, ours vs Evidently's defaults, on 10k-item windows over several seeds.

Every case is drawn anew for each seed. Both sides judge the same reference and
current windows. The table gives, per case, how many runs each called drift, how often
the two verdicts agree, and the times.

Embeddings: 10k x 256 per side, correlated and anisotropic like a model's. Ours is
`monitoring.drift.embedding_drift`. Evidently's default is the `model()` method that its
EmbeddingsDrift metric calls when no method is given. Its verdict for every case and seed
comes from that call alone, which is what the metric computes. The full Report also draws
a t-SNE picture of 2500 + 2500 points, which takes most of its time (60-85 s). So the
Report is run, timed and checked for the same verdict only for the first seed of the
first `--report-runs` cases.

Predictions: 10k predicted classes per side. Ours is `prediction_drift`; the default is
Evidently's ValueDrift with no method (Jensen-Shannon >= 0.1 for windows this size).

    .venv/bin/python benchmarks/drift.py [--seeds 5] [--rows 10000] [--dim 256]
        [--report-runs 2] [--candidates] [--json]

`--candidates` also runs the other methods we measured before choosing ours, on the
embedding cases.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from monitoring.drift import (
    DriftConfig,
    _frame,
    _sample,
    embedding_drift,
    evidently_default_embedding_drift,
    evidently_default_prediction_drift,
    prediction_drift,
)

CLASSES = np.array(["negative", "neutral", "positive"])
MIX = [0.5, 0.3, 0.2]  # the reference's classes


def _embedder(dim: int, rng: np.random.Generator) -> Callable[[int], np.ndarray]:
    # Correlated, anisotropic embeddings (like a model's), not isotropic noise.
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    scales = np.linspace(2.0, 0.1, dim)

    def draw(n: int) -> np.ndarray:
        return ((rng.normal(size=(n, dim)) * scales) @ mixing).astype(np.float32)

    return draw


@dataclass
class Case:
    name: str
    kind: str  # "embedding" or "prediction"
    # check name -> (reference, current): one embedding per modality, or predicted classes
    checks: dict[str, tuple[object, object]] = field(default_factory=dict)
    drifted: tuple[str, ...] = ()  # the checks with injected drift


def cases(rows: int, dim: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    draw = _embedder(dim, rng)
    reference = draw(rows)
    shifted = draw(rows)
    shifted[:, : dim // 16] += 0.5  # a shift in a few directions
    slow = draw(rows) + np.linspace(0.0, 0.1, rows, dtype=np.float32)[:, None]
    # Three modalities, each with its own embedder; only the image's 4 dims move.
    modal = {}
    for modality in ("text", "image", "audio"):
        draw_m = _embedder(dim, rng)
        ref_m, cur_m = draw_m(rows), draw_m(rows)
        if modality == "image":
            cur_m[:, :4] += 0.5
        modal[f"embedding:{modality}"] = (ref_m, cur_m)

    def classes(mix: list[float]) -> pd.Series:
        return pd.Series(rng.choice(CLASSES, rows, p=mix))

    ref_classes = classes(MIX)
    nudged, moved = classes([0.46, 0.32, 0.22]), classes([0.35, 0.35, 0.30])
    E, P = ("embedding",), ("prediction",)
    return [
        Case("no drift", "embedding", {"embedding": (reference, draw(rows))}),
        Case("shift +0.5 in 1/16 of dims", "embedding", {"embedding": (reference, shifted)}, E),
        Case(
            "shift +0.1 in every dim", "embedding", {"embedding": (reference, draw(rows) + 0.1)}, E
        ),
        Case("image only: +0.5 in 4 dims", "embedding", modal, ("embedding:image",)),
        Case("slow drift: 0 to +0.1, every dim", "embedding", {"embedding": (reference, slow)}, E),
        Case("classes: same mix", "prediction", {"prediction": (ref_classes, classes(MIX))}),
        # A real change, significant at 10k items, below the default's threshold.
        Case("classes: 50/30/20 to 46/32/22", "prediction", {"prediction": (ref_classes, nudged)}),
        Case(
            "classes: 50/30/20 to 35/35/30", "prediction", {"prediction": (ref_classes, moved)}, P
        ),
    ]


# ---- methods we measured before choosing ours (--candidates) ---------------------------


def previous_method(reference: np.ndarray, current: np.ndarray, seed: int) -> tuple[float, bool]:
    """What monitoring/drift.py used before: Evidently's model() on 32 PCA components of
    a 5k sample per side, bootstrapped threshold at the 0.99 quantile."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    rng = np.random.default_rng(seed)
    ref, cur = _sample(reference, 5000, rng), _sample(current, 5000, rng)
    method = model(bootstrap=True, quantile_probability=0.99, pca_components=32)
    score, drifted, _ = method(_frame(cur), _frame(ref))
    return float(score), bool(drifted)


def evidently_sampled(reference: np.ndarray, current: np.ndarray, seed: int) -> tuple[float, bool]:
    """Evidently's default model() on every dimension of a 5k sample per side."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    rng = np.random.default_rng(seed)
    ref, cur = _sample(reference, 5000, rng), _sample(current, 5000, rng)
    score, drifted, _ = model()(_frame(cur), _frame(ref))
    return float(score), bool(drifted)


def ks_bonferroni(reference: np.ndarray, current: np.ndarray, seed: int) -> tuple[float, bool]:
    """A two-sample KS test per dimension on a 5k sample per side; drift when the
    smallest p-value, times the number of dimensions (Bonferroni), is below 0.01."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    ref, cur = _sample(reference, 5000, rng), _sample(current, 5000, rng)
    p = stats.ks_2samp(ref, cur, axis=0).pvalue
    adjusted = float(min(1.0, p.min() * ref.shape[1]))
    return adjusted, adjusted < 0.01


def mmd_permutation(reference: np.ndarray, current: np.ndarray, seed: int) -> tuple[float, bool]:
    """MMD with an RBF kernel (median heuristic) on 1000 items per side; drift when a
    permutation test with 200 shuffles gives p < 0.01."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([_sample(reference, 1000, rng), _sample(current, 1000, rng)])
    z = z.astype(np.float64)
    n = len(z) // 2
    sq = (z**2).sum(axis=1)
    distances = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
    kernel = np.exp(-distances / np.median(distances[distances > 0]))
    signs = np.concatenate([np.full(n, 1.0 / n), np.full(len(z) - n, -1.0 / (len(z) - n))])
    shuffles = np.stack([signs] + [rng.permutation(signs) for _ in range(200)], axis=1)
    stat = np.einsum("ij,ij->j", shuffles, kernel @ shuffles)  # biased MMD^2 per column
    p = float((1 + (stat[1:] >= stat[0]).sum()) / (1 + len(stat) - 1))
    return p, p < 0.01


CANDIDATES = {
    "previous: PCA 32 + model(), 5k, bootstrap": previous_method,
    "Evidently model(), all dims, 5k sample": evidently_sampled,
    "KS per dim + Bonferroni, 5k": ks_bonferroni,
    "MMD permutation test, 1k": mmd_permutation,
}


# ---- the run -------------------------------------------------------------------------


def _check(
    case: Case, check: str, pair: tuple[object, object], seed: int
) -> tuple[dict[str, object], dict[str, object]]:
    reference, current = pair
    config = DriftConfig(seed=seed)
    if case.kind == "embedding":
        ours = embedding_drift(reference, current, config, name=check)
        default = evidently_default_embedding_drift(reference, current, name=check, report=False)
    else:
        ours = prediction_drift(reference, current, config, name=check)
        default = evidently_default_prediction_drift(reference, current, name=check)
    return ours.to_dict(), default.to_dict()


def run(rows: int, dim: int, seeds: int, report_runs: int, candidates: bool) -> dict:
    table: dict[str, dict] = {}
    for seed in range(seeds):
        for case in cases(rows, dim, seed):
            entry = table.setdefault(
                case.name,
                {"kind": case.kind, "runs": [], "report": None},
            )
            for check, pair in case.checks.items():
                ours, default = _check(case, check, pair, seed)
                run_ = {"seed": seed, "check": check, "ours": ours, "default": default}
                run_["drift injected"] = check in case.drifted
                if candidates and case.kind == "embedding":
                    run_["candidates"] = {}
                    for label, method in CANDIDATES.items():
                        started = time.perf_counter()
                        score, drifted = method(*pair, seed)
                        run_["candidates"][label] = {
                            "score": score,
                            "drifted": drifted,
                            "seconds": time.perf_counter() - started,
                        }
                entry["runs"].append(run_)
            if seed == 0 and case.kind == "embedding" and report_runs > 0:
                report_runs -= 1
                check, (reference, current) = next(iter(case.checks.items()))
                full = evidently_default_embedding_drift(reference, current, name="e")
                method_only = next(r for r in entry["runs"] if r["check"] == check)["default"]
                entry["report"] = {
                    "seconds": full.seconds,
                    "drifted": full.drifted,
                    "score": full.score,
                    "same verdict as the method alone": full.drifted == method_only["drifted"],
                }
    return table


def summarise(table: dict) -> list[dict]:
    rows = []
    for name, entry in table.items():
        runs = entry["runs"]
        ours_s = [r["ours"]["seconds"] for r in runs]
        default_s = [r["default"]["seconds"] for r in runs]
        row = {
            "case": name,
            "checks": len(runs),
            "ours drift": sum(r["ours"]["drifted"] for r in runs),
            "default drift": sum(r["default"]["drifted"] for r in runs),
            "agree": sum(r["ours"]["drifted"] == r["default"]["drifted"] for r in runs),
            "clean checks": sum(not r["drift injected"] for r in runs),
            "ours false alarms": sum(
                r["ours"]["drifted"] and not r["drift injected"] for r in runs
            ),
            "default false alarms": sum(
                r["default"]["drifted"] and not r["drift injected"] for r in runs
            ),
            "ours score": round(statistics.mean(r["ours"]["score"] for r in runs), 3),
            "default score": round(statistics.mean(r["default"]["score"] for r in runs), 3),
            "ours s (median)": round(statistics.median(ours_s), 2),
            "ours s (max)": round(max(ours_s), 2),
            "default s (median)": round(statistics.median(default_s), 2),
            "ratio": round(statistics.median(default_s) / statistics.median(ours_s), 1),
            "report": entry["report"],
        }
        if runs and "candidates" in runs[0]:
            row["candidates"] = {
                label: {
                    "agree": sum(
                        r["candidates"][label]["drifted"] == r["default"]["drifted"] for r in runs
                    ),
                    "drift": sum(r["candidates"][label]["drifted"] for r in runs),
                    "s (median)": round(
                        statistics.median(r["candidates"][label]["seconds"] for r in runs), 2
                    ),
                }
                for label in runs[0]["candidates"]
            }
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--report-runs",
        type=int,
        default=2,
        help="embedding cases (first seed) for which Evidently's full Report is also run",
    )
    parser.add_argument("--candidates", action="store_true", help="also run the alternatives")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    table = run(args.rows, args.dim, args.seeds, args.report_runs, args.candidates)
    rows = summarise(table)
    method = next(iter(table.values()))["runs"][0]["ours"]["method"]
    total = round(time.perf_counter() - started)
    if args.json:
        body = {"rows": args.rows, "dim": args.dim, "seeds": args.seeds, "method": method}
        print(json.dumps({**body, "seconds": total, "cases": rows}, indent=2, default=str))
        return
    print(f"windows of {args.rows} per side, embeddings {args.dim} dims, seeds 0-{args.seeds - 1}")
    print(f"ours: {method}; default: Evidently model() / ValueDrift() with no method")
    header = ("case", "checks", "ours", "default", "agree", "ours s", "max", "default s", "ratio")
    fmt = "{:<34} {:>6} {:>5} {:>7} {:>6} {:>7} {:>5} {:>9} {:>6}"
    print(fmt.format(*header))
    for r in rows:
        print(
            fmt.format(
                r["case"],
                r["checks"],
                r["ours drift"],
                r["default drift"],
                f"{r['agree']}/{r['checks']}",
                r["ours s (median)"],
                r["ours s (max)"],
                r["default s (median)"],
                f"{r['ratio']}x",
            )
        )
    for kind in ("embedding", "prediction"):
        of_kind = [r for r in rows if table[r["case"]]["kind"] == kind]
        where = [r["case"] for r in of_kind if r["ours false alarms"] or r["default false alarms"]]
        print(
            f"{kind} checks without injected drift: {sum(r['clean checks'] for r in of_kind)}; "
            f"false alarms: ours {sum(r['ours false alarms'] for r in of_kind)}, "
            f"default {sum(r['default false alarms'] for r in of_kind)}"
            + (f" ({', '.join(where)})" if where else "")
        )
    for r in rows:
        if r["report"]:
            rep = r["report"]
            print(
                f"Evidently Report (seed 0, {r['case']}): {rep['seconds']:.1f} s, "
                f"drift {rep['drifted']}, same verdict as model() alone: "
                f"{rep['same verdict as the method alone']}"
            )
    for r in rows:
        for label, c in r.get("candidates", {}).items():
            print(
                f"  candidate {label:<42} {r['case']:<34} agree {c['agree']}/{r['checks']}"
                f"  drift {c['drift']}  {c['s (median)']} s"
            )
    print(f"total {total} s")


if __name__ == "__main__":
    main()
