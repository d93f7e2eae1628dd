"""Ray Train loops (``train_loop_per_worker``): the backbone classifier and the DLSR feature denoiser.

Every loop resumes from ``ray.train.get_checkpoint()``: Ray Train hands it the latest checkpoint both when
a failed worker group is restarted inside one fit and when a fit is re-run with the same run name and
storage; the loop logs ``<stage> resumed_from_epoch=N`` and goes on from epoch N + 1. Checkpoints are a single ``state.pt`` of plain tensors and numbers,
read back with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile

import pyarrow as pa
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from rayood.config import BackboneOptimSettings, DiffusionOptimSettings, ModelSettings, OptimSettings
from rayood.data.decode import pixels_from_column
from rayood.detectors.ddp import ddp_schedule
from rayood.detectors.layerwise import layer_features, schedule_for
from rayood.models.backbones import build_backbone, load_matching, uint8_to_unit
from rayood.models.diffusion import build_denoiser
from rayood.models.unet import build_unet
from rayood.train.objectives import BackboneObjective

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
PAD = 4


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def load_state(checkpoint: ray.train.Checkpoint) -> dict:
    with checkpoint.as_directory() as directory:
        return torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)


def _log_epoch(what: str, metrics: dict) -> None:
    if ray.train.get_context().get_world_rank() == 0:
        log.info("%s %s", what, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))


def _report(metrics: dict, state: dict | None) -> None:
    """Report from every worker (a barrier); only rank 0 attaches the checkpoint."""
    if state is None or ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, os.path.join(directory, STATE_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """EMA of the weights, with the usual warm-up so that early averages track the model."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def augment(images: torch.Tensor, kinds: list[str], generator: torch.Generator) -> torch.Tensor:
    """Random crops (reflect-padded by 4 px) and horizontal flips, per sample, on a (N, 3, H, W) batch."""
    if "crop" in kinds:
        n, _, h, w = images.shape
        padded = F.pad(images, (PAD, PAD, PAD, PAD), mode="reflect")
        offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator).tolist()
        images = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    if "flip" in kinds:
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1).to(images.device), images.flip(-1), images)
    return images


def _batch_images(batch: pa.Table, size: int, device: torch.device) -> torch.Tensor:
    return uint8_to_unit(torch.from_numpy(pixels_from_column(batch.column("pixels"), size).copy())).to(device)


def _batch_labels(batch: pa.Table, label_column: str, class_names: list[str], device: torch.device) -> torch.Tensor:
    index = {name: i for i, name in enumerate(class_names)}
    labels = batch.column(label_column).cast(pa.string()).to_pylist()
    return torch.tensor([index[label] for label in labels], dtype=torch.long, device=device)


def _use_threads(config: dict) -> None:
    if config.get("torch_threads"):
        torch.set_num_threads(config["torch_threads"])


