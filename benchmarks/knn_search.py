"""Exact k-th neighbour search (score_knn / score_multiscale): throughput and peak memory vs bank size.

    python benchmarks/knn_search.py [--sizes 10000 100000 1000000] [--dim 512] [--queries 1536] [--device cpu]

Each bank size runs in a fresh process so that its peak resident memory (CPU) or peak allocated device
memory (CUDA) is its own. 1536 queries = one batch of 256 images x 6 region vectors.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time

import torch

from rayood.detectors.knn import kth_neighbour_distance, normalise


def measure(size: int, dim: int, queries: int, k: int, chunk: int, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    bank = normalise(torch.randn(size, dim)).to(device)
    query = normalise(torch.randn(queries, dim)).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    kth_neighbour_distance(query, bank, k, chunk)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        kth_neighbour_distance(query, bank, k, chunk)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / repeats
    result = {
        "bank_rows": size,
        "dim": dim,
        "queries": queries,
        "k": k,
        "chunk_rows": chunk,
        "device": device,
        "queries_per_s": round(queries / seconds, 1),
        "bank_mib": round(size * dim * 4 / 2**20, 1),
    }
    if device == "cuda":
        result["peak_search_mib_above_bank"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    else:
        result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _child(args: tuple, queue: multiprocessing.Queue) -> None:
    queue.put(measure(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1536)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--chunks", type=int, nargs="+", default=[8192, 65536])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    for size in args.sizes:
        for chunk in args.chunks:
            queue = context.Queue()
            process = context.Process(
                target=_child, args=((size, args.dim, args.queries, args.k, chunk, args.device, args.repeats), queue)
            )
            process.start()
            print(json.dumps(queue.get()), flush=True)
            process.join()


if __name__ == "__main__":
    main()
