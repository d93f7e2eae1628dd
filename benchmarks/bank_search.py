"""KNN / multi-scale bank search: exact against faiss IVF (recall, AUROC change, speed, memory), and what
subsampling the bank costs.

    python benchmarks/bank_search.py synthetic [--rows 1000000] [--dim 512] [--queries 2000]
    python benchmarks/bank_search.py bundle --bundle rayood-cifar10/bundle --id ../shared/data/cifar10_test.parquet \
        --ood tin=../shared/data/tin32_val.parquet --ood mnist=../shared/data/mnist32_test.parquet

``synthetic``: a bank of unit vectors around ``rows / 1000`` cluster centres; queries are half near the
clusters (ID-like) and half random directions (OOD-like). ``bundle``: a fitted bundle's exact bank against
region vectors of real images, scored with ``knn`` (global vectors, knn_k) and ``multiscale`` (every region, k).
Recall: the share of queries whose approximate k-th distance equals the exact one (within 1e-4; an approximate
search can only miss neighbours, so it can only be larger). Memory: growth of resident memory in a fresh process
that maps the stored bank or index and answers 256 queries, against the file size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time

import numpy as np
import torch
from process_memory import status_kib
from sklearn.metrics import roc_auc_score

from rayood.detectors.knn import ExactSearch, IvfSearch, build_ivf, default_lists, normalise, read_ivf, write_ivf

PROBES = (8, 32, 128)
CHUNK = 65_536


def _timed(search, queries: torch.Tensor, k: int) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    distances = search.kth_distance(queries, k).numpy()
    return distances, (time.perf_counter() - started) / len(queries) * 1e3


def _mapped_search_peak(path: str, kind: str, queries: np.ndarray, k: int, probe: int, out) -> None:
    torch.set_num_threads(2)
    IvfSearch(build_ivf(queries[:64], 1), 1).kth_distance(torch.from_numpy(queries[:4]), 1)  # libraries warmed up
    fields = ("VmHWM", "RssAnon", "RssFile")
    base = [status_kib(field) for field in fields]
    search = ExactSearch(np.load(path, mmap_mode="c"), CHUNK) if kind == "exact" else IvfSearch(read_ivf(path), probe)
    search.kth_distance(torch.from_numpy(queries), k)
    out.put([status_kib(field) - before for field, before in zip(fields, base)])


def _peak_mib_of_mapped_search(path: str, kind: str, queries: np.ndarray, k: int, probe: int) -> dict:
    """Memory of a fresh process (spawned, not forked: OpenMP's threads do not survive a fork) that maps ``path``
    and runs the queries, past its warmed-up libraries: growth of its peak RSS, and of its private (anonymous)
    and mapped-file resident MiB at the end. Mapped pages are the page cache's, shared by every process on the
    node that maps the same file; private ones are what each further actor costs."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_mapped_search_peak, args=(path, kind, queries, k, probe, queue))
    process.start()
    growth, anonymous, mapped = queue.get()
    process.join()
    return {
        "peak_growth_mib": round(growth / 1024, 1),
        "private_mib": round(anonymous / 1024, 1),
        "mapped_file_mib": round(mapped / 1024, 1),
    }


def compare(
    bank: np.ndarray, queries: torch.Tensor, truth: np.ndarray, k: int, lists: int | None, regions: int = 1
) -> dict:
    """Exact vs IVF at several probes on one bank: ms/query, recall of the k-th distance, AUROC, memory.
    With ``regions`` > 1 the queries are each image's region vectors in a row and the score is their minimum
    (MODE's cross-scale decision)."""

    def auroc(distances: np.ndarray) -> float:
        return round(100 * roc_auc_score(truth, distances.reshape(-1, regions).min(axis=1)), 2)

    exact, exact_ms = _timed(ExactSearch(bank, CHUNK), queries, k)
    started = time.perf_counter()
    index = build_ivf(bank, lists)
    build_s = time.perf_counter() - started
    result = {
        "bank": list(bank.shape),
        "k": k,
        "queries": len(queries),
        "exact_ms_per_query": round(exact_ms, 3),
        "exact_auroc": auroc(exact),
        "ivf_lists": int(index.nlist),
        "ivf_build_s": round(build_s, 1),
        "ivf": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        bank_path, index_path = os.path.join(scratch, "bank.npy"), os.path.join(scratch, "index.faiss")
        np.save(bank_path, bank)
        write_ivf(index, index_path)
        del index
        result["bank_file_mib"] = round(os.path.getsize(bank_path) / 2**20, 1)
        result["index_file_mib"] = round(os.path.getsize(index_path) / 2**20, 1)
        sample = queries[:256].numpy()
        result["exact_search_memory"] = _peak_mib_of_mapped_search(bank_path, "exact", sample, k, 0)
        for probe in PROBES:
            approximate, ms = _timed(IvfSearch(read_ivf(index_path), probe), queries, k)
            result["ivf"].append(
                {
                    "probe": probe,
                    "ms_per_query": round(ms, 3),
                    "speed_up": round(exact_ms / ms, 1),
                    "recall_kth": round(float(np.mean(np.abs(approximate - exact) < 1e-4)), 4),
                    "mean_excess": round(float(np.mean(approximate - exact)), 5),
                    "auroc": auroc(approximate),
                    "search_memory": _peak_mib_of_mapped_search(index_path, "ivf", sample, k, probe),
                }
            )
    return result


def synthetic(args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(max(1, args.rows // 1000), args.dim, generator=generator)
    bank = np.empty((args.rows, args.dim), dtype=np.float32)
    for start in range(0, args.rows, 100_000):  # built in slices: the noise for 1M x 512 at once is 2 GB more
        n = min(100_000, args.rows - start)
        members = torch.randint(0, len(centres), (n,), generator=generator)
        bank[start : start + n] = normalise(
            centres[members] + 0.5 * torch.randn(n, args.dim, generator=generator)
        ).numpy()
    half = args.queries // 2
    members = torch.randint(0, len(centres), (half,), generator=generator)
    near = centres[members] + 0.5 * torch.randn(half, args.dim, generator=generator)
    queries = normalise(torch.cat([near, torch.randn(half, args.dim, generator=generator)]))
    truth = np.r_[np.zeros(half), np.ones(half)]
    return {"synthetic": compare(bank, queries, truth, args.k, args.lists)}


def _region_vectors(bundle, path: str, limit: int) -> torch.Tensor:
    import pyarrow.parquet as pq

    from rayood.data.decode import decode_images
    from rayood.detectors.multiscale import search_vectors
    from rayood.models.backbones import uint8_to_unit

    table = pq.read_table(path, columns=["image"]).slice(0, limit)
    size = bundle.settings.preprocess.native_size
    vectors = []
    with torch.no_grad():
        for start in range(0, table.num_rows, 500):
            images = decode_images(table.column("image").slice(start, 500).to_pylist(), size)
            pixels = uint8_to_unit(torch.from_numpy(images))
            features, mirror = bundle.backbone.features(pixels), bundle.backbone.features(pixels.flip(3))
            vectors.append(search_vectors(features, mirror, bundle.settings.multiscale))
    return torch.cat(vectors)


def from_bundle(args: argparse.Namespace) -> dict:
    from rayood.bundle_models import load_bundle

    bundle = load_bundle(args.bundle, require_calibration=False)
    bank = np.ascontiguousarray(bundle.detectors["multiscale"].mixed.bank).reshape(
        bundle.manifest.family("multiscale").facts["bank_rows"],
        bundle.manifest.family("multiscale").facts["regions"],
        -1,
    )
    search = bundle.settings.multiscale
    id_vectors = _region_vectors(bundle, args.id, args.limit)
    results: dict = {"bundle": bundle.bundle_id}
    for pair in args.ood:
        name, path = pair.split("=", 1)
        ood = _region_vectors(bundle, path, args.limit)
        truth = np.r_[np.zeros(len(id_vectors)), np.ones(len(ood))]
        both = torch.cat([id_vectors, ood])
        results[name] = {
            "knn": compare(bank[:, 0].copy(), both[:, 0].contiguous(), truth, search.knn_k, args.lists),
            "multiscale": compare(
                bank.reshape(-1, bank.shape[-1]),
                both.reshape(-1, both.shape[-1]),
                truth,
                search.k,
                args.lists,
                regions=both.shape[1],
            ),
            "subsampled_knn": _subsampled(bank, both, truth, search.knn_k),
        }
        print(json.dumps({name: results[name]}), flush=True)
    return results


def _subsampled(bank: np.ndarray, queries: torch.Tensor, truth: np.ndarray, k: int) -> list[dict]:
    """KNN AUROC with a uniformly random share of the bank's images (what ``bank_fraction`` does by id hash)."""
    rows = []
    for fraction in (1.0, 0.5, 0.25, 0.1):
        keep = np.sort(np.random.default_rng(0).permutation(len(bank))[: max(k, int(fraction * len(bank)))])
        scores = ExactSearch(bank[keep, 0].copy(), CHUNK).kth_distance(queries[:, 0].contiguous(), k).numpy()
        rows.append(
            {"fraction": fraction, "bank_images": len(keep), "auroc": round(100 * roc_auc_score(truth, scores), 2)}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("synthetic")
    one.add_argument("--rows", type=int, default=1_000_000)
    one.add_argument("--dim", type=int, default=512)
    one.add_argument("--queries", type=int, default=2000)
    one.add_argument("--k", type=int, default=50)
    one.add_argument(
        "--lists", type=int, default=None, help=f"IVF cells (default 4 sqrt(rows): {default_lists(10**6)} at 1M)"
    )
    two = commands.add_parser("bundle")
    two.add_argument("--bundle", required=True)
    two.add_argument("--id", required=True)
    two.add_argument("--ood", action="append", default=[], help="name=path.parquet")
    two.add_argument("--limit", type=int, default=2000)
    two.add_argument("--lists", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = synthetic(args) if args.command == "synthetic" else from_bundle(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
