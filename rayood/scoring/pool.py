"""Where scoring actors run: the ``map_batches`` arguments that size and place an actor pool, declared once for
screening, calibration, the fusion choice and the bank pass."""

from __future__ import annotations

import logging
from typing import Any

import ray
import ray.data

from rayood.config import ConfigError, RaySettings, ScreenSettings
from rayood.runtime import cluster_address

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


def check_room_for_decoding(settings: ScreenSettings, ray_settings: RaySettings, min_actors: int | None = None) -> None:
    """Refuse (a local cluster) or warn about (a joined one, which an autoscaler may grow) a pool whose smallest
    size holds every CPU: Ray Data starts the pool's actors before any read task, so reading and decoding would
    never get a CPU and the run would wait for ever, saying nothing (ray-project/ray#44687; measured: a 2-CPU
    laptop with ``min_actors: 2`` screened 0 rows in 4 minutes). A pool may grow past it: Ray Data adds actors
    only into CPUs its other operators leave free, and gives them back when the cluster shrinks, down to
    ``min_actors``; so on a joined cluster of several nodes, also warn when losing the largest node would leave
    the pool's floor every CPU (a lost node's actors restart on the nodes left)."""
    local = cluster_address(ray_settings) is None
    floor = settings.min_actors if min_actors is None else min_actors
    held, cpus = floor * settings.cpus_per_actor, ray.cluster_resources().get("CPU", 0.0)
    fields = f"screen.min_actors ({floor}) x screen.cpus_per_actor ({settings.cpus_per_actor:g}) = {held:g} CPUs"
    advice = "lower screen.min_actors or screen.cpus_per_actor (max_actors may stay higher)"
    if cpus - held < DECODE_TASK_CPUS:
        message = (
            f"{fields} leave less than {DECODE_TASK_CPUS} of the Ray cluster's {cpus:g} CPUs for reading and "
            f"decoding, which would then never run: {advice}"
        )
        if local:
            raise ConfigError(message)
        log.warning("%s; on this cluster the run goes on only if an autoscaler adds nodes", message)
        return
    node_cpus = [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]]
    if not local and len(node_cpus) > 1 and cpus - max(node_cpus) - held < DECODE_TASK_CPUS:
        log.warning(
            "%s would hold every CPU left if the largest node (%g CPUs) were lost, and the run would then "
            "wait unless an autoscaler replaces it: %s",
            fields,
            max(node_cpus),
            advice,
        )
