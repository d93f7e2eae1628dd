"""DDP (DiffOOD, Liu et al.): how much a discriminator's output moves when the input goes through a
class-conditional diffusion model's noise-and-denoise. OOD inputs are pulled toward the ID manifold, so
their logits change sharply; ID inputs barely change.

For each image: y = the discriminator's predicted class; for each level t and draw, noise x to x_t, run
deterministic DDIM back to 0 with stride s and classifier-free guidance
``(1 + w) eps(x_t, t, y) - w eps(x_t, t, null)``, clamp, and re-run the discriminator. Score = mean over
draws of the L1 distance between L2-normalised logits (or features) of x and of the reconstruction;
``ddp_t<level>`` per level and ``ddp`` = their mean (higher = more OOD).

All levels, draws and images advance through one DDIM loop over timesteps: a reconstruction joins the batch
when the loop reaches its level, so every U-Net call is one batch (conditional and null halves together).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rayood.bundle_files import BundleFiles, load_state_into
from rayood.config import DDPSettings
from rayood.detectors.contract import ScoringView
from rayood.detectors.registry import ddp_score_names
from rayood.models.backbones import FeatureBackbone, Features
from rayood.models.diffusion import NoiseSchedule, noise_for_ids, noise_schedule
from rayood.models.unet import ConditionalUNet, build_unet


@torch.no_grad()
def guided_ddim(
    unet: ConditionalUNet,
    x0: torch.Tensor,
    levels: torch.Tensor,
    noise: torch.Tensor,
    labels: torch.Tensor,
    schedule: NoiseSchedule,
    stride: int,
    guidance: float,
) -> torch.Tensor:
    """Noise each row of ``x0`` (in [-1, 1]) to its own level and denoise it deterministically to t = 0.

    Levels must lie on one grid ``max(levels) - k * stride``. Returns the clamped clean estimates.
    """
    state = torch.zeros_like(x0)
    result = torch.zeros_like(x0)
    null = torch.full_like(labels, unet.null_label)
    top = int(levels.max())
    for t in range(top, -1, -stride):
        entering = levels == t
        if entering.any():
            t_rows = torch.full((int(entering.sum()),), t, device=x0.device, dtype=torch.long)
            state[entering] = schedule.q_sample(x0[entering], t_rows, noise[entering]).to(x0.dtype)
        active = levels >= t
        x_t = state[active]
        t_batch = torch.full((x_t.shape[0],), t, device=x0.device, dtype=torch.long)
        eps_both = unet(torch.cat([x_t, x_t]), torch.cat([t_batch, t_batch]), torch.cat([labels[active], null[active]]))
        conditional, unconditional = eps_both.chunk(2)
        eps = (1 + guidance) * conditional - guidance * unconditional
        x0_hat = schedule.x0_of(x_t, eps, t_batch).clamp(-1, 1)
        if t - stride < 0:
            result[active] = x0_hat
        else:
            state[active] = schedule.q_sample(x0_hat, t_batch - stride, eps)
    return result


class DDPDetector:
    def __init__(self, unet: ConditionalUNet, settings: DDPSettings) -> None:
        self.unet = unet.eval()
        self.settings = settings
        self.schedule = noise_schedule(settings)
        self.score_names = ddp_score_names(settings)

    def _compared(self, features: Features) -> torch.Tensor:
        """The L2-normalised vectors DDP compares: logits (default) or penultimate features."""
        vectors = features.logits if self.settings.compare == "logits" else features.penultimate
        return F.normalize(vectors.float(), dim=1)

    def to(self, device: torch.device) -> DDPDetector:
        self.unet.to(device)
        return self

    def score(self, view: ScoringView) -> dict[str, torch.Tensor]:
        return self.score_images(view.images, view.features, view.ids, view.backbone)

    @torch.no_grad()
    def score_images(
        self, images01: torch.Tensor, features: Features, ids: Sequence[str], backbone: FeatureBackbone
    ) -> dict[str, torch.Tensor]:
        settings = self.settings
        levels = sorted(settings.levels)
        per_image = len(levels) * settings.draws
        chunk_images = max(1, settings.chunk_rows // per_image)
        reference = self._compared(features)
        distances = []
        for start in range(0, images01.shape[0], chunk_images):
            chunk = images01[start : start + chunk_images]
            chunk_ids = ids[start : start + chunk_images]
            n = chunk.shape[0]
            # rows ordered (image, level, draw)
            x0 = (chunk * 2 - 1).repeat_interleave(per_image, dim=0)
            row_levels = torch.tensor(levels, device=chunk.device).repeat_interleave(settings.draws).repeat(n)
            noise = (
                torch.cat(
                    [
                        noise_for_ids(chunk_ids, tuple(chunk.shape[1:]), f"ddp/{level}/{draw}")[:, None]
                        for level in levels
                        for draw in range(settings.draws)
                    ],
                    dim=1,
                )
                .flatten(0, 1)
                .to(chunk.device, chunk.dtype)
            )
            labels = features.logits[start : start + n].argmax(dim=1).repeat_interleave(per_image)
            recon = guided_ddim(
                self.unet, x0, row_levels, noise, labels, self.schedule, settings.stride, settings.guidance
            )
            embedded = self._compared(backbone.features((recon + 1) / 2))
            target = reference[start : start + n].repeat_interleave(per_image, dim=0)
            distances.append((embedded - target).abs().sum(dim=1).view(n, len(levels), settings.draws).mean(dim=2))
        per_level = torch.cat(distances)
        scores = {"ddp": per_level.mean(dim=1)}
        if len(levels) > 1:
            scores.update({f"ddp_t{level}": per_level[:, i] for i, level in enumerate(levels)})
        return scores


def load(files: BundleFiles) -> DDPDetector:
    unet = build_unet(files.settings, files.manifest.num_classes)
    load_state_into(unet, files.first_file(), "DDPM U-Net")
    return DDPDetector(unet, files.settings.ddp)
