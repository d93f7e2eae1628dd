"""Typed configuration for the rayood jobs.

One YAML file describes a whole run (reading, model, fitting, screening). Every section is a pydantic
model that forbids unknown keys, so a typo is an error that names the field and the file instead of a
setting that is silently ignored. Credentials never live here: S3 keys come from the standard AWS
environment variables (or the cluster's instance role).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rayood.report.columns import COMPUTED_COLUMNS, COMPUTED_PREFIXES

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OBJECT_STORE_MINIMUM_BYTES = 75 * 2**20  # Ray refuses a smaller object store (ray_constants)


class RaySettings(_Strict):
    """Where the jobs run.

    ``address: null`` connects to the cluster a job was submitted to (``RAY_ADDRESS``), or starts a local
    cluster in-process when there is none.
    """

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1, description="only for a local cluster started in-process")
    object_store_memory: int | None = Field(
        default=None,
        ge=OBJECT_STORE_MINIMUM_BYTES,
        description="bytes of shared memory for Ray's object store, only for a local cluster started in-process "
        "(Ray's default: 30% of RAM). The scoring actor's resident memory grows by the store pages its input "
        "batches pass through, toward this bound, over a long run (BENCHMARKS.md)",
    )
    verbose: bool = Field(
        default=False,
        description="Ray's own console output (worker logs, Ray Data's progress blocks, its INFO lines); otherwise "
        "they stay in the session's log files, whose path the job prints (--verbose)",
    )


class S3Settings(_Strict):
    """Any S3-compatible store. Unset fields fall back to the AWS environment variables."""

    endpoint_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:9000; env AWS_ENDPOINT_URL")
    region: str | None = Field(default=None, description="env AWS_REGION / AWS_DEFAULT_REGION")
    anonymous: bool = False
    retries: int = Field(default=5, ge=0)
    client: Literal["pyarrow", "s3fs"] = Field(
        default="pyarrow",
        description="pyarrow's native S3 client (faster: BENCHMARKS.md, 's3:// clients'), or s3fs (botocore's "
        "credential chain and config files, named profiles, requester-pays buckets)",
    )
    profile: str | None = Field(default=None, description="a named profile of the AWS config files (client: s3fs)")
    requester_pays: bool = Field(default=False, description="read requester-pays buckets (client: s3fs)")

    @model_validator(mode="after")
    def _s3fs_options_need_s3fs(self) -> S3Settings:
        used = [name for name in ("profile", "requester_pays") if getattr(self, name)]
        if used and self.client != "s3fs":
            raise ValueError(
                f"{' and '.join(used)} need client: s3fs (pyarrow's client takes a profile from AWS_PROFILE)"
            )
        return self

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value and "@" in value.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError(
                "must not hold credentials (user:password@); use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        return value


class CorpusSettings(_Strict):
    """How a corpus is laid out: image files, or Parquet with an image-bytes column."""

    image_column: str = "image"
    id_column: str = "id"
    label_column: str = "label"
    file_extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    @field_validator("file_extensions")
    @classmethod
    def _lower_no_dot(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(ext.lower().lstrip(".") for ext in value)


class PreprocessSettings(_Strict):
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


class BackboneSettings(_Strict):
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


class LayerwiseSettings(_Strict):
    """DLSR: the feature denoiser (LFDN) and its test-time reconstruction (docs/METHODS.md section 1)."""

    enabled: bool = Field(
        default=True,
        description="fit the feature denoiser and report layerwise_mse / layerwise_mfsim; off saves its Ray Train "
        "stage (screen.decision.score must then name another score)",
    )
    timesteps: int = Field(default=100, ge=2, le=10_000)
    beta_start: float = Field(default=0.0015, gt=0, lt=1)
    beta_end: float = Field(default=0.0195, gt=0, lt=1)
    hidden_multiplier: float = Field(default=2.0, gt=0, le=16, description="LFDN width = multiplier x feature dims")
    num_blocks: int = Field(default=16, ge=1, le=256)
    time_embed_dim: int = Field(default=128, ge=8, le=4096)
    noise_level: int = Field(default=3, ge=1, description="t the features are noised to at test")
    ddim_steps: int = Field(default=3, ge=1, description="deterministic DDIM steps back to t = 0")

    @model_validator(mode="after")
    def _schedule_ok(self) -> LayerwiseSettings:
        if self.beta_end <= self.beta_start:
            raise ValueError("beta_end must be larger than beta_start")
        if self.noise_level >= self.timesteps:
            raise ValueError("noise_level must be smaller than timesteps")
        if self.ddim_steps > self.noise_level + 1:
            raise ValueError("ddim_steps can be at most noise_level + 1")
        return self


class MultiscaleSettings(_Strict):
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


class MahalanobisSettings(_Strict):
    """The Mahalanobis baseline (Lee et al., 2018) and its feature normalisation (Mahalanobis++)."""

    normalise: bool = Field(
        default=True,
        description="fit and score L2-normalised penultimate features (Mueller & Hein 2025, Mahalanobis++): raw "
        "features of OOD images have small norms that sit close to every class mean (CIFAR-10: far AUROC 41 raw, "
        "80 normalised)",
    )


class DDPSettings(_Strict):
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
    timesteps: int = Field(default=1000, ge=2, le=10_000)
    beta_start: float = Field(default=1e-4, gt=0, lt=1)
    beta_end: float = Field(default=0.02, gt=0, lt=1)
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
        if self.beta_end <= self.beta_start:
            raise ValueError("beta_end must be larger than beta_start")
        return self


class FusionSettings(_Strict):
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


class ModelSettings(_Strict):
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


class OptimSettings(_Strict):
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
    classifier baselines still have logits). ``alpa_finetune`` starts from ``model.backbone.init_weights``.
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


class TrainSettings(_Strict):
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


class DecisionSettings(_Strict):
    score: str = "layerwise_mfsim"
    alpha: float = Field(default=0.05, gt=0, lt=1, description="significance level of is_ood")


class TruthSettings(_Strict):
    """A ground-truth column for demo and evaluation corpora: rows whose value is in ``id_values`` are ID."""

    column: str
    id_values: tuple[str, ...]


class ScreenSettings(_Strict):
    inputs: tuple[str, ...] = ()
    output: str | None = None
    bundle: str | None = None
    overwrite: bool = Field(default=False, description="replace a finished report at the output")
    fit_if_missing: bool = Field(default=False, description="fit the bundle first when it does not exist")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=256, ge=1)
    decode_batch_size: int = Field(default=64, ge=1)
    min_actors: int = Field(
        default=1,
        ge=1,
        description="scoring actors started first; min_actors x cpus_per_actor must leave a CPU for reading and "
        "decoding (a local cluster refuses a pool that would not, since it would wait for ever)",
    )
    max_actors: int = Field(default=1, ge=1, description="the pool grows to this many where CPUs (or GPUs) are free")
    num_gpus_per_actor: float = Field(default=0, ge=0)
    cpus_per_actor: float = Field(default=1, gt=0)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per scoring actor (default: the floor of cpus_per_actor); on a CPU-only machine "
        "the core count lets the actor use the cores that decoding leaves idle",
    )
    passthrough_columns: tuple[str, ...] = ()
    max_bytes: int | None = Field(
        default=None,
        ge=1,
        description="larger encoded files are error rows; default: the bundle's model.preprocess.max_bytes",
    )
    max_pixels: int | None = Field(
        default=None, ge=1, description="larger images are error rows (decompression bombs); default: the bundle's"
    )
    embedding: bool = Field(default=False, description="add the penultimate features as a float16 column")
    predictions: bool = Field(default=False, description="add the classifier's ID class as predicted_class")
    decision: DecisionSettings = DecisionSettings()
    truth: TruthSettings | None = None
    progress_every_s: float = Field(
        default=30, ge=0, description="log the rows screened so far, their rate and an ETA this often (0: never)"
    )
    report_thumbnails: int = Field(
        default=24, ge=0, le=200, description="most out-of-distribution images shown in report.html (0: none)"
    )

    @property
    def actor_threads(self) -> int:
        return self.torch_threads or max(1, int(self.cpus_per_actor))

    @model_validator(mode="after")
    def _pool(self) -> ScreenSettings:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be >= min_actors")
        if self.truth and self.truth.column not in self.passthrough_columns:
            raise ValueError(f"truth.column {self.truth.column!r} must also be in passthrough_columns")
        clashes = [c for c in self.passthrough_columns if c in COMPUTED_COLUMNS or c.startswith(COMPUTED_PREFIXES)]
        if clashes:
            raise ValueError(
                f"passthrough_columns {clashes} would overwrite columns that screening computes "
                f"({', '.join(COMPUTED_COLUMNS)}, {'*, '.join(COMPUTED_PREFIXES)}*): rename them in the input"
            )
        return self


# Report columns that screening writes itself; an input column passed through under one of these names would
# replace the computed value (a row with status "ok" and garbage bytes would stay "ok").


class DemoSettings(_Strict):
    """Build the bundled demo corpora (scikit-learn digits and photos) under ``root`` when missing."""

    root: str = "rayood-demo"
    seed: int = 0


class RayoodConfig(_Strict):
    ray: RaySettings = RaySettings()
    s3: S3Settings = S3Settings()
    corpus: CorpusSettings = CorpusSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    screen: ScreenSettings = ScreenSettings()
    demo: DemoSettings | None = None

    @model_validator(mode="after")
    def _finetune_has_a_start(self) -> RayoodConfig:
        if self.train.backbone.objective == "alpa_finetune" and not self.model.backbone.init_weights:
            raise ValueError(
                "train.backbone.objective alpa_finetune needs model.backbone.init_weights (a fitted backbone.pt)"
            )
        return self

    @model_validator(mode="after")
    def _unlabelled_needs_a_frozen_encoder(self) -> RayoodConfig:
        """Without ID labels nothing can train a backbone or a head, and there is no class to predict."""
        if self.model.backbone.classifier:
            return self
        if self.train.backbone.epochs > 0:
            raise ValueError(
                "model.backbone.classifier false (unlabelled ID data) needs a frozen encoder: "
                "train.backbone.epochs 0 (training a backbone needs labels)"
            )
        if self.model.backbone.rotation_head:
            raise ValueError("model.backbone.classifier false leaves no trained rotation_head")
        if self.screen.predictions:
            raise ValueError("screen.predictions needs model.backbone.classifier (there are no ID classes to predict)")
        return self

    @model_validator(mode="after")
    def _rotation_head_is_trained(self) -> RayoodConfig:
        """The rotation objective needs the head; a head nothing trains would score noise (unless it is loaded)."""
        rotation, head = self.train.backbone.objective == "rotation", self.model.backbone.rotation_head
        if rotation and not head:
            raise ValueError("train.backbone.objective rotation needs model.backbone.rotation_head: true")
        if head and not rotation and not self.model.backbone.init_weights:
            raise ValueError(
                "model.backbone.rotation_head is trained only by train.backbone.objective rotation "
                "(or loaded with model.backbone.init_weights from a backbone that has one)"
            )
        return self


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling and section)"
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> RayoodConfig:
    """Validate a mapping; errors name every bad field and ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        return RayoodConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_config(path: str | Path) -> RayoodConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_config(data, str(path))


def with_overrides(config: RayoodConfig, section: str, **values: object) -> RayoodConfig:
    """Apply command-line overrides (``None`` means not given) and validate again."""
    given = {key: value for key, value in values.items() if value is not None}
    if not given:
        return config
    data = config.model_dump(mode="python")
    data[section].update(given)
    return parse_config(data, "the command line")
