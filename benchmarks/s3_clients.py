"""``s3://`` through pyarrow's native S3 client against s3fs (``s3.client``), on the operations a screening run
makes: list a prefix of image files, read each one, read a Parquet corpus in row groups, read and write one large
object, and write many small ones (row files, checkpoints).

    python benchmarks/s3_clients.py [--objects 1000] [--large-mib 64] [--repeat 3]

Both clients go through ``rayood.storage.resolve``, so each is exactly what the jobs use. The S3 server is moto's
standalone server in a process of its own on loopback (no object store is reachable from the test machines):
its CPU is the same for both clients, so besides wall seconds the table shows the client's own CPU seconds
(``getrusage`` of this process), the cost that stays on a real cluster where the server is AWS. The clients
alternate within each repeat, so the ratio holds on a noisy machine; the table has each median.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayood.config import S3Settings
from rayood.storage import Location, resolve

BUCKET = "rayood-bench"
CLIENTS = ("pyarrow", "s3fs")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, endpoint
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto did not start")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(run: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), cpu_s()
    run()
    return time.perf_counter() - wall, cpu_s() - cpu


def corpus_parquet(rows: int, rng: np.random.Generator) -> bytes:
    """A Parquet corpus like cifar10_test.parquet: ids and ~2.5 KB image-like payloads, row groups of 1,000."""
    images = [rng.integers(0, 256, 2500, dtype=np.uint8).tobytes() for _ in range(rows)]
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": [f"img-{i:07d}" for i in range(rows)], "image": images}), sink, row_group_size=1000)
    return sink.getvalue()


def operations(root: Location, objects: int, large: bytes, small: list[bytes]) -> dict[str, Callable[[], object]]:
    images, fs = root.join("images"), root.fs

    def read_each_image() -> None:
        for info in images.list_files():
            with fs.open_input_stream(info.path) as stream:
                stream.read()

    def write_small() -> None:
        for i, data in enumerate(small[:200]):
            root.join("written", f"row-{i:05d}.bin").write_bytes(data)

    return {
        f"list {objects} objects": lambda: images.list_files(),
        f"read {objects} objects one by one": read_each_image,
        "read a Parquet corpus (10,000 rows)": lambda: pq.read_table(root.join("corpus.parquet").path, filesystem=fs),
        f"read one {len(large) >> 20} MiB object": lambda: root.join("large.bin").read_bytes(),
        f"write one {len(large) >> 20} MiB object": lambda: root.join("large-out.bin").write_bytes(large),
        "write 200 small objects": write_small,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)

    server, endpoint = start_moto()
    try:
        rng = np.random.default_rng(0)
        small = [rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() for _ in range(args.objects)]
        large = rng.integers(0, 256, args.large_mib << 20, dtype=np.uint8).tobytes()
        roots = {
            client: resolve(f"s3://{BUCKET}", S3Settings(endpoint_url=endpoint, client=client)) for client in CLIENTS
        }
        setup = roots["pyarrow"]
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        for i, data in enumerate(small):
            setup.join("images", f"{i:06d}.jpg").write_bytes(data)
        setup.join("corpus.parquet").write_bytes(corpus_parquet(10_000, rng))
        setup.join("large.bin").write_bytes(large)

        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeat):
            for client in CLIENTS:
                for name, run in operations(roots[client], args.objects, large, small).items():
                    results.setdefault((name, client), []).append(timed(run))
    finally:
        server.terminate()
        server.wait()

    names = list(dict.fromkeys(name for name, _ in results))
    print(
        "| operation | pyarrow wall s | s3fs wall s | pyarrow client CPU s | s3fs client CPU s | s3fs / pyarrow wall |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        wall = {c: statistics.median(w for w, _ in results[name, c]) for c in CLIENTS}
        cpu = {c: statistics.median(u for _, u in results[name, c]) for c in CLIENTS}
        print(
            f"| {name} | {wall['pyarrow']:.2f} | {wall['s3fs']:.2f} | {cpu['pyarrow']:.2f} | {cpu['s3fs']:.2f} | "
            f"{wall['s3fs'] / wall['pyarrow']:.2f} |"
        )


if __name__ == "__main__":
    main()
