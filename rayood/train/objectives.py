"""Backbone training objectives: cross-entropy, rotation prediction, supervised contrastive (SupCon) and ALPA.

Rotation prediction (Hendrycks et al., NeurIPS 2019, "Using self-supervised learning can improve model robustness
and uncertainty"; OpenOOD's RotPred): the batch is followed by turned copies of its images, a 4-way head on the
penultimate vector predicts every row's quarter turn, and the loss is the cross-entropy of the upright rows'
classes plus ``rotation_weight`` (the paper's 0.5) x the cross-entropy of all rows' turns.

SupCon (Khosla et al., 2020) and ALPA share one loss on a similarity matrix: for anchor i with positives
P(i) (same class, self excluded), -1/|P(i)| sum_p log(exp(s_ip) / sum_{a != i} exp(s_ia)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayood.models.alpa import LocalPropagation
from rayood.models.backbones import ROTATIONS, quarter_turn

SUPCON_TEMPERATURE = 0.1
ALPA_SCALE = 10.0


def supervised_contrastive_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SupCon on an (N, N) logit matrix; anchors without any positive are left out."""
    n = logits.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=logits.device)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)[has_positive] / counts[has_positive]
    return -mean_log_prob.mean()


def with_turned_copies(
    images: torch.Tensor, views: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch followed by ``views`` turned copies of each image (all three turns when ``views`` is 3, else
    distinct turns drawn per image), and every row's turn (0 for the batch itself)."""
    n = len(images)
    if views == ROTATIONS - 1:
        turns = torch.arange(1, ROTATIONS).repeat_interleave(n)
    else:
        drawn = torch.rand(n, ROTATIONS - 1, generator=generator).argsort(dim=1)[:, :views] + 1
        turns = drawn.T.reshape(-1)
    turned = images.repeat(views, 1, 1, 1)
    for turn in range(1, ROTATIONS):
        chosen = (turns == turn).nonzero().squeeze(1).to(images.device)
        turned[chosen] = quarter_turn(turned[chosen], turn)
    return torch.cat([images, turned]), torch.cat([torch.zeros(n, dtype=torch.long), turns]).to(images.device)


CONTRASTIVE = ("supcon", "alpa_train", "alpa_finetune")


class BackboneObjective(nn.Module):
    """The backbone plus whatever its objective trains alongside; ``forward`` returns (loss, logits).

    - ``cross_entropy``: cross-entropy on the backbone's logits (optionally label-smoothed);
    - ``rotation``: that, on the upright rows, plus ``rotation_weight`` x the rotation head's cross-entropy;
    - ``supcon``: SupCon on a projection MLP (C -> C -> projection_dim) of the penultimate vector;
    - ``alpa_train``: SupCon + ``alpa_weight`` x ALPA (MODE-T); ``alpa_finetune``: ALPA alone (MODE-F).
    Contrastive objectives also fit the linear classifier on *detached* features (a linear probe), so the
    classifier baselines get logits without the classifier shaping the representation. Only the heads an
    objective uses are built: DDP requires every parameter to take part in the loss.
    """

    def __init__(
        self,
        backbone: nn.Module,
        objective: str,
        alpa_weight: float = 1.0,
        projection_dim: int = 128,
        alpa_dim: int = 80,
        label_smoothing: float = 0.0,
        rotation_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.rotation_weight = rotation_weight
        self.backbone = backbone
        self.objective = objective
        self.alpa_weight = alpa_weight
        channels = backbone.fc.in_features
        self.projection = (
            nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, projection_dim))
            if objective in ("supcon", "alpa_train")
            else None
        )
        self.alpa = LocalPropagation(channels, alpa_dim) if objective in ("alpa_train", "alpa_finetune") else None

    def heads_state(self) -> dict:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, turns: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``turns``: the rotation objective's per-row quarter turns; the first ``len(labels)`` rows are upright."""
        features = self.backbone.features(images)
        if self.objective == "cross_entropy":
            return F.cross_entropy(features.logits, labels, label_smoothing=self.label_smoothing), features.logits
        if self.objective == "rotation":
            logits = features.logits[: len(labels)]
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            rotation_loss = F.cross_entropy(self.backbone.rotation(features.penultimate), turns)
            return loss + self.rotation_weight * rotation_loss, logits
        # the probe reads the vector the classifier reads at scoring time (cifar_fast's is max-pooled)
        logits = self.backbone.fc(features.penultimate.detach())
        loss = F.cross_entropy(logits, labels)
        if self.projection is not None:
            z = F.normalize(self.projection(features.penultimate), dim=1)
            loss = loss + supervised_contrastive_loss(z @ z.T / SUPCON_TEMPERATURE, labels)
        if self.alpa is not None:
            loss = loss + self.alpa_weight * supervised_contrastive_loss(
                ALPA_SCALE * self.alpa.similarity(features.last_map), labels
            )
        return loss, logits
