"""What one optimisation step (or, for the backbone, one epoch) of each training stage computes, in plain torch:
no Ray here, so the plain-loop benchmark runs the backbone's epoch as the Ray Train loop does, and unit tests
run a step without a cluster. ``loops.py`` wraps these in Ray Train (data shards, device, checkpoints)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayood.config import BackboneOptimSettings, ModelSettings
from rayood.models.backbones import build_backbone, load_matching
from rayood.models.diffusion import NoiseSchedule
from rayood.train.augment import Augmenter
from rayood.train.cache import CachedShard
from rayood.train.objectives import CONTRASTIVE, BackboneObjective, with_turned_copies
from rayood.train.recipe import Lookahead, build_optimizer, lr_factor, set_learning_rates


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """EMA of the weights, with the usual warm-up so that early averages track the model."""
    decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


WHITENING_SAMPLE = 5000  # airbench's count; drawn at random, since ID corpora are often stored class by class


class BackboneEpoch:
    """One epoch of backbone training over a cached shard; shared by the Ray Train loop and the plain-loop
    benchmark, so that the overhead benchmark compares the same arithmetic."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lookahead: Lookahead | None,
        data: CachedShard,
        augmenter: Augmenter,
        views,
        optim: BackboneOptimSettings,
        steps: int,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.model, self.optimizer, self.lookahead = model, optimizer, lookahead
        self.data, self.augmenter, self.views, self.optim = data, augmenter, views, optim
        self.steps, self.total, self.batch_size, self.device = steps, steps * optim.epochs, batch_size, device

    def __call__(self, epoch: int, step: int, generator: torch.Generator) -> tuple[float, int, int, int]:
        """Returns (loss sum, correct, seen, the step count after the epoch)."""
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for index in self.data.epoch_batches(self.batch_size, self.steps, generator):
            set_learning_rates(self.optimizer, lr_factor(step, self.total, self.optim), epoch, self.optim)
            images = self.data.images(index, self.device)
            labels = self.data.labels[index].to(self.device)
            turns = None
            if self.optim.objective in CONTRASTIVE:  # two views each; positives: same-class views, its twin too
                images = torch.cat([torch.stack([self.views(i) for i in images]) for _ in range(2)])
                labels = torch.cat([labels, labels])
            else:
                images = self.augmenter(images, generator, index, epoch)
                if self.optim.objective == "rotation":
                    images, turns = with_turned_copies(images, self.optim.rotation_views, generator)
            loss, logits = self.model(images.contiguous(memory_format=torch.channels_last), labels, turns)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            step += 1
            if self.lookahead is not None:
                self.lookahead.step(unwrap(self.model), step, self.total)
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        return loss_sum, correct, seen, step


@torch.no_grad()
def recompute_batch_norm_statistics(backbone: nn.Module, data: CachedShard, batch_size: int) -> list[nn.Module]:
    """Replace every BatchNorm layer's running statistics with their average over the shard's un-augmented
    images (train-mode forward passes, cumulative average); returns the layers. The contrastive objectives train
    on two-crop views (crops down to 20%, colour jitter, greyscale), so the statistics they leave normalise clean
    images wrongly: recomputing them recovered 3.0 of 3.9 lost accuracy points on an ALPA-finetuned CIFAR-10 net
    (BENCHMARKS.md, MODE-F on the lossless backbone)."""
    norms = [module for module in backbone.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
    was_training = backbone.training
    backbone.train()
    device = next(backbone.parameters()).device
    for start in range(0, len(data), batch_size):
        index = torch.arange(start, min(start + batch_size, len(data)))
        backbone(data.images(index, device).contiguous(memory_format=torch.channels_last))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    backbone.train(was_training)
    return norms


def new_backbone_objective(
    settings: ModelSettings, optim: BackboneOptimSettings, num_classes: int, data: CachedShard, init_state: dict | None
) -> tuple[BackboneObjective, torch.optim.SGD]:
    """A fresh backbone (started from ``init_state``, else with its whitening fitted to the data) in its
    objective, and the optimiser over both."""
    backbone = build_backbone(settings.backbone, settings.preprocess, num_classes)
    if init_state is not None:  # its whitening too: refitting it could flip a filter's sign under loaded weights
        load_matching(backbone, init_state)
    else:  # with several workers rank 0's whitening wins: DDP broadcasts its parameters when the model is prepared
        sample = torch.randperm(len(data))[:WHITENING_SAMPLE]
        backbone.fit_whitening(data.images(sample, torch.device("cpu")))
    if backbone.rotation is not None and optim.objective != "rotation":
        # a loaded head this objective does not train (DDP needs every trained one used)
        backbone.rotation.requires_grad_(False)
    model = BackboneObjective(
        backbone,
        optim.objective,
        optim.alpa_weight,
        optim.projection_dim,
        optim.alpa_dim,
        optim.label_smoothing,
        optim.rotation_weight,
    )
    whitening = backbone.whitening
    return model, build_optimizer(model, optim, whitening.bias if whitening is not None else None)


def denoiser_step(
    denoiser: nn.Module,
    schedule: NoiseSchedule,
    optimizer: torch.optim.Optimizer,
    z0: torch.Tensor,
    timesteps: int,
    generator: torch.Generator,
) -> float:
    """One LFDN step: noise the clean features to a random level and regress them back (x0-prediction)."""
    t = torch.randint(0, timesteps, (len(z0),), generator=generator).to(z0.device)
    noise = torch.randn(z0.shape, generator=generator).to(z0.device)
    loss = F.mse_loss(denoiser(schedule.q_sample(z0, t, noise), t), z0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def ddpm_step(
    unet: nn.Module,
    schedule: NoiseSchedule,
    optimizer: torch.optim.Optimizer,
    x0: torch.Tensor,
    labels: torch.Tensor,
    highest_t: int,
    grad_clip: float,
    generator: torch.Generator,
) -> float:
    """One DDPM step: eps-prediction at a level drawn from 0..highest_t, gradients clipped to ``grad_clip``."""
    t = torch.randint(0, highest_t + 1, (len(labels),), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    loss = F.mse_loss(unet(schedule.q_sample(x0, t, noise), t, labels), noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), grad_clip)
    optimizer.step()
    return loss.item()
