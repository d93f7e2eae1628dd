"""The BatchNorm statistics a contrastive fit ends with: those of the clean training images, averaged across
workers by their rows."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayood.config import BackboneSettings, PreprocessSettings
from rayood.models.backbones import build_backbone
from rayood.train.cache import CachedShard
from rayood.train.loops import average_batch_norm_statistics
from rayood.train.steps import recompute_batch_norm_statistics

SIZE = 16


def _backbone() -> torch.nn.Module:
    settings = BackboneSettings(arch="cifar_fast", widths=(8, 16, 16), classifier_pool="max")
    return build_backbone(settings, PreprocessSettings(native_size=SIZE, input_size=SIZE), 3)


def _shard(rows: int, seed: int) -> CachedShard:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (rows, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    return CachedShard(pixels, torch.zeros(rows, dtype=torch.long))


def _first_norm_inputs(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the first BatchNorm layer sees: no statistics come before it, so train and eval mode agree."""
    first = next(m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    seen = []
    handle = first.register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[0].detach()))
    with torch.no_grad():
        backbone.eval()(images)
    handle.remove()
    return seen[0].transpose(0, 1).flatten(1)  # (channels, values)


def test_recomputed_statistics_are_those_of_the_clean_images():
    backbone, data = _backbone(), _shard(12, seed=0)
    momenta = []
    for module in backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.fill_(5.0)  # statistics left by other images
            module.running_var.fill_(9.0)
            momenta.append(module.momentum)
    inputs = _first_norm_inputs(backbone, data.images(torch.arange(12), torch.device("cpu")))
    norms = recompute_batch_norm_statistics(backbone.train(False), data, batch_size=4)  # three equal batches
    torch.testing.assert_close(norms[0].running_mean, inputs.mean(dim=1), rtol=1e-4, atol=1e-5)
    assert [norm.momentum for norm in norms] == momenta, "the layers' momentum is put back"
    assert not backbone.training, "the backbone's mode is put back"
    assert all(float(norm.running_mean.abs().max()) < 5.0 for norm in norms), "every layer is recomputed"

    recompute_batch_norm_statistics(backbone, data, batch_size=12)  # one batch: its unbiased variance exactly
    torch.testing.assert_close(norms[0].running_var, inputs.var(dim=1), rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, shard_rows: tuple[int, int], results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same weights on both workers, as DDP makes them
    backbone, data = _backbone(), _shard(shard_rows[rank], seed=rank)
    norms = recompute_batch_norm_statistics(backbone, data, batch_size=64)
    average_batch_norm_statistics(norms, len(data))
    torch.save(norms[0].running_mean, os.path.join(results, f"{rank}.pt"))
    dist.destroy_process_group()


def test_workers_take_the_row_weighted_average_of_their_statistics(tmp_path):
    shard_rows = (6, 10)
    mp.spawn(_worker, args=(_free_port(), shard_rows, str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    backbone = _backbone()
    images = torch.cat(
        [
            _shard(rows, seed=rank).images(torch.arange(rows), torch.device("cpu"))
            for rank, rows in enumerate(shard_rows)
        ]
    )
    expected = _first_norm_inputs(backbone, images).mean(dim=1)
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / f"{rank}.pt"), expected, rtol=1e-4, atol=1e-5)
