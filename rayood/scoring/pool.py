"""Where scoring actors run: the ``map_batches`` arguments that size and place an actor pool, declared once for
screening, calibration, the fusion choice and the bank pass."""

from __future__ import annotations

from typing import Any

import ray.data

from rayood.config import ScreenSettings


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
