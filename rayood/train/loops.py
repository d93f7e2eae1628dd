"""Ray Train loops (``train_loop_per_worker``): the backbone classifier, a frozen encoder's linear head, the DLSR
feature denoiser and DDP's DDPM.

Each loop reads its worker's shard once (decoded pixels, or the fit's feature cache: ``references.py``),
shuffles it whole every epoch and says what one epoch does; ``harness.py`` runs the epochs, logs, checkpoints
and resumes the same way for all of them, and ``steps.py`` what one step (the backbone: one epoch) computes, in
plain torch.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pyarrow as pa
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from rayood.config import BackboneOptimSettings, DiffusionOptimSettings, EmaOptimSettings, ModelSettings
from rayood.data.decode import pixels_from_column
from rayood.models.backbones import linear_head, uint8_to_unit
from rayood.models.diffusion import build_denoiser, noise_schedule
from rayood.models.unet import build_unet
from rayood.train.augment import Augmenter, two_crop_transform
from rayood.train.cache import READ_BATCH_ROWS, CachedShard, id_order
from rayood.train.harness import LOOP, PROGRESS, EmaRun, LoopConfig, load_state, log_epoch, run_epochs
from rayood.train.objectives import CONTRASTIVE
from rayood.train.recipe import Lookahead
from rayood.train.steps import (
    BackboneEpoch,
    ddpm_step,
    denoiser_step,
    ema_update,
    new_backbone_objective,
    recompute_batch_norm_statistics,
    unwrap,
)

log = logging.getLogger(__name__)


def worker_seed(seed: int, rank: int, epoch: int | None = None) -> int:
    """The seed of one worker's random stream, or of one epoch of it: distinct per rank and epoch, and the same
    on a rerun, so that a resumed epoch draws what the interrupted one drew."""
    stream = seed * 1000 + rank
    return stream if epoch is None else stream * 1000 + epoch


def _batch_images(batch: pa.Table, size: int, device: torch.device) -> torch.Tensor:
    return uint8_to_unit(torch.from_numpy(pixels_from_column(batch.column("pixels"), size).copy())).to(device)


def _use_threads(loop: LoopConfig) -> None:
    if loop.torch_threads:
        torch.set_num_threads(loop.torch_threads)


def _start_worker(stage: str, loop: LoopConfig) -> tuple[ModelSettings, int, torch.device]:
    """What every stage's worker does first: its model settings, rank and device, its threads, a log line and its
    seed."""
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    _use_threads(loop)
    log_epoch(stage, {"device": str(device), "workers": ray.train.get_context().get_world_size()})
    torch.manual_seed(loop.seed + rank)
    return loop.model, rank, device


def _cached_shard(loop: LoopConfig, settings: ModelSettings) -> CachedShard:
    return CachedShard.load(
        ray.train.get_dataset_shard("train"),
        settings.preprocess.native_size,
        loop.label_column,
        list(loop.class_names),
        loop.cache_max_bytes,
    )


def backbone_loop(config: dict) -> None:
    """Fit the backbone with its configured objective: Nesterov SGD, a per-step schedule, optional lookahead,
    on the worker's shard decoded once (``CachedShard``) with a fresh permutation per epoch."""
    loop: LoopConfig = config[LOOP]
    settings, rank, device = _start_worker("backbone", loop)
    optim: BackboneOptimSettings = loop.optim
    class_names: list[str] = loop.class_names
    data = _cached_shard(loop, settings)
    worker_rows = _rows_per_worker(len(data))
    log_epoch("backbone", {"objective": optim.objective, "worker_rows": worker_rows})
    model, optimizer = new_backbone_objective(settings, optim, len(class_names), data, loop.init_state)
    start_epoch, step, saved = 0, 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        saved = load_state(checkpoint)
        model.load_state_dict({**saved["heads"], **{f"backbone.{k}": v for k, v in saved["model"].items()}})
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, step = int(saved["epoch"]), int(saved["step"])
        log_epoch("backbone", {"resumed_from_epoch": start_epoch})
    model = ray.train.torch.prepare_model(model.to(memory_format=torch.channels_last))
    lookahead = Lookahead(unwrap(model)) if optim.lookahead else None
    if lookahead is not None and saved is not None:
        lookahead.load_state_dict(saved["lookahead"])
    size = settings.preprocess.native_size
    batch_size = _worker_batch(optim.batch_size)
    steps = _steps_per_epoch(len(data), batch_size, device)
    augmenter = Augmenter(loop.augment, len(data), worker_seed(loop.seed, rank))
    views = two_crop_transform(size, optim.crop_scale_min, "flip" in loop.augment)
    epoch_run = BackboneEpoch(model, optimizer, lookahead, data, augmenter, views, optim, steps, batch_size, device)
    epochs_s = 0.0

    def train_epoch(epoch: int) -> dict:
        nonlocal step, epochs_s
        generator = torch.Generator().manual_seed(worker_seed(loop.seed, rank, epoch))
        started = time.perf_counter()
        loss_sum, correct, seen, step = epoch_run(epoch, step, generator)
        epoch_s = time.perf_counter() - started
        epochs_s += epoch_s
        metrics = {
            "loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "epoch_s": round(epoch_s, 1),
            "epochs_s": round(epochs_s, 1),  # epochs_s: this run's, for overhead
            "worker_rows": worker_rows,
        }
        if epoch + 1 == optim.epochs and optim.objective in CONTRASTIVE:  # inside the epoch: a resumed fit redoes it
            recompute_started = time.perf_counter()
            norms = recompute_batch_norm_statistics(unwrap(model).backbone, data, batch_size)
            average_batch_norm_statistics(norms, len(data))
            metrics["batch_norm_recomputed_s"] = round(time.perf_counter() - recompute_started, 1)
        return metrics

    def state(done: int) -> dict:
        saved_state = {
            "model": unwrap(model).backbone.state_dict(),
            "heads": unwrap(model).heads_state(),
            "optimizer": optimizer.state_dict(),
            "epoch": done,
            "step": step,
        }
        if lookahead is not None:
            saved_state["lookahead"] = lookahead.state_dict()
        return saved_state

    run_epochs(
        "backbone", config[PROGRESS], start_epoch, optim.epochs, optim.checkpoint_every, train_epoch, state, saved
    )


