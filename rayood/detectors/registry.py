"""The registry of detector families: everything the rest of rayood knows about a family, declared once, without
importing any family's module (so it needs no torch).

A ``DetectorSpec`` says which scores a family reports (in report column order), when it is on, the module that
implements it, the bundle files it may write, and how it is fitted: not at all (post-hoc scores on the backbone),
by the fit's feature pass (a ``StreamingFit`` class in its module: ``rayood.detectors.contract``), or by a Ray
Train stage of its own (``StageSpec``). Config checks, the bundle format, the fit and the report readers loop over
``REGISTRY``; a fitted bundle's manifest records each family's module, scores and files, so scoring loads what
the bundle holds. Adding a family: one module and one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import BaseModel

    from rayood.config import DDPSettings, ModelSettings, RayoodConfig, TrainSettings

CLASSIFIER = ("msp", "energy", "maxlogit")
ROTATION = ("rotation",)
MAHALANOBIS = ("mahalanobis",)
LAYERWISE = ("layerwise_mse", "layerwise_mfsim")
MULTISCALE = ("knn", "multiscale")

MAHALANOBIS_FILE = "mahalanobis.npz"
LAYERWISE_FILE = "layerwise_denoiser.pt"
BANK_FILE = "multiscale_bank.npy"  # an exact bank; or, searched approximately, the two faiss indexes:
MULTISCALE_INDEX_FILE = "multiscale_index.faiss"  # every region vector
KNN_INDEX_FILE = "knn_index.faiss"  # the global vectors alone
DDP_FILE = "ddp_unet.pt"


def ddp_score_names(settings: DDPSettings) -> list[str]:
    """``ddp`` (the mean over levels), then ``ddp_t<level>`` per level when there are several."""
    names = ["ddp"]
    if len(settings.levels) > 1:
        names += [f"ddp_t{level}" for level in sorted(settings.levels)]
    return names


def _always(settings: ModelSettings) -> bool:
    return True


@dataclass(frozen=True)
class StageSpec:
    """A Ray Train stage that fits a family after the backbone and the feature pass; its result (the EMA weights
    of its checkpoint) becomes the family's first file. Its run name and manifest ``training`` key are the
    family's name."""

    loop: str  # "module:function", the training loop (imported by the fit alone)
    optim: Callable[[TrainSettings], BaseModel]  # its optimiser settings
    reads: tuple[str, ...]  # setting paths its result depends on beyond every stage's (the stage fingerprint)
    inputs: Callable[[RayoodConfig, Sequence[int]], dict]  # LoopConfig fields beyond the shared, from the stage dims
    reads_features: bool  # trains on the fit's feature cache, not on decoded pixels
    test_time_only: Mapping[str, frozenset[str]] = field(default_factory=dict)  # fields of ``reads`` never trained on
    upstream: tuple[str, ...] = ()  # stages whose result it reads (their fingerprints enter its own)


@dataclass(frozen=True)
class DetectorSpec:
    family: str
    module: str  # defines ``load(files: BundleFiles) -> Detector``; imported only to fit or score
    score_names: Callable[[ModelSettings], Sequence[str]]
    enabled: Callable[[ModelSettings], bool] = _always
    files: tuple[str, ...] = ()  # every bundle file the family may write
    streaming_fit: str | None = None  # a ``StreamingFit`` class in ``module``, fitted by the feature pass
    stage: StageSpec | None = None
    # the fewest training rows it can be fitted on, and the settings that ask for them (checked before any training)
    min_training_rows: Callable[[ModelSettings], tuple[int, str]] | None = None


REGISTRY: tuple[DetectorSpec, ...] = (
    DetectorSpec(
        "classifier",
        "rayood.detectors.classifier",
        lambda settings: CLASSIFIER,
        enabled=lambda settings: settings.backbone.classifier,
    ),
    DetectorSpec(
        "rotation",
        "rayood.detectors.rotation",
        lambda settings: ROTATION,
        enabled=lambda settings: settings.backbone.rotation_head,
    ),
    DetectorSpec(
        "mahalanobis",
        "rayood.detectors.mahalanobis",
        lambda settings: MAHALANOBIS,
        files=(MAHALANOBIS_FILE,),
        streaming_fit="MahalanobisFit",
    ),
    DetectorSpec(
        "layerwise",
        "rayood.detectors.layerwise",
        lambda settings: LAYERWISE,
        enabled=lambda settings: settings.layerwise.enabled,
        files=(LAYERWISE_FILE,),
        stage=StageSpec(
            loop="rayood.train.loops:layerwise_loop",
            optim=lambda train: train.layerwise,
            reads=("model.layerwise", "train.layerwise"),
            inputs=lambda config, stage_dims: {"stage_dims": tuple(stage_dims)},
            reads_features=True,
            test_time_only={"model.layerwise": frozenset({"enabled", "noise_level", "ddim_steps"})},
            upstream=("backbone",),
        ),
    ),
    DetectorSpec(
        "multiscale",
        "rayood.detectors.multiscale",
        lambda settings: MULTISCALE,
        files=(BANK_FILE, MULTISCALE_INDEX_FILE, KNN_INDEX_FILE),
        streaming_fit="BankFit",
        min_training_rows=lambda settings: (
            max(settings.multiscale.k, settings.multiscale.knn_k),
            "model.multiscale k/knn_k",
        ),
    ),
    DetectorSpec(
        "ddp",
        "rayood.detectors.ddp",
        lambda settings: ddp_score_names(settings.ddp),
        enabled=lambda settings: settings.ddp.enabled,
        files=(DDP_FILE,),
        stage=StageSpec(
            loop="rayood.train.loops:ddp_loop",
            optim=lambda train: train.ddp,
            reads=("model.ddp", "train.ddp", "train.augment"),
            inputs=lambda config, stage_dims: {"augment": tuple(config.train.augment)},
            reads_features=False,
            # levels stay: with train.ddp.timesteps "levels" the training reads them
            test_time_only={
                "model.ddp": frozenset({"enabled", "stride", "draws", "guidance", "compare", "chunk_rows"})
            },
        ),
    ),
)


def named(reference: str) -> object:
    """What a ``module:attribute`` reference of an entry names, imported on first use (the registry itself imports
    no family)."""
    module, attribute = reference.split(":")
    return getattr(importlib.import_module(module), attribute)


def enabled_detectors(settings: ModelSettings) -> list[DetectorSpec]:
    return [spec for spec in REGISTRY if spec.enabled(settings)]


def score_names(settings: ModelSettings) -> list[str]:
    """Every score a bundle with these settings produces, in report column order."""
    return [name for spec in enabled_detectors(settings) for name in spec.score_names(settings)]


def family_files() -> frozenset[str]:
    """Every file a registered family may write into a bundle."""
    return frozenset(name for spec in REGISTRY for name in spec.files)
