"""Peak memory of a whole screening job (driver, Ray's processes, workers) on a corpus 1x and Nx as large.

    python benchmarks/screen_memory.py --corpus ../shared/data/cifar10_test.parquet --bundle BUNDLE
        [--config configs/cifar10.yaml] [--times 10] [--base 1] [--gpu]

Runs ``jobs/screen.py`` as a child process (it starts its own local Ray cluster), samples the proportional
set size (PSS: shared pages such as Ray's object store split between the processes that map them, so
nothing is counted twice) of the child and all its descendants twice a second, and reports the peak of
the sum for each corpus size (Linux: /proc) and their ratio (target: the 10x run within 1.05x of the 1x run).
``--base`` makes the 1x corpus that many copies of the file: a run of a few seconds ends before Ray has
started every worker process the pipeline uses, so its peak measures start-up, not the steady state the
larger corpus is compared with. ``within_run_ratio`` compares the large run with itself (its whole peak
against its peak over the 1x run's wall time), so the spread between separate runs does not enter it. Every
sample, per role, goes to ``WORKDIR/timeline-xN.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from corpora import replicate

from rayood.config import load_config


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        kids += [int(k) for k in task.read_text().split()]
    return kids


def _pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _name(pid: int) -> str:
    """A process's role: Ray sets worker titles (``ray::MapWorker...``, ``ray::IDLE``); others by program."""
    words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    title = words[0].decode(errors="replace").split(" ")[0]
    if title.startswith("ray::"):
        return title.split("(")[0]
    return Path(title).name if not title.endswith("python") else "python " + Path(words[1].decode()).name


def tree_pss(root: int) -> dict[str, int]:
    """PSS per process role over a process and all its descendants, from /proc (Linux); processes that exit
    meanwhile count 0."""
    by_role: dict[str, int] = {}
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            role = _name(pid)
            by_role[role] = by_role.get(role, 0) + _pss_bytes(pid)
            pending += _children(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
    return by_role


@dataclass
class Sampled:
    """One run's memory, sampled: the tree's peak, the per-role split at that moment, each role's own peak over
    the run, and every sample (seconds from start, bytes per role)."""

    peak: int = 0
    split: dict[str, int] = field(default_factory=dict)
    role_peaks: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, dict[str, int]]] = field(default_factory=list)


def sample_pss(command: list[str], interval_s: float = 0.5) -> tuple[Sampled, float, int]:
    """Run ``command`` and sample its process tree's PSS; returns (the samples, wall seconds, exit status)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampled = Sampled()
    while child.poll() is None:
        by_role = tree_pss(child.pid)
        total = sum(by_role.values())
        sampled.timeline.append((round(time.perf_counter() - started, 1), by_role))
        if total > sampled.peak:
            sampled.peak, sampled.split = total, by_role
        for role, size in by_role.items():
            sampled.role_peaks[role] = max(sampled.role_peaks.get(role, 0), size)
        time.sleep(interval_s)
    return sampled, time.perf_counter() - started, child.returncode


def _mib(sizes: dict[str, int]) -> dict[str, float]:
    return {role: round(size / 2**20, 1) for role, size in sorted(sizes.items(), key=lambda kv: -kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="a Parquet corpus (image, id columns)")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--config", default="configs/cifar10.yaml")
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--base", type=int, default=1, help="copies of the corpus file in the 1x corpus")
    parser.add_argument("--workdir", default="rayood-bench/memory")
    parser.add_argument("--gpu", action="store_true", help="score in a 1-GPU actor; Ray gets every CPU")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = args.config
    if args.gpu:
        data = load_config(args.config).model_dump(mode="json")
        data["ray"]["num_cpus"] = None
        data["screen"].update(device="cuda", num_gpus_per_actor=1, cpus_per_actor=2)
        config_path = str(workdir / "config-gpu.yaml")
        Path(config_path).write_text(yaml.safe_dump(data))
    results, timelines = {}, {}
    for times in (1, args.times):
        copies = args.base * times
        corpus = replicate(Path(args.corpus), copies, workdir / f"corpus-x{copies}")
        command = [
            sys.executable,
            "jobs/screen.py",
            "--config",
            config_path,
            "--input",
            str(corpus),
            "--output",
            str(workdir / f"report-x{copies}"),
            "--bundle",
            args.bundle,
            "--overwrite",
        ]
        sampled, seconds, status = sample_pss(command)
        if status != 0:
            raise SystemExit(f"screening x{times} failed with exit status {status}: {' '.join(command)}")
        rows = pq.read_metadata(next((workdir / f"corpus-x{copies}").glob("*.parquet"))).num_rows * copies
        results[f"x{times}"] = {
            "rows": rows,
            "peak_pss_mib": round(sampled.peak / 2**20, 1),
            "wall_s": round(seconds, 1),
            "at_peak_mib": _mib(sampled.split),
            "role_peaks_mib": _mib(sampled.role_peaks),
        }
        timelines[times] = sampled.timeline
        timeline = [(at, _mib(by_role)) for at, by_role in sampled.timeline]
        (workdir / f"timeline-x{times}.json").write_text(json.dumps(timeline))
    results["ratio"] = round(results[f"x{args.times}"]["peak_pss_mib"] / results["x1"]["peak_pss_mib"], 3)
    # The same comparison inside the large run (the house rule: ratios within one run): its whole peak against
    # its peak over the 1x run's wall time, which screens about as many rows. Free of the spread between runs.
    early = max(sum(by_role.values()) for at, by_role in timelines[args.times] if at <= results["x1"]["wall_s"])
    results["within_run_ratio"] = round(results[f"x{args.times}"]["peak_pss_mib"] / (early / 2**20), 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