def average_batch_norm_statistics(norms: list[torch.nn.Module], rows: int) -> None:
    """Every worker recomputed its BatchNorm statistics on its own shard; all take the row-weighted average
    (rank 0's are the ones saved). Like the per-batch average itself, it leaves out the spread between the
    shards' means."""
    if not (dist.is_available() and dist.is_initialized()) or not norms:
        return
    total = torch.tensor([float(rows)], device=norms[0].running_mean.device)
    dist.all_reduce(total)
    share = rows / total.item()
    for norm in norms:
        for statistic in (norm.running_mean, norm.running_var):
            statistic.mul_(share)
            dist.all_reduce(statistic)


def _cached_features(columns: list[str], dims: dict[str, int], device: torch.device) -> dict[str, torch.Tensor]:
    """This worker's shard of the feature cache (``references.FeaturePass``), in id order (``cache.id_order``):
    the backbone ran over these rows once, in the fit's feature pass; features see no augmentation
    (docs/METHODS.md)."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in columns}
    ids: list[str] = []
    for batch in ray.train.get_dataset_shard("train").iter_batches(batch_size=READ_BATCH_ROWS, batch_format="numpy"):
        ids += [str(i) for i in batch["id"]]
        for name in columns:
            parts[name].append(torch.from_numpy(np.ascontiguousarray(batch[name])))
    if not ids:
        return {name: torch.zeros(0, *((dims[name],) if name in dims else ()), device=device) for name in columns}
    order = id_order(ids)
    return {name: torch.cat(chunks)[order].to(device) for name, chunks in parts.items()}


class CachedEpochs:
    """Epochs over a worker's cached rows: this worker's share of the global batch, the same step count on
    every worker, and a fresh permutation per epoch from the worker's own seeded generator."""

    def __init__(self, rows: int, global_batch: int, seed: int, rank: int, device: torch.device) -> None:
        self.rows, self.device = rows, device
        self.batch_size = _worker_batch(global_batch)
        self.steps = _steps_per_epoch(rows, self.batch_size, device)
        self.generator = torch.Generator().manual_seed(worker_seed(seed, rank))

    def batches(self):
        """One epoch: ``steps`` batches of row indices."""
        order = torch.randperm(self.rows, generator=self.generator).to(self.device)
        for index in range(self.steps):
            yield order[index * self.batch_size : (index + 1) * self.batch_size]


