"""Simulated scale: screen millions of small images made on the fly (``synthetic://N``), watching rate and memory.

    python benchmarks/synthetic_scale.py --config CONFIG --bundle BUNDLE [--rows 2000000] [--every 30]

Runs ``jobs/screen.py`` on ``synthetic://N`` as a child process (its own local Ray cluster) and every
``--every`` seconds prints the rows written so far (from the footers of the finished row files), the rate
over the last interval, and the PSS of the driver and of the whole process tree. At the end: rows/s over the
first and the last million rows (or halves, for fewer rows), the driver's PSS at 10% and at 100% of the rows, and
the full timeline as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from screen_memory import tree_pss


def rows_written(rows_dir: Path, seen: dict[str, int]) -> int:
    """Rows in the finished row files (a file still being written has no footer yet and is counted later)."""
    for path in rows_dir.glob("*.parquet") if rows_dir.exists() else ():
        if path.name not in seen:
            try:
                seen[path.name] = pq.read_metadata(path).num_rows
            except Exception:  # noqa: BLE001 - not finished yet
                continue
    return sum(seen.values())


def rate_between(timeline: list[dict], low: int, high: int) -> float | None:
    """Rows/s between the first samples at or beyond ``low`` and ``high`` rows written."""
    start = next((s for s in timeline if s["rows"] >= low), None)
    end = next((s for s in timeline if s["rows"] >= high), None)
    if start is None or end is None or end["t"] <= start["t"]:
        return None
    return round((end["rows"] - start["rows"]) / (end["t"] - start["t"]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--every", type=float, default=30.0)
    parser.add_argument("--workdir", default="rayood-bench/synthetic")
    parser.add_argument("--json", help="write the timeline and the result here")
    args = parser.parse_args()
    report = Path(args.workdir) / "report"
    command = [
        sys.executable,
        "jobs/screen.py",
        "--config",
        args.config,
        "--bundle",
        args.bundle,
        "--input",
        f"synthetic://{args.rows}",
        "--output",
        str(report),
        "--overwrite",
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timeline: list[dict] = []
    seen: dict[str, int] = {}
    while child.poll() is None:
        time.sleep(args.every)
        by_role = tree_pss(child.pid)
        sample = {
            "t": round(time.perf_counter() - started, 1),
            "rows": rows_written(report / "rows", seen),
            "driver_pss_mib": round(by_role.get("python screen.py", 0) / 2**20, 1),
            "tree_pss_mib": round(sum(by_role.values()) / 2**20, 1),
        }
        last = timeline[-1] if timeline else {"t": 0.0, "rows": 0}
        sample["rows_per_s"] = round((sample["rows"] - last["rows"]) / max(sample["t"] - last["t"], 1e-9), 1)
        timeline.append(sample)
        print(json.dumps(sample), flush=True)
    if child.returncode != 0:
        raise SystemExit(f"the screening failed with exit status {child.returncode}: {' '.join(command)}")
    summary = json.loads((report / "summary.json").read_text())
    million = min(1_000_000, args.rows // 2)
    steady = [s for s in timeline if s["rows"] >= args.rows // 10 and s["rows"] < args.rows]
    result = {
        "rows": summary["rows"],
        "ok": summary["ok"],
        "wall_s": round(time.perf_counter() - started, 1),
        "job_rows_per_s": summary["timings"]["rows_per_s"],
        "first_rows_per_s": rate_between(timeline, 1, million),
        "last_rows_per_s": rate_between(timeline, args.rows - million, args.rows),
        "window_rows": million,
        "driver_pss_mib_at_10pct": steady[0]["driver_pss_mib"] if steady else None,
        "driver_pss_mib_last": steady[-1]["driver_pss_mib"] if steady else None,
        "driver_pss_mib_max": max((s["driver_pss_mib"] for s in timeline), default=None),
        "tree_pss_mib_max": max((s["tree_pss_mib"] for s in timeline), default=None),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"result": result, "timeline": timeline}, indent=1))


if __name__ == "__main__":
    main()
