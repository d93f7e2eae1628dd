"""Starting or joining a Ray cluster: the one place the jobs call ``ray.init``."""

from __future__ import annotations

import logging
import os

import ray

from rayood.config import RaySettings

log = logging.getLogger(__name__)


def init_ray(settings: RaySettings) -> None:
    """Join the configured or submitting cluster; with neither, start a local one in-process."""
    if ray.is_initialized():
        return
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log.info("joined the Ray cluster at %s", address)
    else:
        ray.init(num_cpus=settings.num_cpus, include_dashboard=False)
        log.info("started a local Ray cluster with %s CPUs", ray.cluster_resources().get("CPU"))
