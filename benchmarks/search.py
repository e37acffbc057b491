"""Vector search side by side: exact FAISS, approximate FAISS (HNSW, IVF-PQ), sqlite-vec, Feast.

For each catalogue size, synthetic L2-normalised vectors of the model's dimension
(configs/train/default.yaml: model.embed_dim) are indexed by every backend of
serving.vector_index; each is timed on the same queries in interleaved rounds (so all
share whatever else the machine is doing) and scored against the exact top 10:

  build s, structure MB (the index's own bytes; Feast: Milvus's files), RSS delta MB
  (memory the build kept, with any child process; Milvus Lite runs in-process), queries/s
  one query per call and in one batch, recall@10 unfiltered and under a filter (20% of
  items: damaged) and a selective one (1%: one batch of 100).

HNSW is built once and searched at several efSearch values (a sweep costs no rebuild);
the row marked * is the default config (serving.vector_index.DEFAULT_*). `feast` is
Feast's online document retrieval (retrieve_online_documents_v2) on its Milvus online
store, embedded (Milvus Lite): serving/feast_vector_index.py. Feast's sqlite online store
is probed and the footnote says why it is not offered. The scanning backends (sqlite-vec,
feast) answer one query per call and are timed on --scan-queries of the queries.

  .venv/bin/python benchmarks/search.py                   # 100k and 1M, ~20-30 min on 2 cores
  .venv/bin/python benchmarks/search.py --sizes 100k      # ~3 min
  .venv/bin/python benchmarks/search.py --json

Progress goes to stderr; the table (or JSON) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving import vector_index as vi  # noqa: E402

K = 10


def log(message: str) -> None:
    print(f"[search {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def embed_dim() -> int:
    config = yaml.safe_load((ROOT / "configs/train/default.yaml").read_text(encoding="utf-8"))
    return int(config["model"]["embed_dim"])


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def rss_mb() -> float:
    """This process's resident memory and its children's."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / 2**20


def synthetic(n: int, dim: int, kind: str, seed: int) -> np.ndarray:
    """`clustered`: embeddings-like, clusters in a 32-dim subspace of the model's space
    plus isotropic noise (real embeddings have a low intrinsic dimension). `uniform`:
    uniform on the sphere, the worst case for any approximate index."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    if kind == "clustered":
        basis = np.random.default_rng(1000).standard_normal((32, dim)).astype(np.float32)
        centres = np.random.default_rng(1001).standard_normal((1000, 32)).astype(np.float32)
    for start in range(0, n, 100_000):  # in chunks: no full-size float64 temporaries
        m = min(100_000, n - start)
        if kind == "clustered":
            latent = centres[rng.integers(0, len(centres), m)]
            latent += 0.6 * rng.standard_normal((m, 32), dtype=np.float32)
            x = latent @ basis + 0.5 * rng.standard_normal((m, dim), dtype=np.float32)
        else:
            x = rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def attributes(n: int) -> dict[str, list[Any]]:
    rows = np.arange(n)
    return {
        "damaged": (rows % 5 == 0).tolist(),  # 20% of items
        "batch": [f"b{r % 100:02d}" for r in rows],  # 100 batches: 1% each
    }


SCANNING = ("sqlite-vec", "feast")
FILTERS = {"none": None, "20%": {"damaged": True}, "1%": {"batch": "b07"}}


def feast_sqlite_probe() -> str:
    """Why Feast's sqlite vector retrieval can or cannot run in this interpreter."""
    import sqlite3

    reasons = []
    # feast/infra/online_stores/sqlite.py loads sqlite-vec only when
    # sys.version_info[0:2] == (3, 10), whatever vector_enabled says.
    if sys.version_info[:2] != (3, 10):
        reasons.append(
            f"Feast loads sqlite-vec only on Python 3.10 (this is {sys.version.split()[0]})"
        )
    if not hasattr(sqlite3.connect(":memory:"), "enable_load_extension"):
        reasons.append("this Python's sqlite3 cannot load extensions")
    # Found with both patched out (pysqlite3 + the version check): the first query answers,
    # the second fails with "UNIQUE constraint failed on vec_table primary key", because
    # every query copies all vectors into one vec0 table; filters apply after the top k.
    reasons.append(
        "patched past that, every query copies all vectors into a vec0 table (the 2nd "
        "query fails: UNIQUE constraint) and filters after the top k"
    )
    return "; ".join(reasons)


