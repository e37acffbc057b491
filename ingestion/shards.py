"""Writing records as Parquet shards of bounded size (memory stays at one shard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class ShardWriter:
    """Buffers rows and writes `part-00000.parquet`, `part-00001.parquet`, ... to a folder."""

    def __init__(self, folder: Path, schema: pa.Schema, shard_rows: int, start: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.shard_rows = shard_rows
        self.next_index = start
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        self.paths: list[Path] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.shard_rows:
            self.flush()

    def add_table(self, table: pa.Table) -> None:
        """Append rows of an existing table (e.g. records carried over from a snapshot)."""
        for batch in table.to_batches(max_chunksize=self.shard_rows):
            self.rows.extend(batch.to_pylist())
            while len(self.rows) >= self.shard_rows:
                self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        chunk, self.rows = self.rows[: self.shard_rows], self.rows[self.shard_rows :]
        table = pa.Table.from_pylist(chunk, schema=self.schema)
        path = self.folder / f"part-{self.next_index:05d}.parquet"
        # Fixed writer options and no timestamps: same rows, same bytes, same hash.
        pq.write_table(table, path, compression="zstd", write_statistics=True)
        self.paths.append(path)
        self.next_index += 1
        self.written += len(chunk)

    def close(self) -> list[Path]:
        while self.rows:
            self.flush()
        return self.paths