def _rows_per_worker(rows: int) -> list[int]:
    """Every worker's shard size, in rank order: how the stage split its data (recorded in the manifest)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [rows]
    counts: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(counts, rows)
    return [int(count) for count in counts]


def _worker_batch(batch_size: int) -> int:
    """A worker's share of the configured batch, which is the global batch: with gradients averaged across
    workers, N workers take the same steps on the same batch size as one, so the worker count changes the
    speed of a fit, not its result (up to BatchNorm statistics, which stay per worker)."""
    return max(1, math.ceil(batch_size / ray.train.get_context().get_world_size()))


def _steps_per_epoch(rows: int, batch_size: int, device: torch.device) -> int:
    """The same step count on every worker (the smallest shard decides), so DDP never waits forever."""
    steps = torch.tensor([math.ceil(rows / batch_size)], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)
    return int(steps.item())


def layerwise_loop(config: dict) -> None:
    """Fit the LFDN: t ~ U{0..T-1}, loss = MSE(LFDN(z_t, t), z0), AdamW, EMA of the weights."""
    loop: LoopConfig = config[LOOP]
    settings, rank, device = _start_worker("layerwise", loop)
    optim: EmaOptimSettings = loop.optim
    z0_all = _cached_features(["layers"], {"layers": sum(loop.stage_dims)}, device)["layers"].float()
    worker_rows = _rows_per_worker(len(z0_all))

    run = EmaRun("layerwise", build_denoiser(settings, z0_all.shape[1]), optim, device)
    denoiser, ema, optimizer, start_epoch, step = run.model, run.ema, run.optimizer, run.start_epoch, run.step
    schedule = noise_schedule(settings.layerwise)
    epochs = CachedEpochs(len(z0_all), optim.batch_size, loop.seed, rank, device)

    def train_epoch(epoch: int) -> dict:
        nonlocal step
        denoiser.train()
        loss_sum = 0.0
        for rows in epochs.batches():
            loss_sum += denoiser_step(
                denoiser, schedule, optimizer, z0_all[rows], settings.layerwise.timesteps, epochs.generator
            )
            step += 1
            ema_update(ema, unwrap(denoiser), optim.ema_decay, step)
        return {"loss": loss_sum / max(epochs.steps, 1), "worker_rows": worker_rows}

    run_epochs(
        "layerwise",
        config[PROGRESS],
        start_epoch,
        optim.epochs,
        optim.checkpoint_every,
        train_epoch,
        lambda done: run.state(done, step),
        run.resumed,
    )


def head_loop(config: dict) -> None:
    """Fit the linear classifier of a frozen encoder on its cached penultimate vectors (a linear probe):
    cross-entropy, AdamW, EMA of the weights."""
    loop: LoopConfig = config[LOOP]
    settings, rank, device = _start_worker("head", loop)
    optim: EmaOptimSettings = loop.optim
    cached = _cached_features(["penultimate", "class"], {"penultimate": loop.feature_dim}, device)
    features, classes = cached["penultimate"].float(), cached["class"].long()
    worker_rows = _rows_per_worker(len(features))
    head = linear_head(settings.backbone, loop.feature_dim, len(loop.class_names))
    run = EmaRun("head", head, optim, device)
    model, ema, optimizer, step = run.model, run.ema, run.optimizer, run.step
    epochs = CachedEpochs(len(features), optim.batch_size, loop.seed, rank, device)

    def train_epoch(epoch: int) -> dict:
        nonlocal step
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for rows in epochs.batches():
            logits = model(features[rows])
            loss = F.cross_entropy(logits, classes[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss)
            correct += int((logits.argmax(1) == classes[rows]).sum())
            seen += len(rows)
            step += 1
            ema_update(ema, unwrap(model), optim.ema_decay, step)
        return {
            "loss": loss_sum / max(epochs.steps, 1),
            "train_accuracy": correct / max(1, seen),
            "worker_rows": worker_rows,
        }

    run_epochs(
        "head",
        config[PROGRESS],
        run.start_epoch,
        optim.epochs,
        optim.checkpoint_every,
        train_epoch,
        lambda done: run.state(done, step),
        run.resumed,
    )


def ddp_loop(config: dict) -> None:
    """Fit DDP's class-conditional pixel DDPM: eps-prediction, linear betas, label dropout to the null class,
    AdamW with linear warm-up, gradient clipping, EMA (docs/METHODS.md section 2)."""
    loop: LoopConfig = config[LOOP]
    settings, rank, device = _start_worker("ddp", loop)
    optim: DiffusionOptimSettings = loop.optim
    class_names: list[str] = loop.class_names
    run = EmaRun("ddp", build_unet(settings, len(class_names)), optim, device, warmup_steps=optim.warmup_steps)
    unet, ema, optimizer, warmup, start_epoch, step = (
        run.model,
        run.ema,
        run.optimizer,
        run.scheduler,
        run.start_epoch,
        run.step,
    )
    schedule = noise_schedule(settings.ddp)
    data = _cached_shard(loop, settings)
    worker_rows = _rows_per_worker(len(data))
    batch_size = _worker_batch(optim.batch_size)
    steps = _steps_per_epoch(len(data), batch_size, device)
    flip = Augmenter(["flip"] if "flip" in loop.augment else [], len(data), loop.seed)
    highest_t = settings.ddp.timesteps - 1 if optim.timesteps == "all" else max(settings.ddp.levels)
    null = len(class_names)

    def train_epoch(epoch: int) -> dict:
        nonlocal step
        unet.train()
        generator = torch.Generator().manual_seed(worker_seed(loop.seed, rank, epoch))
        loss_sum, batches = 0.0, 0
        for index in data.epoch_batches(batch_size, steps, generator):
            x0 = flip(data.images(index, device), generator) * 2 - 1
            labels = data.labels[index].to(device)
            dropped = torch.rand(len(labels), generator=generator).to(device) < settings.ddp.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, null), labels)
            loss_sum += ddpm_step(unet, schedule, optimizer, x0, labels, highest_t, optim.grad_clip, generator)
            warmup.step()
            step += 1
            ema_update(ema, unwrap(unet), optim.ema_decay, step)
            batches += 1
        return {"loss": loss_sum / max(batches, 1), "steps": step, "worker_rows": worker_rows}

    run_epochs(
        "ddp",
        config[PROGRESS],
        start_epoch,
        optim.epochs,
        optim.checkpoint_every,
        train_epoch,
        lambda done: run.state(done, step),
        run.resumed,
    )
