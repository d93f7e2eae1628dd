"""Fitting a model bundle: read and split the ID corpus, Ray Train stages, the feature pass, calibration, bundle.

1. Read and decode the ID corpus with the screening reader, drop rows that fail to decode (counted),
   and split it by a hash of each id into a training part and a held-out calibration part.
2. Ray Train: the backbone classifier, unless the backbone is a frozen encoder (``train.backbone.epochs: 0``,
   usually ImageNet weights by ``model.backbone.init_weights``).
3. The feature pass (``train/references.py``): Ray Data batch inference of the settled backbone over the
   training rows, once. It gives the KNN / multi-scale bank and the Mahalanobis statistics, and a feature cache
   (DLSR's layer features; a frozen encoder's penultimate vectors) that every later stage reads instead of
   running the backbone again.
4. Ray Train on the cache: a frozen encoder's linear head (the classifier scores, the held-out accuracy), then
   the stage each enabled detector declares (``train/stages.py``): the DLSR feature denoiser; DDP's pixel DDPM
   (on pixels) when DDP is on. Each stage resumes from its checkpoints (run names fingerprint what it reads).
5. Score the held-out part with the screening actor (the very code screening runs) and store those
   scores in the bundle: the reference for p-values and thresholds; the classifier's held-out accuracy.
6. Choose the fused scores on synthetic outliers made from training images (ID-only evidence).

The bundle is written into a staging folder beside the checkpoints and promoted to ``train.bundle`` only
when complete, manifest last (``bundle.promote_bundle``): until then the old bundle there keeps serving, and a
crash at any point never leaves a half bundle that loads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rayood.bundle import (
    BACKBONE_FILE,
    CALIBRATION_FILE,
    BundleError,
    check_bundle_target,
    clear_bundle,
    new_manifest,
    promote_bundle,
    write_calibration,
    write_file,
    write_manifest,
)
from rayood.bundle_files import state_dict_bytes
from rayood.config import TORCHVISION_WEIGHTS, ConfigError, ModelSettings, RayoodConfig, TrainSettings
from rayood.data.decode import DecodeLimits, formats_for, pixels_from_column, pixels_to_column
from rayood.data.id_sample import in_calibration_split
from rayood.data.reader import read_decoded
from rayood.data.sources import plan_sources
from rayood.detectors.fusion import choose_fused_scores
from rayood.detectors.registry import enabled_detectors, named, score_names
from rayood.detectors.synthetic import evidence_kinds, synthetic_outliers
from rayood.manifest import CalibrationRecord, FusionRecord, Manifest
from rayood.models.backbones import build_backbone, load_matching, torchvision_state
from rayood.models.encoders import EncoderError
from rayood.report.columns import PREDICTED_CLASS, STATUS_OK, score_col
from rayood.runtime import init_ray
from rayood.scoring.actor import ScoreActor
from rayood.scoring.pool import actor_pool, check_room_for_decoding
from rayood.storage import Location, resolve
from rayood.train.harness import LOOP, PROGRESS, LoopConfig, load_state
from rayood.train.loops import backbone_loop, head_loop
from rayood.train.progress import StageProgress
from rayood.train.references import cached_columns, feature_pass, fit_references
from rayood.train.stages import stage_fingerprint

log = logging.getLogger(__name__)

STAGING = "bundle-staging"  # under the checkpoint location


class SplitTagger:
    """Adds ``calibration`` (bool) from a hash of the id: stable across runs, workers and file order."""

    def __init__(self, fraction: float, seed: int) -> None:
        self.fraction = fraction
        self.seed = seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        flags = [in_calibration_split(i, self.fraction, self.seed) for i in batch.column("id").to_pylist()]
        return batch.append_column("calibration", pa.array(flags, pa.bool_()))


def _only(split: bool):
    def keep(batch: pa.Table) -> pa.Table:
        mask = pc.and_(pc.equal(batch.column("status"), STATUS_OK), pc.equal(batch.column("calibration"), split))
        return batch.filter(mask)

    return keep


def _run_config(config: RayoodConfig, checkpoints: Location, stage: str) -> RunConfig:
    name = f"{config.train.run_name}-{stage}-{stage_fingerprint(config, stage)}"
    return RunConfig(
        name=name,
        storage_path=checkpoints.path,
        storage_filesystem=checkpoints.fs,
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        # A failed worker restarts the whole group, which gets the latest checkpoint from get_checkpoint().
        failure_config=FailureConfig(max_failures=config.train.max_failures),
    )


def _fit_stage(
    config: RayoodConfig, checkpoints: Location, stage: str, loop, loop_config: LoopConfig, data
) -> ray.train.Result:
    train = config.train
    started = time.perf_counter()
    with StageProgress(stage, loop_config.optim.epochs) as progress:
        trainer = TorchTrainer(
            loop,
            train_loop_config={LOOP: loop_config, PROGRESS: progress.queue},
            scaling_config=ScalingConfig(
                num_workers=train.num_workers,
                use_gpu=train.use_gpu,
                resources_per_worker={"CPU": train.cpus_per_worker},
                placement_strategy=train.placement_strategy,
            ),
            run_config=_run_config(config, checkpoints, stage),
            datasets={"train": data},
        )
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"the {stage} stage finished without a checkpoint")
    log.info("%s stage done in %.0f s: %s", stage, time.perf_counter() - started, result.metrics)
    result.metrics["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _corpus_facts(tagged: ray.data.Dataset, label_column: str) -> pa.Table:
    columns = tagged.select_columns(["id", "status", "error", "calibration", label_column])
    return pa.concat_tables(ray.get(columns.to_arrow_refs()))


def _init_state(config: RayoodConfig) -> dict | None:
    uri = config.model.backbone.init_weights
    if uri is None:
        return None
    if TORCHVISION_WEIGHTS.fullmatch(uri):
        try:
            return torchvision_state(uri)
        except ValueError as error:
            raise ConfigError(f"model.backbone.init_weights: {error}") from None
    return torch.load(io.BytesIO(resolve(uri, config.s3).read_bytes()), map_location="cpu", weights_only=True)


def _check_backbone(config: RayoodConfig, init_state: dict | None) -> None:
    """Build the backbone once on the driver, before any cluster work: an unknown model or node, or weights that
    do not fit it, is a configuration error that names the field."""
    try:
        probe = build_backbone(config.model.backbone, config.model.preprocess, num_classes=1)
    except EncoderError as error:
        raise ConfigError(str(error)) from None
    if init_state is not None:
        try:
            load_matching(probe, init_state, warn=False)  # a one-class probe: its classifier cannot fit
        except ValueError as error:
            raise ConfigError(f"model.backbone.init_weights: {error}") from None


@dataclass
class IdCorpus:
    """The decoded ID corpus, tagged with its split, and what the driver knows about its rows."""

    tagged: ray.data.Dataset
    facts: pa.Table  # id, status, error, calibration, label: no pixels
    class_names: list[str]

    @property
    def errors(self) -> pa.Table:
        return self.facts.filter(pc.invert(pc.equal(self.facts.column("status"), STATUS_OK)))

    def rows(self, calibration: bool) -> pa.Table:
        ok = pc.equal(self.facts.column("status"), STATUS_OK)
        return self.facts.filter(pc.and_(ok, pc.equal(self.facts.column("calibration"), calibration)))

    def dataset(self, calibration: bool) -> ray.data.Dataset:
        return self.tagged.map_batches(_only(calibration), batch_format="pyarrow")

    def training_dataset(self) -> ray.data.Dataset:
        """The training rows. The loops decode their shard once and shuffle it whole each epoch
        (``train/cache.py``), so a corpus sorted by class (as the benchmark CIFAR-10 files are) needs nothing here."""
        return self.dataset(calibration=False)

    def summary(self, train: TrainSettings) -> dict:
        return {
            "uris": list(train.data),
            "fingerprint": hashlib.sha256("\n".join(sorted(self.facts.column("id").to_pylist())).encode()).hexdigest(),
            "rows": self.facts.num_rows,
            "error_rows": self.errors.num_rows,
            "train_rows": self.rows(False).num_rows,
            "calibration_rows": self.rows(True).num_rows,
            "split_seed": train.seed,
            "calibration_fraction": train.calibration_fraction,
        }


UNLABELLED_CLASS = "id"  # the one class of unlabelled ID data (model.backbone.classifier false)


class OneClass:
    """Adds the label column with one class to every row of unlabelled ID data."""

    def __init__(self, label_column: str) -> None:
        self.label_column = label_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.append_column(self.label_column, pa.array([UNLABELLED_CLASS] * batch.num_rows, pa.string()))


def _read_id_corpus(config: RayoodConfig, plans: list) -> IdCorpus:
    """Decode and split the ID corpus once (materialised: every stage reads it); check it can be fitted."""
    train, preprocess, label_column = config.train, config.model.preprocess, config.corpus.label_column
    labelled = config.model.backbone.classifier
    decoded = read_decoded(
        plans,
        image_column=config.corpus.image_column,
        id_column=config.corpus.id_column,
        size=preprocess.native_size,
        limits=DecodeLimits(preprocess.max_bytes, preprocess.max_pixels, formats_for(config.corpus.file_extensions)),
        passthrough=(label_column,) if labelled else (),
    )
    if not labelled:
        decoded = decoded.map_batches(OneClass(label_column), batch_format="pyarrow")
    tagged = decoded.map_batches(
        SplitTagger(train.calibration_fraction, train.seed), batch_format="pyarrow"
    ).materialize()
    facts = _corpus_facts(tagged, label_column)
    corpus = IdCorpus(tagged, facts, [])
    for row in corpus.errors.slice(0, 20).to_pylist():
        log.warning("skipping ID row %s: %s", row["id"], row["error"])
    fitting = corpus.rows(False)
    if fitting.num_rows == 0 or corpus.rows(True).num_rows == 0:
        raise ConfigError(f"train.data yields {fitting.num_rows} usable training rows and too few for calibration")
    labels = fitting.column(label_column)
    if labels.null_count:
        raise ConfigError(
            f"{labels.null_count} training rows have no {label_column!r}; the classifier needs labels "
            "(model.backbone.classifier: false fits unlabelled ID data with a frozen encoder)"
        )
    for spec in enabled_detectors(config.model):
        needed, asked_by = spec.min_training_rows(config.model) if spec.min_training_rows else (0, "")
        if fitting.num_rows < needed:
            raise ConfigError(f"{asked_by} = {needed} exceeds the {fitting.num_rows} training rows")
    corpus.class_names = sorted(set(labels.cast(pa.string()).to_pylist()))
    return corpus


def _check_fused_scores(model: ModelSettings) -> None:
    """Named fused scores must be scores this model reports (the settings cannot tell: the detector registry, which
    knows the scores, sits above them)."""
    unknown = sorted(set(model.fusion.scores) - set(score_names(model)))
    if unknown:
        raise ConfigError(f"model.fusion.scores {unknown} are not scores of this model: {score_names(model)}")


def fit(config: RayoodConfig) -> str:
    """Fit every model of a bundle and write it; returns the bundle URI."""
    train = config.train
    if not train.data:
        raise ConfigError("train.data is not set (the ID corpus to fit on)")
    if not train.bundle:
        raise ConfigError("train.bundle is not set (where to write the model bundle)")
    _check_fused_scores(config.model)
    labelled = config.model.backbone.classifier
    plans = plan_sources(
        train.data, config.corpus, config.s3, extra_columns=(config.corpus.label_column,) if labelled else ()
    )
    bundle = resolve(train.bundle, config.s3)
    try:
        check_bundle_target(bundle, train.overwrite)
    except BundleError as error:
        raise ConfigError(str(error)) from None
    checkpoints = resolve(train.checkpoint_path or f"{train.bundle.rstrip('/')}-checkpoints", config.s3)
    init_state = _init_state(config)
    _check_backbone(config, init_state)

    init_ray(config.ray)
    check_room_for_decoding(config.screen, config.ray, min_actors=1)  # its passes' pools
    corpus = _read_id_corpus(config, plans)
    class_names, train_data = corpus.class_names, corpus.training_dataset()
    base = LoopConfig(
        model=config.model,
        class_names=tuple(class_names),
        seed=train.seed,
        label_column=config.corpus.label_column,
        torch_threads=train.torch_threads,
        cache_max_bytes=train.cache_max_bytes,
    )
    probe = build_backbone(config.model.backbone, config.model.preprocess, len(class_names))
    stage_dims, frozen = probe.stage_dims(), train.backbone.epochs == 0
    if not frozen:
        backbone_result = _fit_stage(
            config,
            checkpoints,
            "backbone",
            backbone_loop,
            replace(base, optim=train.backbone, augment=tuple(train.augment), init_state=init_state),
            train_data,
        )
        backbone_state = load_state(backbone_result.checkpoint)["model"]
        backbone_metrics = backbone_result.metrics
    else:
        if init_state is not None:
            load_matching(probe, init_state)
        backbone_state, backbone_metrics = probe.state_dict(), {"epoch": 0}

    training = {"backbone": _plain(backbone_metrics)}
    staged = checkpoints.join(STAGING)  # the old bundle at ``bundle`` serves until this one is complete
    clear_bundle(staged)
    write_file(staged, BACKBONE_FILE, state_dict_bytes(backbone_state))  # the feature pass's actors read it there
    head = frozen and labelled and train.head.epochs > 0
    started = time.perf_counter()
    log.info("feature pass: the backbone over the %d training rows, once", corpus.rows(False).num_rows)
    features = feature_pass(config, train_data, class_names, staged, cached_columns(config.model, head))
    with tempfile.TemporaryDirectory(prefix="rayood-references-") as scratch:
        references = fit_references(config, features, class_names, staged, scratch)
    cache = features.cache().materialize()
    del features  # the bank's region vectors leave the object store; the cache stays for the stages
    training["features"] = {
        "rows": cache.count(),
        "columns": list(cache.columns()),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    log.info(
        "feature pass done in %.0f s: bank, statistics and the cache of %s",
        training["features"]["wall_s"],
        ", ".join(training["features"]["columns"]),
    )
    if head:
        result = _fit_stage(
            config,
            checkpoints,
            "head",
            head_loop,
            replace(base, optim=train.head, feature_dim=probe.fc.in_features),
            cache,
        )
        backbone_state = {**backbone_state, **{f"fc.{k}": v for k, v in load_state(result.checkpoint)["ema"].items()}}
        write_file(staged, BACKBONE_FILE, state_dict_bytes(backbone_state))
        training["head"] = _plain(result.metrics)
    for spec in enabled_detectors(config.model):
        if spec.stage is None:
            continue
        result = _fit_stage(
            config,
            checkpoints,
            spec.family,
            named(spec.stage.loop),
            replace(base, optim=spec.stage.optim(train), **spec.stage.inputs(config, stage_dims)),
            cache if spec.stage.reads_features else train_data,
        )
        write_file(staged, spec.files[0], state_dict_bytes(load_state(result.checkpoint)["ema"]))
        training[spec.family] = _plain(result.metrics)
    written = {posixpath.relpath(info.path, staged.path) for info in staged.list_files()}
    manifest = new_manifest(
        config.model,
        class_names,
        stage_dims,
        probe.fc.in_features,
        written,
        facts=references,
        data=corpus.summary(train),
        training=training,
    )
    write_manifest(staged, manifest)  # weights readable by the scoring actors; calibration still missing
    manifest = _calibrated(config, staged, corpus, manifest)
    write_manifest(staged, manifest)
    promote_bundle(staged, bundle)
    log.info("wrote the model bundle %s to %s", manifest.bundle_id, bundle.uri)
    return bundle.uri


def _calibrated(config: RayoodConfig, staged: Location, corpus: IdCorpus, manifest: Manifest) -> Manifest:
    """Score the held-out rows with the staged bundle, choose the fused scores, write the calibration scores;
    returns the manifest that records them."""
    started = time.perf_counter()
    names = manifest.scores
    calibration, accuracy = _calibration_scores(config, staged.uri, corpus.dataset(calibration=True), names)
    training = {**manifest.training, "calibration": {"wall_s": round(time.perf_counter() - started, 1)}}
    fusion, fusion_record = config.model.fusion, manifest.fusion
    if fusion_record and not fusion.scores and fusion.choose == "synthetic_outliers":
        started = time.perf_counter()
        choice = _choose_fusion(config, staged.uri, corpus, names, calibration)
        fusion_record = FusionRecord(rule=fusion.rule, **choice)
        training["fusion_choice"] = {"wall_s": round(time.perf_counter() - started, 1)}
    rows = int(len(calibration[names[0]]))
    if accuracy is not None:
        log.info("classifier accuracy on the %d held-out ID rows: %.4f", rows, accuracy)
    write_calibration(staged, calibration)
    return manifest.model_copy(
        update={
            "training": training,
            "fusion": fusion_record,
            "heldout_accuracy": None if accuracy is None else round(accuracy, 4),
            "calibration": CalibrationRecord(file=CALIBRATION_FILE, rows=rows),
        }
    )


def _scored(
    config: RayoodConfig, bundle_uri: str, data: ray.data.Dataset, columns: list[str], **actor: object
) -> pa.Table:
    """Rows scored by the screening actor with the bundle's weights (no decision), gathered on the driver."""
    settings = config.screen
    scored = data.map_batches(
        ScoreActor,
        fn_constructor_kwargs={
            "bundle_uri": bundle_uri,
            "s3": config.s3,
            "device": settings.device,
            "cpu_threads": settings.actor_threads,
            **actor,
        },
        **actor_pool(settings, min_actors=1),
    )
    return pa.concat_tables(ray.get(scored.select_columns(columns).to_arrow_refs()))


