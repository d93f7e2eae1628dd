"""The Ray Train harness the stages share: per-worker logging and progress, checkpoints (a single ``state.pt`` of
plain tensors and numbers, read back with ``weights_only=True``), resume, and the epoch loop.

Every stage resumes from ``ray.train.get_checkpoint()``: Ray Train hands it the latest checkpoint both when a
failed worker group is restarted inside one fit and when a fit is re-run with the same run name and storage; the
stage logs ``<stage> resumed_from_epoch=N`` and goes on from epoch N + 1. The loops in ``loops.py`` supply what
one epoch does (``run_epochs``' ``train_epoch``) and what a checkpoint holds.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import ray.train
import ray.train.torch
import torch
from ray.util.queue import Queue
from torch import nn

from rayood.config import EmaOptimSettings, ModelSettings, OptimSettings
from rayood.train.progress import report_epoch
from rayood.train.steps import unwrap

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def load_state(checkpoint: ray.train.Checkpoint) -> dict:
    with checkpoint.as_directory() as directory:
        return torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)


def log_epoch(what: str, metrics: dict, progress: Queue | None = None) -> None:
    """Rank 0 logs (the worker log; the console with --verbose) and hands the metrics to the driver's progress."""
    if ray.train.get_context().get_world_rank() == 0:
        log.info(
            "%s %s", what, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        )
        report_epoch(progress, what, metrics)


def report_metrics(metrics: dict, state: dict | None) -> None:
    """Report from every worker (a barrier); only rank 0 attaches the checkpoint."""
    if state is None or ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, os.path.join(directory, STATE_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


LOOP, PROGRESS = "loop", "progress"  # the keys of TorchTrainer's train_loop_config


@dataclass(frozen=True)
class LoopConfig:
    """What the fit hands every worker of one Ray Train stage (under ``train_loop_config[LOOP]``; the driver's
    progress queue goes beside it, under ``PROGRESS``). ``optim`` is the stage's own optimiser settings."""

    model: ModelSettings
    class_names: tuple[str, ...]
    seed: int
    label_column: str
    torch_threads: int | None
    cache_max_bytes: int
    optim: OptimSettings | None = None
    augment: tuple[str, ...] = ()
    init_state: dict | None = None  # the backbone's starting weights
    feature_dim: int | None = None  # the head: its input width
    stage_dims: tuple[int, ...] = ()  # DLSR's denoiser: the widths of the layers it reconstructs


class EmaRun:
    """A diffusion model's training state: the model (prepared for DDP), its EMA copy, AdamW and an optional
    linear warm-up, restored from ``ray.train.get_checkpoint()`` when this run was interrupted before."""

    def __init__(
        self,
        stage: str,
        model: nn.Module,
        optim: EmaOptimSettings,
        device: torch.device,
        warmup_steps: int | None = None,
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
            log_epoch(stage, {"resumed_from_epoch": self.start_epoch})
        self.ema.to(device)
        self.model = ray.train.torch.prepare_model(model)

    def state(self, epoch: int, step: int) -> dict:
        state = {
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
        }
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state


def run_epochs(
    stage: str,
    progress: Queue | None,
    start_epoch: int,
    epochs: int,
    checkpoint_every: int,
    train_epoch: Callable[[int], dict],
    state: Callable[[int], dict],
    resumed: dict | None,
) -> None:
    """The epoch loop of every stage: ``train_epoch(epoch)`` trains one epoch and returns its metrics; rank 0 logs
    them and hands them to the driver's progress line; every ``checkpoint_every`` epochs and after the last one,
    every worker reports (a barrier) and rank 0 attaches ``state(epochs_done)``. A run resumed after its last
    epoch hands the saved state back as its result."""
    log_epoch(stage, {"start_epoch": start_epoch}, progress)
    for epoch in range(start_epoch, epochs):
        done = epoch + 1
        metrics = {"epoch": done, **train_epoch(epoch)}
        log_epoch(stage, metrics, progress)
        if done % checkpoint_every == 0 or done == epochs:
            report_metrics(metrics, state(done))
    if resumed is not None and start_epoch >= epochs:
        report_metrics({"epoch": start_epoch}, resumed)
