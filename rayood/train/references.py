"""The feature pass of a fit: one streaming pass of the ID training rows through the settled backbone, by Ray
Data batch inference, that gives everything the later steps read, so no step runs the backbone on them again:

- what the streaming families learn: every enabled family whose registry entry names a ``StreamingFit``
  (``detectors/contract.py``; today the multi-scale bank of region vectors for KNN and MODE, and the Mahalanobis
  class statistics). ``rows`` turns one batch's backbone features into per-row arrays inside the actors (GPU
  actors on a cluster, so the pass scales past one machine), ``partial_fit`` takes them on the driver batch by
  batch, and ``finish`` writes the family's bundle files and returns the facts its manifest record keeps;
- the feature cache the Ray Train stages after the backbone read (``cached_columns``): DLSR's pooled, z-scored layer
  features and, for a frozen encoder's linear head, the penultimate vector, with each row's id and class.
  The pass is materialised once (Ray's object store, spilled to disk when it outgrows memory): the families
  stream from it, and the cache columns become the stages' training dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray.data
import torch

from rayood.bundle import BACKBONE_FILE
from rayood.bundle_files import load_state_into
from rayood.config import ModelSettings, RayoodConfig, S3Settings
from rayood.data.decode import pixels_from_column
from rayood.detectors.contract import StreamingFit
from rayood.detectors.layerwise import layer_features
from rayood.detectors.registry import enabled_detectors, named
from rayood.models.backbones import build_backbone, uint8_to_unit
from rayood.scoring.pool import actor_pool
from rayood.scoring.scorer import pick_device
from rayood.storage import Location, resolve


def streaming_fits(settings: ModelSettings) -> dict[str, str]:
    """The enabled families the feature pass fits, by family: the ``module:class`` of each one's ``StreamingFit``."""
    return {
        spec.family: f"{spec.module}:{spec.streaming_fit}"
        for spec in enabled_detectors(settings)
        if spec.streaming_fit is not None
    }


def new_fit(path: str, settings: ModelSettings, seed: int, num_classes: int, scratch: str | None) -> StreamingFit:
    """A family's ``StreamingFit`` from its ``module:class`` (``streaming_fits``)."""
    return named(path)(settings, seed, num_classes, scratch)


CACHE_PREFIX = "cache/"


def cached_columns(settings: ModelSettings, head: bool) -> list[str]:
    """The feature-cache columns a fit needs: DLSR's layers when it is on, the penultimate vector for a head."""
    columns = ["id", "class"]
    if settings.layerwise.enabled:
        columns.append("layers")
    if head:
        columns.append("penultimate")
    return columns


class FeatureRows:
    """``map_batches`` class: decoded rows -> every streaming family's per-row arrays, keyed ``family/name``, and
    the feature cache's columns, keyed ``cache/name``."""

    def __init__(
        self,
        model: dict,
        class_names: list[str],
        label_column: str,
        backbone_uri: str,
        s3: S3Settings | None,
        device: str,
        cpu_threads: int = 1,
        seed: int = 0,
        cached: tuple[str, ...] = (),
        streaming: dict[str, str] | None = None,
    ) -> None:
        torch.set_num_threads(max(1, cpu_threads))
        self.settings = ModelSettings.model_validate(model)
        self.cached = cached
        self.device = pick_device(device)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.label_column = label_column
        self.fits = {
            family: new_fit(path, self.settings, seed, len(class_names), None)
            for family, path in (streaming or {}).items()
        }
        self.backbone = build_backbone(self.settings.backbone, self.settings.preprocess, len(class_names))
        load_state_into(self.backbone, resolve(backbone_uri, s3), "backbone")
        self.backbone.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        pixels = pixels_from_column(batch.column("pixels"), self.settings.preprocess.native_size)
        images = uint8_to_unit(torch.from_numpy(pixels.copy()).to(self.device))
        features = self.backbone.features(images)
        mirror = self.backbone.features(images.flip(3)) if self.settings.multiscale.flip_average else None
        labels = batch.column(self.label_column).cast(pa.string()).to_pylist()
        classes = np.array([self.class_index[label] for label in labels])
        ids = batch.column("id").to_pylist()
        rows = {
            f"{family}/{name}": values
            for family, fit in self.fits.items()
            for name, values in fit.rows(features, mirror, ids, classes).items()
        }
        cache = {"id": np.array(ids, dtype=object), "class": classes}
        if "layers" in self.cached:
            cache["layers"] = layer_features(features.stage_maps).cpu().numpy()
        if "penultimate" in self.cached:
            cache["penultimate"] = features.penultimate.float().cpu().numpy()
        return {**rows, **{CACHE_PREFIX + name: cache[name] for name in self.cached}}


@dataclass
class FeaturePass:
    """The materialised feature pass over the training rows: family columns and cache columns."""

    rows: ray.data.Dataset
    cached: tuple[str, ...]

    def cache(self) -> ray.data.Dataset:
        """The feature cache, as the stages' training dataset (columns named without the prefix)."""
        names = {CACHE_PREFIX + name: name for name in self.cached}
        return self.rows.select_columns(list(names)).rename_columns(names)


def feature_pass(
    config: RayoodConfig, data: ray.data.Dataset, class_names: list[str], bundle: Location, cached: list[str]
) -> FeaturePass:
    """Run the backbone ``bundle`` already holds over ``data`` once, materialised. The actors read the backbone
    from the bundle, as scoring actors do, rather than take its weights (a ResNet-50's: ~100 MB) as constructor
    arguments that every actor start ships again."""
    screen = config.screen
    rows = data.map_batches(
        FeatureRows,
        fn_constructor_kwargs={
            "model": config.model.model_dump(mode="json"),
            "class_names": class_names,
            "label_column": config.corpus.label_column,
            "backbone_uri": bundle.join(BACKBONE_FILE).uri,
            "s3": config.s3,
            "device": screen.device,
            "cpu_threads": screen.actor_threads,
            "seed": config.train.seed,
            "cached": tuple(cached),
            "streaming": streaming_fits(config.model),  # the driver's registry: the actors' may lack a plugin
        },
        **actor_pool(screen, min_actors=1),
    )
    return FeaturePass(rows.materialize(), tuple(cached))


def fit_references(
    config: RayoodConfig, features: FeaturePass, class_names: list[str], bundle: Location, scratch: str
) -> dict[str, dict]:
    """Every streaming family fitted from the feature pass and written into ``bundle``; returns each family's
    manifest facts. ``scratch``: a directory for what a family spills on the way (the bank)."""
    fits = {
        family: new_fit(path, config.model, config.train.seed, len(class_names), scratch)
        for family, path in streaming_fits(config.model).items()
    }
    columns = [name for name in features.rows.columns() if name.split("/", 1)[0] in fits]
    for batch in features.rows.select_columns(columns).iter_batches(batch_size=None, batch_format="numpy"):
        for family, fit in fits.items():
            prefix = f"{family}/"
            fit.partial_fit({key[len(prefix) :]: values for key, values in batch.items() if key.startswith(prefix)})
    return {family: fit.finish(bundle) for family, fit in fits.items()}
