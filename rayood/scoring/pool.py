"""Where scoring actors run: the ``map_batches`` arguments that size and place an actor pool, declared once for
screening, calibration, the fusion choice and the bank pass."""

from __future__ import annotations

import logging
from typing import Any

import ray
import ray.data

from rayood.config import ConfigError, ScreenSettings

log = logging.getLogger(__name__)

DECODE_TASK_CPUS = 1  # what each read and decode task asks for (Ray Data's default)


def actor_pool(settings: ScreenSettings, min_actors: int | None = None) -> dict[str, Any]:
    """Pool size (``min_actors`` overrides the configured floor: fitting's passes start with one actor), CPUs and
    GPUs per actor, and the batch the actor gets (Arrow tables of ``batch_size`` rows)."""
    floor = settings.min_actors if min_actors is None else min_actors
    return {
        "compute": ray.data.ActorPoolStrategy(min_size=floor, max_size=settings.max_actors),
        "num_gpus": settings.num_gpus_per_actor or None,
        "num_cpus": settings.cpus_per_actor,
        "batch_size": settings.batch_size,
        "batch_format": "pyarrow",
    }


def check_room_for_decoding(settings: ScreenSettings, *, local: bool, min_actors: int | None = None) -> None:
    """Refuse (a local cluster) or warn about (a joined one, which an autoscaler may grow) a pool whose smallest
    size holds every CPU: Ray Data starts the pool's actors before any read task, so reading and decoding would
    never get a CPU and the run would wait for ever, saying nothing (ray-project/ray#44687; measured: a 2-CPU
    laptop with ``min_actors: 2`` screened 0 rows in 4 minutes). A pool may grow past it: Ray Data adds actors
    only into CPUs its other operators leave free."""
    floor = settings.min_actors if min_actors is None else min_actors
    held, cpus = floor * settings.cpus_per_actor, ray.cluster_resources().get("CPU", 0.0)
    if cpus - held >= DECODE_TASK_CPUS:
        return
    message = (
        f"screen.min_actors ({floor}) x screen.cpus_per_actor ({settings.cpus_per_actor:g}) = {held:g} CPUs leave "
        f"less than {DECODE_TASK_CPUS} of the Ray cluster's {cpus:g} CPUs for reading and decoding, which would "
        "then never run: lower screen.min_actors or screen.cpus_per_actor (max_actors may stay higher)"
    )
    if local:
        raise ConfigError(message)
    log.warning("%s; on this cluster the run goes on only if an autoscaler adds nodes", message)