def time_queries(index: vi.VectorIndex, queries: np.ndarray, single: int) -> dict[str, float]:
    one_by_one = queries[:single]
    t = time.perf_counter()
    for q in one_by_one:
        index.search(q[None, :], K)
    single_qps = len(one_by_one) / (time.perf_counter() - t)
    t = time.perf_counter()
    index.search(queries, K)
    batch_qps = len(queries) / (time.perf_counter() - t)
    return {"single": single_qps, "batch": batch_qps}


def recall(
    index: vi.VectorIndex, truth: dict[str, list[list[str]]], queries: np.ndarray
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, flt in FILTERS.items():
        got = index.search(queries, K, flt).ids
        want = truth[name][: len(queries)]
        hits = [len(set(g) & set(t)) / len(t) for g, t in zip(got, want, strict=True)]
        full = all(len(g) == len(t) for g, t in zip(got, want, strict=True))
        out[name] = float(np.mean(hits))
        out[f"{name}_k_returned"] = full
    return out


def run_size(n: int, args: argparse.Namespace, dim: int) -> list[dict[str, Any]]:
    log(f"{n:,} x {dim} {args.data} vectors")
    vectors = synthetic(n, dim, args.data, seed=1)
    queries = synthetic(args.queries, dim, args.data, seed=2)
    ids = [f"item-{i}" for i in range(n)]
    attrs = attributes(n)
    nlist = args.nlist
    configs: list[tuple[str, str]] = [("exact", "exact")]
    configs.append(("hnsw", f"faiss:HNSW{args.hnsw_m},Flat;efConstruction={args.ef_construction}"))
    configs.append(("ivfpq", f"faiss:IVF{nlist},PQ{args.pq};nprobe={args.nprobe}"))
    configs.append(("ivfpq+refine", f"faiss:IVF{nlist},PQ{args.pq},RFlat;nprobe={args.nprobe}"))
    if not args.no_sqlite:
        why = vi.sqlite_vec_available()
        if why is None:
            configs.append(("sqlite-vec", "sqlite-vec"))
        else:
            log(f"sqlite-vec skipped: {why}")
    if not args.no_feast:
        configs.append(("feast", "feast"))
    built: dict[str, vi.VectorIndex] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, config in configs:
        if name in args.skip:
            continue
        gc.collect()
        before = rss_mb()
        log(f"build {name} ({config})")
        t = time.perf_counter()
        index = vi.build_index(vectors, ids, attrs, config, recall_queries=0)
        build_s = time.perf_counter() - t
        gc.collect()
        built[name] = index
        rows[name] = {
            "size": n,
            "index": name,
            "config": str(index.config),
            "build_s": build_s,
            "structure_mb": index.size_bytes() / 2**20,
            "rss_delta_mb": rss_mb() - before,
        }
        log(f"  {build_s:.1f}s, {rows[name]['structure_mb']:.0f} MB")
    log("exact top 10 (ground truth)")
    exact = built["exact"]
    truth = {name: exact.search(queries, K, flt).ids for name, flt in FILTERS.items()}

    # Search settings to sweep on the built indexes (no rebuild): (row name, index, config).
    variants: list[tuple[str, str, vi.IndexConfig]] = []
    for name, index in built.items():
        if name == "hnsw":
            for ef in args.ef_sweep:
                variants.append(
                    (f"hnsw ef={ef}", name, vi.IndexConfig.parse(f"{index.config};efSearch={ef}"))
                )
        elif name.startswith("ivfpq"):
            for nprobe in args.nprobe_sweep:
                variants.append(
                    (
                        f"{name} nprobe={nprobe}",
                        name,
                        vi.IndexConfig.parse(f"{index.config};nprobe={nprobe}"),
                    )
                )
        else:
            variants.append((name, name, index.config))

    results: dict[str, dict[str, Any]] = {}
    for label, name, config in variants:
        index = built[name]
        index.config = config
        log(f"recall {label}")
        # sqlite-vec and Feast scan every item per query, one query per call: a subset
        qs = queries if name not in SCANNING else queries[: args.scan_queries]
        results[label] = {
            **rows[name],
            "row": label,
            "config": str(config),
            **recall(index, truth, qs),
        }
    # Timing in interleaved rounds: every variant once per round, best round kept.
    for rnd in range(args.rounds):
        log(f"timing round {rnd + 1}/{args.rounds}")
        for label, name, config in variants:
            index = built[name]
            index.config = config
            single = args.single if name not in SCANNING else min(args.single, 50)
            qs = queries if name not in SCANNING else queries[: args.scan_queries]
            timing = time_queries(index, qs, single)
            for key in ("single", "batch"):
                results[label][f"qps_{key}"] = max(
                    results[label].get(f"qps_{key}", 0.0), timing[key]
                )
    for label in results:
        for key in ("single", "batch"):
            results[label][f"x_exact_{key}"] = (
                results[label][f"qps_{key}"] / results["exact"][f"qps_{key}"]
            )
        results[label]["default"] = _is_default(results[label])
    for index in built.values():
        if hasattr(index, "close"):
            index.close()
    del built, exact, vectors
    gc.collect()
    return list(results.values())


def _is_default(row: dict[str, Any]) -> bool:
    config = vi.IndexConfig.parse(row["config"])
    default = vi.IndexConfig()
    return (
        row["index"] == "hnsw"
        and config.factory == default.factory
        and config.ef_search == default.ef_search
        and config.ef_construction == default.ef_construction
    )


def table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    head = (
        f"{'size':>9} {'index':<24} {'build s':>8} {'struct MB':>9} {'RSS+ MB':>8} "
        f"{'q/s 1':>8} {'x exact':>7} {'q/s batch':>9} {'x exact':>7} "
        f"{'R@10':>6} {'R@10 20%':>8} {'R@10 1%':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        flag = "*" if r["default"] else " "
        lines.append(
            f"{r['size']:>9,} {r['row'] + flag:<24} {r['build_s']:>8.1f} {r['structure_mb']:>9.0f} "
            f"{r['rss_delta_mb']:>8.0f} {r['qps_single']:>8.0f} {r['x_exact_single']:>7.1f} "
            f"{r['qps_batch']:>9.0f} {r['x_exact_batch']:>7.1f} {r['none']:>6.3f} "
            f"{r['20%']:>8.3f} {r['1%']:>8.3f}"
        )
    lines.append("")
    lines.append(
        f"* default config ({vi.IndexConfig()}); {meta['threads']} FAISS threads; "
        f"{meta['queries']} queries ({meta['data']}), k={K}; load average "
        f"{meta['load_before']:.1f} -> {meta['load_after']:.1f} on {os.cpu_count()} cores"
    )
    short = [r["row"] for r in rows if not all(r[f"{f}_k_returned"] for f in FILTERS)]
    lines.append("every filtered query returned k items" if not short else f"fewer than k: {short}")
    lines.append(
        f"feast: Milvus Lite {meta['milvus_lite']} online store (FLAT); Feast's sqlite online "
        f"store not offered: {meta['feast_sqlite']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100k,1M", help="catalogue sizes, e.g. 100k,1M")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one per call")
    parser.add_argument(
        "--scan-queries", type=int, default=200, help="queries for sqlite-vec and feast"
    )
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads")
    parser.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=vi.DEFAULT_EF_CONSTRUCTION)
    parser.add_argument("--ef-sweep", default="32,64,128,256")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    parser.add_argument("--pq", type=int, default=32, help="PQ sub-quantizers")
    parser.add_argument("--nprobe", type=int, default=vi.DEFAULT_NPROBE)
    parser.add_argument("--nprobe-sweep", default="16,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", default="", help="indexes to leave out, e.g. ivfpq,sqlite-vec")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--no-feast", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.ef_sweep = [int(x) for x in args.ef_sweep.split(",") if x]
    args.nprobe_sweep = [int(x) for x in args.nprobe_sweep.split(",") if x]
    args.skip = {s for s in args.skip.split(",") if s}
    faiss.omp_set_num_threads(args.threads)
    dim = embed_dim()
    meta: dict[str, Any] = {
        "dim": dim,
        "threads": args.threads,
        "queries": args.queries,
        "data": args.data,
        "load_before": os.getloadavg()[0],
        "feast_sqlite": feast_sqlite_probe(),
        "milvus_lite": importlib.metadata.version("milvus-lite"),
        "faiss": faiss.__version__,
    }
    rows: list[dict[str, Any]] = []
    for size in args.sizes.split(","):
        rows.extend(run_size(parse_size(size), args, dim))
    meta["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))
    else:
        print(table(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
