"""The model a bundle holds: preprocessing, the backbone, and each detector family's settings (``model.*``)."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from rayood.config.base import Strict


class PreprocessSettings(Strict):
    """The ID transform. Every input is first resized to ``native_size`` (the ID data's own resolution) and
    only then upsampled to ``input_size``, exactly as the ID data was, so that sharpness cannot separate ID
    from OOD (the resolution shortcut in docs/METHODS.md)."""

    native_size: int = Field(default=32, ge=8, le=1024)
    input_size: int = Field(default=32, ge=8, le=1024)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    max_pixels: int = Field(default=50_000_000, ge=1, description="larger images are rejected (decompression bombs)")
    max_bytes: int = Field(default=64 * 2**20, ge=1, description="larger encoded files are rejected")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("every std must be > 0")
        return value


RAYOOD_ARCHS = ("cifar_resnet", "cifar_fast", "resnet18", "resnet50")  # built by rayood with stem + stages


class BackboneSettings(Strict):
    """The feature extractor and classifier shared by every detector."""

    arch: str = Field(
        default="cifar_resnet",
        description="cifar_resnet, cifar_fast, resnet18, resnet50 (built by rayood), or any torchvision classification "
        "model by name (torchvision.models.list_models(module=torchvision.models)), tapped by rayood.models.encoders",
    )
    taps: tuple[str, ...] = Field(
        default=(),
        description="torchvision models: the graph nodes whose maps DLSR reads (get_graph_node_names); empty = the "
        "ends of the model's stages (rayood/models/encoders.py)",
    )
    widths: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        default=(16, 32, 64, 128), description="cifar_resnet / cifar_fast stage widths"
    )
    blocks: tuple[Annotated[int, Field(ge=1, le=64)], ...] = Field(
        default=(1, 1, 1, 1), description="cifar_resnet blocks per stage (cifar_fast: one group per width)"
    )
    cifar_stem: bool = Field(default=True, description="torchvision ResNets: 3x3 stride-1 stem, no max-pool")
    classifier_pool: Literal["avg", "max"] = Field(
        default="avg", description="global pooling of the last map into the penultimate vector the classifier reads"
    )
    init_weights: str | None = Field(
        default=None,
        description="weights to start from: the URI of a state_dict (a rayood backbone.pt or a torchvision ResNet's), "
        "or a torchvision weights name such as ResNet50_Weights.IMAGENET1K_V2 (downloaded once into $TORCH_HOME)",
    )
    classifier: bool = Field(
        default=True,
        description="a linear classifier of the ID classes on the penultimate vector, fitted on the ID labels "
        "(corpus.label_column): the msp, energy and maxlogit scores, the predicted class, the held-out accuracy. "
        "false for unlabelled ID data with a frozen encoder (train.backbone.epochs 0): no label column is read, "
        "those scores are off, and Mahalanobis is the distance to one Gaussian of all ID features",
    )
    flip_tta: bool = Field(
        default=False,
        description="classifier scores and predicted class from logits averaged over each image and its mirror "
        "(one more backbone pass per image); the feature-based detectors see the image alone",
    )
    rotation_head: bool = Field(
        default=False,
        description="a 4-way classifier of the image's rotation (0/90/180/270 degrees) on the penultimate vector, "
        "trained by train.backbone.objective rotation; it adds the rotation score (three more backbone passes)",
    )

    @model_validator(mode="after")
    def _taps_need_torchvision(self) -> BackboneSettings:
        if self.taps and self.arch in RAYOOD_ARCHS:
            raise ValueError(f"taps are for torchvision models; {self.arch} taps its stem and every stage")
        return self

    @model_validator(mode="after")
    def _stages_match(self) -> BackboneSettings:
        if not self.widths or (self.arch == "cifar_resnet" and len(self.widths) != len(self.blocks)):
            raise ValueError("widths and blocks need the same, non-zero number of stages")
        if min(self.widths) < 1 or min(self.blocks) < 1:
            raise ValueError("widths and blocks must be positive")
        return self


Timesteps = Annotated[int, Field(ge=2, le=10_000)]
Beta = Annotated[float, Field(gt=0, lt=1)]


class NoiseScheduleSettings(Strict):
    """A discrete diffusion's noise schedule: ``timesteps`` betas from ``beta_start`` to ``beta_end``, spaced as the
    family's paper spaces them (``SPACING``: ``rayood.models.diffusion.noise_schedule`` builds it)."""

    SPACING: ClassVar[Literal["linear", "sqrt_linear"]] = "linear"

    timesteps: Timesteps = 1000
    beta_start: Beta = 1e-4
    beta_end: Beta = 0.02

    @model_validator(mode="after")
    def _betas_rise(self) -> NoiseScheduleSettings:
        if self.beta_end <= self.beta_start:
            raise ValueError("beta_end must be larger than beta_start")
        return self


class LayerwiseSettings(NoiseScheduleSettings):
    """DLSR: the feature denoiser (LFDN) and its test-time reconstruction (docs/METHODS.md section 1)."""

    SPACING: ClassVar[Literal["linear", "sqrt_linear"]] = "sqrt_linear"  # DLSR's schedule

    enabled: bool = Field(
        default=True,
        description="fit the feature denoiser and report layerwise_mse / layerwise_mfsim; off saves its Ray Train "
        "stage (screen.decision.score must then name another score)",
    )
    timesteps: Timesteps = 100
    beta_start: Beta = 0.0015
    beta_end: Beta = 0.0195
    hidden_multiplier: float = Field(default=2.0, gt=0, le=16, description="LFDN width = multiplier x feature dims")
    num_blocks: int = Field(default=16, ge=1, le=256)
    time_embed_dim: int = Field(default=128, ge=8, le=4096)
    noise_level: int = Field(default=3, ge=1, description="t the features are noised to at test")
    ddim_steps: int = Field(default=3, ge=1, description="deterministic DDIM steps back to t = 0")

    @model_validator(mode="after")
    def _test_time_within_the_schedule(self) -> LayerwiseSettings:
        if self.noise_level >= self.timesteps:
            raise ValueError("noise_level must be smaller than timesteps")
        if self.ddim_steps > self.noise_level + 1:
            raise ValueError("ddim_steps can be at most noise_level + 1")
        return self


class MultiscaleSettings(Strict):
    """MODE's cross-scale KNN decision and the plain KNN baseline (docs/METHODS.md section 3)."""

    grid: int = Field(default=2, ge=1, le=8, description="grid x grid regions of the last feature map")
    centre: bool = Field(default=True, description="add the centre region")
    k: int = Field(default=10, ge=1, description="k of the multi-scale search (MODE: 10)")
    bank_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="the share of training images in the KNN / multi-scale bank, chosen by a hash of each id "
        "(the KNN paper keeps 1% of ImageNet); bank memory and search time scale with it",
    )
    knn_k: int = Field(default=50, ge=1, description="k of the plain KNN baseline (KNN paper, CIFAR: 50)")
    global_vector: Literal["penultimate", "mean"] = Field(
        default="penultimate",
        description="the global vector of KNN and MODE: the classifier's pooled penultimate vector (both papers'; "
        "the max with model.backbone.classifier_pool max) or the mean of the last map (the two agree for avg)",
    )
    flip_average: bool = Field(
        default=False,
        description="KNN and MODE read the last feature map averaged over each image and its mirror (the mirror's "
        "map flipped back), in the bank and in the queries; one more backbone pass per image unless "
        "model.backbone.flip_tta already makes it (CIFAR-10: KNN's ID-only AUROC +0.026, BENCHMARKS.md)",
    )
    search_chunk: int = Field(default=65_536, ge=1, description="bank rows per matrix product (bounds memory)")
    index: Literal["auto", "exact", "ivf"] = Field(
        default="auto",
        description="exact: brute force over the bank; ivf: a faiss inverted-file index (approximate); auto: ivf "
        "when the region bank holds more than exact_max_vectors vectors",
    )
    exact_max_vectors: int = Field(default=2_000_000, ge=1, description="the largest region bank auto searches exactly")
    ivf_lists: int | None = Field(default=None, ge=1, description="ivf: k-means cells (default 4 sqrt(vectors))")
    ivf_probe: int = Field(default=32, ge=1, description="ivf: cells scanned per query (recall against speed)")

    def index_for(self, vectors: int) -> Literal["exact", "ivf"]:
        """The search a region bank of ``vectors`` vectors gets."""
        if self.index == "auto":
            return "ivf" if vectors > self.exact_max_vectors else "exact"
        return self.index