def two_crop_transform(size: int, scale_min: float, flip: bool) -> v2.Compose:
    """SupCon's view augmentation: resized crop, optional flip, colour jitter, random greyscale."""
    steps = [v2.RandomResizedCrop(size, scale=(scale_min, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
    return v2.Compose(steps)


def backbone_loop(config: dict) -> None:
    """Fit the backbone with its configured objective (SGD, momentum 0.9, cosine schedule)."""
    settings = ModelSettings.model_validate(config["model"])
    optim = BackboneOptimSettings.model_validate(config["optim"])
    class_names: list[str] = config["class_names"]
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(config["seed"] + rank)
    device = ray.train.torch.get_device()
    _use_threads(config)
    _log_epoch("backbone", {"device": str(device), "workers": ray.train.get_context().get_world_size(),
                            "objective": optim.objective})
    backbone = build_backbone(settings.backbone, settings.preprocess, len(class_names))
    if config.get("init_state") is not None:
        load_matching(backbone, config["init_state"])
    model = BackboneObjective(backbone, optim.objective, optim.alpa_weight, optim.projection_dim, optim.alpa_dim)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=optim.lr, momentum=0.9, nesterov=True, weight_decay=optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, optim.epochs))
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = load_state(checkpoint)
        model.load_state_dict({**state["heads"], **{f"backbone.{k}": v for k, v in state["model"].items()}})
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        _log_epoch("backbone", {"resumed_from_epoch": start_epoch})
    model = ray.train.torch.prepare_model(model)
    shard = ray.train.get_dataset_shard("train")
    size = settings.preprocess.native_size
    generator = torch.Generator().manual_seed(config["seed"] * 1000 + rank)
    contrastive = optim.objective != "cross_entropy"
    views = two_crop_transform(size, optim.crop_scale_min, "flip" in config["augment"])
    for epoch in range(start_epoch, optim.epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in shard.iter_batches(
            batch_size=optim.batch_size, batch_format="pyarrow",
            local_shuffle_buffer_size=optim.batch_size * 8, local_shuffle_seed=config["seed"] + epoch,
        ):
            images = _batch_images(batch, size, device)
            labels = _batch_labels(batch, config["label_column"], class_names, device)
            if contrastive:  # two views of every image; positives are same-class views, its twin included
                images = torch.cat([torch.stack([views(i) for i in images]) for _ in range(2)])
                labels = torch.cat([labels, labels])
            else:
                images = augment(images, config["augment"], generator)
            loss, logits = model(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        scheduler.step()
        done = epoch + 1
        metrics = {"epoch": done, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
        _log_epoch("backbone", metrics)
        if done % optim.checkpoint_every == 0 or done == optim.epochs:
            _report(metrics, {
                "model": unwrap(model).backbone.state_dict(), "heads": unwrap(model).heads_state(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": done,
            })
    if checkpoint and start_epoch >= optim.epochs:  # finished before: hand the last state back as the result
        _report({"epoch": start_epoch}, state)


class EmaRun:
    """A diffusion model's training state: the model (prepared for DDP), its EMA copy, AdamW and an optional
    linear warm-up, restored from ``ray.train.get_checkpoint()`` when this run was interrupted before."""

    def __init__(
        self, stage: str, model: nn.Module, optim: OptimSettings, device: torch.device, warmup_steps: int | None = None
    ):
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        self.scheduler = None
        if warmup_steps is not None:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps))
            )
        self.start_epoch, self.step, self.resumed = 0, 0, None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:
            self.resumed = load_state(checkpoint)
            model.load_state_dict(self.resumed["model"])
            self.ema.load_state_dict(self.resumed["ema"])
            self.optimizer.load_state_dict(self.resumed["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(self.resumed["scheduler"])
            self.start_epoch, self.step = int(self.resumed["epoch"]), int(self.resumed["step"])
            _log_epoch(stage, {"resumed_from_epoch": self.start_epoch})
        self.ema.to(device)
        self.model = ray.train.torch.prepare_model(model)

    def state(self, epoch: int, step: int) -> dict:
        state = {
            "model": unwrap(self.model).state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "epoch": epoch, "step": step,
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state


def _cache_features(backbone: nn.Module, config: dict, size: int, device: torch.device) -> torch.Tensor:
    """z0 of every row of this worker's shard, computed once: features see no augmentation (METHODS.md)."""
    shard = ray.train.get_dataset_shard("train")
    chunks = []
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=config["feature_batch_size"], batch_format="pyarrow"):
            chunks.append(layer_features(backbone.features(_batch_images(batch, size, device)).stage_maps))
    return torch.cat(chunks) if chunks else torch.zeros(0, sum(config["stage_dims"]), device=device)


def _steps_per_epoch(rows: int, batch_size: int, device: torch.device) -> int:
    """The same step count on every worker (the smallest shard decides), so DDP never waits forever."""
    steps = torch.tensor([math.ceil(rows / batch_size)], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(steps, op=dist.ReduceOp.MIN)
    return int(steps.item())


def layerwise_loop(config: dict) -> None:
    """Fit the LFDN: t ~ U{0..T-1}, loss = MSE(LFDN(z_t, t), z0), AdamW, EMA of the weights."""
    settings = ModelSettings.model_validate(config["model"])
    optim = OptimSettings.model_validate(config["optim"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    _use_threads(config)
    _log_epoch("layerwise", {"device": str(device), "workers": ray.train.get_context().get_world_size()})
    torch.manual_seed(config["seed"] + rank)
    backbone = build_backbone(settings.backbone, settings.preprocess, len(config["class_names"]))
    backbone.load_state_dict(config["backbone_state"])
    backbone.to(device).eval()
    z0_all = _cache_features(backbone, config, settings.preprocess.native_size, device)
    del backbone

    run = EmaRun("layerwise", build_denoiser(settings, z0_all.shape[1]), optim, device)
    denoiser, ema, optimizer, start_epoch, step = run.model, run.ema, run.optimizer, run.start_epoch, run.step
    schedule = schedule_for(settings.layerwise)
    steps = _steps_per_epoch(len(z0_all), optim.batch_size, device)
    generator = torch.Generator().manual_seed(config["seed"] * 1000 + rank)
    for epoch in range(start_epoch, optim.epochs):
        denoiser.train()
        order = torch.randperm(len(z0_all), generator=generator).to(device)
        loss_sum = 0.0
        for index in range(steps):
            z0 = z0_all[order[index * optim.batch_size : (index + 1) * optim.batch_size]]
            t = torch.randint(0, settings.layerwise.timesteps, (len(z0),), generator=generator).to(device)
            noise = torch.randn(z0.shape, generator=generator).to(device)
            loss = F.mse_loss(denoiser(schedule.q_sample(z0, t, noise), t), z0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            ema_update(ema, unwrap(denoiser), optim.ema_decay, step)
            loss_sum += loss.item()
        done = epoch + 1
        save = done % optim.checkpoint_every == 0 or done == optim.epochs
        state = run.state(done, step)
        metrics = {"epoch": done, "loss": loss_sum / max(steps, 1), "feature_rows": len(z0_all)}
        _log_epoch("layerwise", metrics)
        if save:
            _report(metrics, state)
    if run.resumed is not None and start_epoch >= optim.epochs:
        _report({"epoch": start_epoch}, run.resumed)


def ddpm_loop(config: dict) -> None:
    """Fit DDP's class-conditional pixel DDPM: eps-prediction, linear betas, label dropout to the null class,
    AdamW with linear warm-up, gradient clipping, EMA (METHODS.md section 2)."""
    settings = ModelSettings.model_validate(config["model"])
    optim = DiffusionOptimSettings.model_validate(config["optim"])
    class_names: list[str] = config["class_names"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    _use_threads(config)
    _log_epoch("ddpm", {"device": str(device), "workers": ray.train.get_context().get_world_size()})
    torch.manual_seed(config["seed"] + rank)
    run = EmaRun("ddpm", build_unet(settings, len(class_names)), optim, device, warmup_steps=optim.warmup_steps)
    unet, ema, optimizer, warmup, start_epoch, step = run.model, run.ema, run.optimizer, run.scheduler, run.start_epoch, run.step
    schedule = ddp_schedule(settings.ddp)
    shard = ray.train.get_dataset_shard("train")
    size = settings.preprocess.native_size
    generator = torch.Generator().manual_seed(config["seed"] * 1000 + rank)
    flip = ["flip"] if "flip" in config["augment"] else []
    null = len(class_names)
    for epoch in range(start_epoch, optim.epochs):
        unet.train()
        loss_sum, batches = 0.0, 0
        for batch in shard.iter_batches(
            batch_size=optim.batch_size, batch_format="pyarrow",
            local_shuffle_buffer_size=optim.batch_size * 8, local_shuffle_seed=config["seed"] + epoch,
        ):
            x0 = augment(_batch_images(batch, size, device), flip, generator) * 2 - 1
            labels = _batch_labels(batch, config["label_column"], class_names, device)
            dropped = torch.rand(len(labels), generator=generator).to(device) < settings.ddp.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, null), labels)
            t = torch.randint(0, settings.ddp.timesteps, (len(labels),), generator=generator).to(device)
            noise = torch.randn(x0.shape, generator=generator).to(device)
            loss = F.mse_loss(unet(schedule.q_sample(x0, t, noise), t, labels), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), optim.grad_clip)
            optimizer.step()
            warmup.step()
            step += 1
            ema_update(ema, unwrap(unet), optim.ema_decay, step)
            loss_sum += loss.item()
            batches += 1
        done = epoch + 1
        metrics = {"epoch": done, "loss": loss_sum / max(batches, 1), "steps": step}
        _log_epoch("ddpm", metrics)
        if done % optim.checkpoint_every == 0 or done == optim.epochs:
            _report(metrics, run.state(done, step))
    if run.resumed is not None and start_epoch >= optim.epochs:
        _report({"epoch": start_epoch}, run.resumed)
