"""Memory figures of the running process from ``/proc/self/status`` (Linux only)."""

from __future__ import annotations


def status_kib(field: str) -> int:
    """A /proc/self/status memory figure (KiB), e.g. ``VmHWM`` (peak resident). Not ru_maxrss: that survives exec,
    so a spawned child would report its parent's peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