class MahalanobisSettings(Strict):
    """The Mahalanobis baseline (Lee et al., 2018) and its feature normalisation (Mahalanobis++)."""

    normalise: bool = Field(
        default=True,
        description="fit and score L2-normalised penultimate features (Mueller & Hein 2025, Mahalanobis++): raw "
        "features of OOD images have small norms that sit close to every class mean (CIFAR-10: far AUROC 41 raw, "
        "80 normalised)",
    )


class DDPSettings(NoiseScheduleSettings):
    """DDP (DiffOOD): a class-conditional pixel DDPM and its test-time reconstruction (docs/METHODS.md section 2).

    The architecture defaults are a small CPU model; ``configs/*-gpu.yaml`` use the paper's U-Net (base 128,
    multipliers 1-2-2-2, 2 residual blocks, attention at 16 px). ``levels`` must share the DDIM grid: every
    level differs from the largest by a multiple of ``stride``, so all levels run in one batched pass.
    """

    enabled: bool = True
    base_channels: int = Field(default=32, ge=8, le=1024)
    channel_mults: tuple[Annotated[int, Field(ge=1, le=16)], ...] = Field(default=(1, 2, 2), min_length=1, max_length=8)
    num_res_blocks: int = Field(default=1, ge=1, le=16)
    attention_resolutions: tuple[Annotated[int, Field(ge=1)], ...] = ()
    dropout: float = Field(default=0.1, ge=0, lt=1)
    label_dropout: float = Field(default=0.1, ge=0, lt=1, description="null-label rate for classifier-free guidance")
    # Defaults from ID-only criteria (BENCHMARKS.md, DDP trade-off): the largest level that keeps the predicted
    # class of >= 95% of held-out ID reconstructions, and enough draws for a Monte-Carlo error <= 20% of the
    # ID score spread; 56 U-Net passes per image against the paper's 312.
    levels: tuple[int, ...] = Field(default=(240,), description="noise levels t the input is pushed to")
    stride: int = Field(default=40, ge=1, description="DDIM stride back to 0")
    draws: int = Field(default=4, ge=1, description="noise draws per image and level")
    guidance: float = Field(default=2.0, ge=0, description="w in (1 + w) eps(x, y) - w eps(x, null)")
    compare: Literal["logits", "features"] = "logits"
    chunk_rows: int = Field(default=1024, ge=1, description="reconstructions per U-Net batch (bounds memory)")

    @model_validator(mode="after")
    def _levels_on_one_grid(self) -> DDPSettings:
        if not self.levels or min(self.levels) < 0 or max(self.levels) >= self.timesteps:
            raise ValueError("levels must be non-empty and within [0, timesteps)")
        if any((max(self.levels) - level) % self.stride for level in self.levels):
            raise ValueError(f"every level must differ from the largest by a multiple of stride {self.stride}")
        return self