def _calibration_scores(
    config: RayoodConfig, bundle_uri: str, data: ray.data.Dataset, names: list[str]
) -> tuple[dict[str, np.ndarray], float | None]:
    """The held-out rows' scores, and the classifier's accuracy on them (the bundle's held-out accuracy; None
    without a classifier)."""
    if not config.model.backbone.classifier:
        table = _scored(config, bundle_uri, data, [score_col(n) for n in names])
        return {name: table.column(score_col(name)).to_numpy() for name in names}, None
    label = config.corpus.label_column
    columns = [*(score_col(n) for n in names), PREDICTED_CLASS, label]
    table = _scored(config, bundle_uri, data, columns, passthrough=(label,), predictions=True)
    correct = pc.equal(table.column(PREDICTED_CLASS), table.column(label).cast(pa.string()))
    accuracy = pc.sum(correct.cast(pa.int64())).as_py() / max(1, table.num_rows)
    return {name: table.column(score_col(name)).to_numpy() for name in names}, accuracy


def _choose_fusion(
    config: RayoodConfig, bundle_uri: str, corpus: IdCorpus, names: list[str], calibration: dict[str, np.ndarray]
) -> dict:
    """Which scores ``fused`` combines, chosen on synthetic outliers made from training rows
    (``detectors/synthetic.py``) against half of the held-out ID rows; never on OOD test data."""
    fusion, label = config.model.fusion, config.corpus.label_column
    training = corpus.rows(False).num_rows
    wanted = min(training, 4 * fusion.synthetic_per_kind)
    sample = corpus.dataset(calibration=False).random_sample(min(1.0, wanted / training), seed=config.train.seed)
    table = pa.concat_tables(ray.get(sample.select_columns(["pixels", label]).to_arrow_refs()))
    images = pixels_from_column(table.column("pixels"), config.model.preprocess.native_size)
    labels = np.asarray(table.column(label).cast(pa.string()).to_pylist())
    outliers, kinds = synthetic_outliers(
        images,
        labels,
        fusion.synthetic_per_kind,
        config.train.seed,
        evidence_kinds(config.model.backbone.rotation_head, config.model.backbone.classifier),
    )
    rows = pa.table(
        {
            "id": [f"synthetic/{kind}/{i}" for i, kind in enumerate(kinds)],
            "source": ["synthetic"] * len(kinds),
            "status": [STATUS_OK] * len(kinds),
            "error": pa.nulls(len(kinds), pa.string()),
            "pixels": pixels_to_column(outliers),
        }
    )
    scored = _scored(config, bundle_uri, ray.data.from_arrow(rows), [score_col(n) for n in names])
    scores = {name: scored.column(score_col(name)).to_numpy() for name in names}
    choice = choose_fused_scores(calibration, scores, np.asarray(kinds), names, fusion.rule)
    log.info("fused scores chosen on %d synthetic outliers: %s", len(kinds), choice["scores"])
    return {**choice, "synthetic_outliers": len(kinds)}


def _plain(metrics: dict | None) -> dict:
    """JSON-safe metrics for the manifest: numbers as floats, lists of numbers (``worker_rows``) kept."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return float(value) if isinstance(value, (int, float)) else str(value)

    return {k: plain(v) for k, v in (metrics or {}).items()}
