"""How Ray Data names a report's row files: ``<run id>_<write uuid>_<task index>``, never the same name in two
attempts (``rayood.report.target`` keeps or deletes them by that run id).

Its own module, importing Ray but not torch, because every write worker unpickles this class and so imports
its module: defined in the screening pipeline, it made each write worker import torch with it (BENCHMARKS.md,
"write workers without torch")."""

from __future__ import annotations

from ray.data.datasource import FilenameProvider


class AttemptFilenames(FilenameProvider):
    """Row files named after the attempt that wrote them."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"{self.run_id}_{write_uuid}_{task_index:06}"