class FusionSettings(Strict):
    """``score_fused``: the listed scores' conformal p-values combined by ``rule`` and calibrated again on
    held-out ID data (rayood/detectors/fusion.py says why each rule and how)."""

    enabled: bool = True
    rule: Literal["cauchy", "fisher"] = "cauchy"
    scores: tuple[str, ...] = Field(default=(), description="scores to fuse; empty = chosen by ``choose``")
    choose: Literal["synthetic_outliers", "all"] = Field(
        default="synthetic_outliers",
        description="with no scores listed: greedy selection on synthetic outliers made from ID images, or all",
    )
    synthetic_per_kind: int = Field(default=200, ge=10, description="synthetic outliers of each kind")


TORCHVISION_WEIGHTS = re.compile(r"[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+")  # ResNet50_Weights.IMAGENET1K_V2


def _weights_preprocessing(name: str) -> dict[str, object]:
    """input_size, mean and std of torchvision's named weights (their ``transforms()``), without downloading;
    nothing for an unknown name, which fitting refuses with its own message."""
    from torchvision.models import get_weight

    try:
        transforms = get_weight(name).transforms()
    except (ValueError, KeyError):
        return {}
    return {"input_size": int(transforms.crop_size[0]), "mean": tuple(transforms.mean), "std": tuple(transforms.std)}


class ModelSettings(Strict):
    preprocess: PreprocessSettings = PreprocessSettings()
    backbone: BackboneSettings = BackboneSettings()
    layerwise: LayerwiseSettings = LayerwiseSettings()
    multiscale: MultiscaleSettings = MultiscaleSettings()
    mahalanobis: MahalanobisSettings = MahalanobisSettings()
    ddp: DDPSettings = DDPSettings()
    fusion: FusionSettings = FusionSettings()

    @model_validator(mode="before")
    @classmethod
    def _preprocessing_of_the_weights(cls, data: object) -> object:
        """Named torchvision weights bring their preprocessing (crop size, mean, std) where the config sets none."""
        if not isinstance(data, dict) or not isinstance(data.get("backbone"), dict):
            return data
        weights = data["backbone"].get("init_weights")
        if not isinstance(weights, str) or not TORCHVISION_WEIGHTS.fullmatch(weights):
            return data
        preprocess = data.get("preprocess") or {}
        if isinstance(preprocess, BaseModel):
            preprocess = preprocess.model_dump(exclude_unset=True)
        return {**data, "preprocess": {**_weights_preprocessing(weights), **preprocess}}
