"""The one rule for every directory a rayood job writes into (reports, filter results, audits, kept shards).

- A file where a directory should be is refused.
- A missing or empty directory is taken.
- A directory holding anything the job does not write (a user's notes, another tool's output) is refused whole,
  with those files named, and nothing in it is deleted; with a ``marker``, a directory without that file is not
  the job's output at all, whatever else it holds.
- A directory holding the job's finished result is replaced only with ``overwrite``.

Callers delete only what this returns as theirs.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from rayood.storage import Location


class OutputError(RuntimeError):
    """An output location that rayood must not write to."""


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def claim_output(
    location: Location,
    *,
    what: str,
    owns: Callable[[str], bool],
    finished: Callable[[set[str]], bool],
    overwrite: bool,
    marker: str | None = None,
    flag: str = "--output",
    ignore: frozenset[str] = frozenset(),
) -> set[str]:
    """The names (relative to ``location``) already there, all of them the job's own; raises OutputError
    otherwise. ``what`` names the finished result in messages ("a filter result"); ``ignore``: paths that are
    neither checked nor returned (a run's own lease file)."""
    if location.exists() and not location.is_dir():
        raise OutputError(f"output {location.uri} is a file, not a directory")
    entries = location.list_files() if location.is_dir() else []
    names = {posixpath.relpath(info.path, location.path) for info in entries if info.path not in ignore}
    if names and marker is not None and marker not in names:
        raise OutputError(
            f"output {location.uri} is not empty and holds no {marker}, so it is not rayood's; refusing to write"
        )
    foreign = sorted(name for name in names if not owns(name))
    if foreign:
        raise OutputError(
            f"output {location.uri} holds files rayood did not write ({_shown(foreign)}); nothing was deleted: "
            f"move them away, or choose another {flag}"
        )
    if finished(names) and not overwrite:
        raise OutputError(f"output {location.uri} already holds {what}; pass --overwrite or choose another {flag}")
    return names
