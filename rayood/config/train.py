"""Fitting a bundle (``train.*``): the ID data, Ray Train's scaling and failure policy, and each stage's
optimiser settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayood.config.base import Strict


class OptimSettings(Strict):
    epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(
        default=128, ge=1, description="the global batch: each of train.num_workers takes its share"
    )
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    checkpoint_every: int = Field(default=1, ge=1, description="epochs between checkpoints")


class EmaOptimSettings(OptimSettings):
    """A model fitted with AdamW whose exponential moving average is what the bundle keeps (the linear head on a
    frozen encoder, the diffusion models)."""

    ema_decay: float = Field(default=0.999, ge=0, lt=1)


class BackboneOptimSettings(OptimSettings):
    """How the backbone is fitted. ``cross_entropy`` needs nothing else; ``rotation`` adds rotation prediction
    (Hendrycks et al., 2019; OpenOOD's RotPred) and needs ``model.backbone.rotation_head``; the contrastive objectives
    train a projection head and the ALPA heads alongside and a linear classifier on detached features (so the
    classifier baselines still have logits) and end by recomputing the BatchNorm statistics on the un-augmented
    training images. ``alpa_finetune`` starts from ``model.backbone.init_weights``.
    ALPA aligns every pair of the batch's 2 x batch_size crops, token by token: its memory grows with the batch
    squared (cifar_fast's 3 x 3 map, alpa_dim 80: batch 512 took the worker to 19.6 GB, 128 to 2.1 GB)."""

    objective: Literal["cross_entropy", "rotation", "supcon", "alpa_train", "alpa_finetune"] = "cross_entropy"
    rotation_views: int = Field(
        default=3,
        ge=1,
        le=3,
        description="rotation: turned copies of each image added to the batch (3: all of 90/180/270, the paper's, "
        "4x the cost of cross_entropy; 1: one turn drawn at random per image, 2x)",
    )
    rotation_weight: float = Field(default=0.5, gt=0, description="rotation: weight of the rotation loss")
    alpa_weight: float = Field(default=1.0, ge=0)
    alpa_dim: int = Field(default=80, ge=1)
    projection_dim: int = Field(default=128, ge=1)
    crop_scale_min: float = Field(default=0.2, gt=0, le=1, description="two-crop RandomResizedCrop scale")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="Nesterov momentum")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    schedule: Literal["cosine", "warmup_linear"] = Field(
        default="cosine", description="per-step learning rate: cosine decay, or a linear rise and fall (fast recipes)"
    )
    warmup_fraction: float = Field(default=0.23, gt=0, lt=1, description="warmup_linear: share of steps to the peak")
    norm_lr_scale: float = Field(default=1.0, gt=0, description="BatchNorm learning-rate multiplier (decay divided)")
    lookahead: bool = Field(default=False, description="pull the weights to their running average every 5 steps")
    whitening_bias_epochs: int = Field(default=3, ge=0, description="cifar_fast: epochs the whitening bias trains")

    @model_validator(mode="before")
    @classmethod
    def _no_moving_average(cls, data: object) -> object:
        if isinstance(data, dict) and "ema_decay" in data:
            raise ValueError(
                "ema_decay: the backbone keeps no moving average of its weights (earlier versions accepted this key "
                "and ignored it); remove it. Its weight averaging is lookahead"
            )
        return data


class DiffusionOptimSettings(EmaOptimSettings):
    warmup_steps: int = Field(default=500, ge=0, description="linear learning-rate warm-up")
    grad_clip: float = Field(default=1.0, gt=0)
    timesteps: Literal["all", "levels"] = Field(
        default="all",
        description="DDPM training noise levels: all of 0..T-1 (a full generative model, the paper), or only "
        "0..max(model.ddp.levels), the part DDP's reconstructions ever run through (the same budget buys a better "
        "denoiser there)",
    )


class TrainSettings(Strict):
    """Fitting a bundle on in-distribution data with Ray Train."""

    data: tuple[str, ...] = Field(default=(), description="URIs of the ID corpus (Parquet or image files)")
    bundle: str | None = Field(default=None, description="where the model bundle is written")
    overwrite: bool = Field(default=False, description="replace an existing bundle")
    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1, gt=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK",
        description="where Ray Train puts the workers (a placement group strategy): PACK fills a node first; "
        "SPREAD puts them on different nodes where it can, so a lost node takes one worker's share, and the "
        "group restarts on the nodes left. STRICT_SPREAD cannot restart once fewer nodes than workers are left",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per training worker (default: Ray's, the floor of cpus_per_worker). On a CPU-only "
        "machine, the core count lets one worker use every core while Ray Data keeps a CPU slot to feed it",
    )
    checkpoint_path: str | None = Field(default=None, description="Ray Train storage; default: <bundle>-checkpoints")
    max_failures: int = Field(
        default=3, ge=-1, description="worker-group restarts per stage, each from its last checkpoint; -1: no limit"
    )
    run_name: str = "rayood"
    calibration_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    augment: tuple[Literal["crop", "translate", "flip", "alternating_flip"], ...] = ("crop", "flip")
    cache_max_bytes: int = Field(
        default=8 * 2**30, ge=1, description="decoded training pixels one worker may hold in memory (uint8)"
    )
    backbone: BackboneOptimSettings = BackboneOptimSettings(epochs=10, lr=0.05)
    head: EmaOptimSettings = Field(
        default=EmaOptimSettings(epochs=30, batch_size=256, lr=1e-3, checkpoint_every=10),
        description="backbone.epochs 0 (a frozen encoder): the linear classifier on its cached penultimate vectors, "
        "which gives the classifier scores and the held-out accuracy; epochs 0 keeps the loaded head",
    )
    layerwise: EmaOptimSettings = EmaOptimSettings(epochs=150, lr=1e-4, checkpoint_every=25)
    ddp: DiffusionOptimSettings = DiffusionOptimSettings(epochs=50, lr=2e-4, ema_decay=0.9999, checkpoint_every=10)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: object) -> object:
        """Keys that moved: an old config fails with the new name rather than losing its settings."""
        if isinstance(data, dict) and "ddpm" in data:
            raise ValueError("train.ddpm is now train.ddp (the DDP family's one name; same fields)")
        return data
