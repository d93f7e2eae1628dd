"""CPU seconds per process over a stretch of time, by process title (Ray names its workers ``ray::<Actor>``).

Linux only (reads ``/proc``). Used to split a Ray run's CPU among the training worker, Ray Train's and Ray Data's
helper actors and Ray's system processes: on 2 cores every helper's share is taken from the worker.
"""

from __future__ import annotations

import os
from collections import defaultdict

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _title(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            words = file.read().split(b"\0")
    except OSError:
        return "?"
    first = words[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split(".")[0].split(" ")[0]  # ray::_QueueActor.get -> ray::_QueueActor
    program = os.path.basename(first)
    script = next((os.path.basename(w.decode(errors="replace")) for w in words[1:] if w.endswith(b".py")), "")
    return f"{program} {script}".strip() or "?"


def cpu_seconds() -> dict[str, tuple[str, float]]:
    """pid -> (title, user + system CPU seconds so far) for every readable process."""
    result = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        result[pid] = (_title(pid), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return result


def cpu_by_title(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each title used between two ``cpu_seconds()`` snapshots, largest first (processes that
    started in between count from zero)."""
    used: dict[str, float] = defaultdict(float)
    for pid, (title, seconds) in after.items():
        used[title] += seconds - before.get(pid, (title, 0.0))[1]
    return dict(sorted(((t, round(s, 1)) for t, s in used.items() if s > 0.05), key=lambda item: -item[1]))
