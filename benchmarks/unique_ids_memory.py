"""Driver memory of planning's repeated-id check: the whole id column counted at once (the first design) against
the streamed 64-bit hashes of ``rayood/data/unique_ids.py``.

    python benchmarks/unique_ids_memory.py [--rows 10000000]

Writes one Parquet file of ``--rows`` path-like ids (about 40 characters each, as listed object keys are), then
runs each check in a fresh process and reports its peak resident memory above the process's size after imports,
and its seconds. Both sides run in one invocation, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_ids(path: Path, rows: int) -> None:
    with pq.ParquetWriter(path, pa.schema([("id", pa.string())])) as writer:
        for start in range(0, rows, 1_000_000):
            stop = min(rows, start + 1_000_000)
            ids = pa.array([f"corpus/shard-{i // 10_000:05d}/image-{i:012d}.jpg" for i in range(start, stop)])
            writer.write_table(pa.table({"id": ids}))


def child(method: str, path: str) -> None:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from rayood.data.unique_ids import BATCH_ROWS, repeated_ids

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dataset = pads.dataset([path], format="parquet")
    started = time.perf_counter()
    if method == "column":
        ids = dataset.to_table(columns=["id"]).column(0)
        counts = pc.value_counts(ids)
        repeats = len(counts.filter(pc.greater(counts.field("counts"), 1)))
    else:
        batches = lambda: (b.column(0) for b in dataset.to_batches(columns=["id"], batch_size=BATCH_ROWS))  # noqa: E731
        repeats, _ = repeated_ids(batches, dataset.count_rows())
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "repeats": repeats,
                "peak_above_imports_mib": round((peak_kb - base_kb) / 1024, 1),
                "seconds": round(seconds, 2),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "ids.parquet"
        write_ids(path, args.rows)
        results = {}
        for method in ("column", "streamed"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, str(path)], check=True, capture_output=True, text=True
            )
            results[method] = json.loads(out.stdout)
        ratio = results["streamed"]["peak_above_imports_mib"] / max(results["column"]["peak_above_imports_mib"], 1e-9)
        print(json.dumps({"rows": args.rows, **results, "memory_ratio_streamed_to_column": round(ratio, 3)}, indent=2))


if __name__ == "__main__":
    main()
