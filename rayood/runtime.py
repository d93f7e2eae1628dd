"""Starting or joining a Ray cluster: the one place the jobs call ``ray.init``."""

from __future__ import annotations

import logging
import os

import ray
import ray.data

from rayood.config import RaySettings

log = logging.getLogger(__name__)


def init_ray(settings: RaySettings) -> None:
    """Join the configured or submitting cluster; with neither, start a local one in-process.

    Unless ``ray.verbose``, the console gets rayood's own lines only: workers' output and Ray's INFO lines go to
    the session's log files (printed once), and Ray Data's per-second progress blocks are off."""
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": settings.verbose, "logging_level": logging.INFO if settings.verbose else logging.WARNING}
    if not settings.verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False
        # which would else say so on the console, with how to turn them on (--verbose is rayood's way)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    address = cluster_address(settings)
    if address:
        ray.init(address=address, **quiet)
        log.info("joined the Ray cluster at %s", address)
    else:
        ray.init(
            num_cpus=settings.num_cpus,
            object_store_memory=settings.object_store_memory,
            include_dashboard=False,
            **quiet,
        )
        log.info("started a local Ray cluster with %s CPUs", ray.cluster_resources().get("CPU"))
    if not settings.verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        log.info("Ray's own logs: %s (--verbose shows them here)", os.path.join(_session_dir(), "logs"))


def cluster_address(settings: RaySettings) -> str | None:
    """The cluster a job joins (the configured address, else the submitting cluster's); None: a local one."""
    return settings.address or os.environ.get("RAY_ADDRESS")


def _session_dir() -> str:
    return ray._private.worker._global_node.get_session_dir_path()
