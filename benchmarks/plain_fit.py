"""The backbone stage's arithmetic without Ray (``BackboneEpoch`` over a ``CachedShard``), for benchmarks that
compare against it (training overhead) or need many quick fits (recipe ablations)."""

from __future__ import annotations

import math
import time

import torch

from rayood.config import RayoodConfig
from rayood.train.augment import Augmenter, two_crop_transform
from rayood.train.cache import CachedShard
from rayood.train.recipe import Lookahead
from rayood.train.steps import BackboneEpoch, new_backbone_objective


def plain_fit(config: RayoodConfig, data: CachedShard, device: torch.device) -> tuple[torch.nn.Module, list[float]]:
    """Fit the config's backbone on ``data`` in this process; returns the backbone (eval mode) and the wall
    seconds of each epoch (set-up and the whitening fit excluded, as in a Ray Train stage's ``epoch_s``)."""
    optim, settings = config.train.backbone, config.model
    torch.manual_seed(config.train.seed)
    model, optimizer = new_backbone_objective(settings, optim, int(data.labels.max()) + 1, data, None)
    model = model.to(device, memory_format=torch.channels_last)
    lookahead = Lookahead(model) if optim.lookahead else None
    augmenter = Augmenter(list(config.train.augment), len(data), config.train.seed)
    views = two_crop_transform(settings.preprocess.native_size, optim.crop_scale_min, "flip" in config.train.augment)
    steps = math.ceil(len(data) / optim.batch_size)
    epoch_run = BackboneEpoch(
        model, optimizer, lookahead, data, augmenter, views, optim, steps, optim.batch_size, device
    )
    step, epoch_seconds = 0, []
    for epoch in range(optim.epochs):
        started = time.perf_counter()
        _, _, _, step = epoch_run(epoch, step, torch.Generator().manual_seed(epoch))
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - started)
    return model.backbone.eval(), epoch_seconds
