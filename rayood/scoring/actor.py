"""The screening actor: a callable class for ``Dataset.map_batches`` (pyarrow in, pyarrow out).

It loads the bundle once, scores the rows that decoded, and leaves error rows untouched with null
scores, so the row count out equals the row count in. Plain Python: tests call it without Ray.
With a decision (screening, not calibration) it adds p-values, ``is_ood`` and ``score_fused``; with
``embedding`` the penultimate features as a fixed-size float16 list (half the bytes; audits only need
distances between them); with ``predictions`` the classifier's ID class as ``predicted_class``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rayood.bundle import BundleError, fused_score
from rayood.bundle_models import load_bundle
from rayood.config import DecisionSettings, S3Settings
from rayood.data.decode import pixels_from_column
from rayood.detectors.calibrate import ConformalReference
from rayood.detectors.fusion import FUSED
from rayood.report.columns import (
    EMBEDDING,
    IS_OOD,
    KEY_COLUMNS,
    PREDICTED_CLASS,
    STATUS,
    STATUS_OK,
    pvalue_col,
    score_col,
)
from rayood.scoring.scorer import Scorer, pick_device


class ScoreActor:
    def __init__(
        self,
        *,
        bundle_uri: str,
        s3: S3Settings,
        device: str = "auto",
        decision: DecisionSettings | None = None,
        passthrough: tuple[str, ...] = (),
        cpu_threads: int = 1,
        embedding: bool = False,
        predictions: bool = False,
        bundle_id: str | None = None,
    ) -> None:
        """``bundle_id``: the bundle the run was planned with; an actor (re)started after the bundle at
        ``bundle_uri`` was replaced refuses to score with another model than the summary will name."""
        torch.set_num_threads(max(1, cpu_threads))
        calibrated = decision is not None
        self.bundle = load_bundle(bundle_uri, s3, "cpu", require_calibration=calibrated)
        found = self.bundle.bundle_id
        if bundle_id is not None and found != bundle_id:
            raise BundleError(
                f"the bundle at {bundle_uri} is now {found}, but this run screens with {bundle_id}: it was replaced "
                "while the run was going (train --overwrite?); run again to screen with the new bundle"
            )
        self.scorer = Scorer(self.bundle, pick_device(device))
        self.decision = decision
        self.passthrough = passthrough
        self.embedding = embedding
        self.class_names = list(self.bundle.manifest.class_names) if predictions else None
        self.size = self.bundle.settings.preprocess.native_size
        self.names = self.bundle.report_scores if calibrated else self.bundle.score_names
        if decision is not None and decision.score not in self.names:
            raise ValueError(f"screen.decision.score {decision.score!r} is not one of {self.names}")
        self.references = (
            {name: ConformalReference(scores) for name, scores in self.bundle.calibration.items()} if calibrated else {}
        )
        self.fusion = fused_score(self.bundle.manifest, self.bundle.calibration) if calibrated else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pc.equal(batch.column(STATUS), STATUS_OK).to_numpy(zero_copy_only=False)
        ok = np.asarray(ok, dtype=bool)
        failed = ~ok
        names = self.names
        values = {name: np.full(len(ok), np.nan) for name in self.bundle.score_names}
        embedding, predicted = None, np.zeros(len(ok), dtype=np.int64)
        if ok.any():
            pixels = pixels_from_column(batch.column("pixels"), self.size)[ok]
            ids = [i for i, flag in zip(batch.column("id").to_pylist(), ok) if flag]
            scored = self.scorer.score(pixels, ids)
            for name, scores in scored.scores.items():
                values[name][ok] = scores
            embedding = scored.embedding
            predicted[ok] = scored.predicted
        if self.fusion is not None:
            values[FUSED] = self.fusion.statistic(values)
        columns = {name: batch.column(name) for name in KEY_COLUMNS}
        for name in names:
            columns[score_col(name)] = pa.array(values[name], pa.float64(), mask=failed)
        if self.decision is not None:
            pvalues = {name: self.references[name].pvalues(values[name]) for name in names}
            for name in names:
                columns[pvalue_col(name)] = pa.array(pvalues[name], mask=failed)
            decided = pvalues[self.decision.score] <= self.decision.alpha
            columns[IS_OOD] = pa.array(decided, pa.bool_(), mask=failed)
        if self.embedding:
            columns[EMBEDDING] = self._embedding_column(embedding, ok)
        if self.class_names is not None:
            columns[PREDICTED_CLASS] = pa.array([self.class_names[i] for i in predicted], pa.string(), mask=failed)
        for name in self.passthrough:
            columns[name] = batch.column(name)
        return pa.table(columns)

    def _embedding_column(self, embedding: np.ndarray | None, ok: np.ndarray) -> pa.Array:
        dim = self.bundle.manifest.feature_dim
        full = np.zeros((len(ok), dim), dtype=np.float16)
        if embedding is not None:
            full[ok] = embedding
        values = pa.array(full.reshape(-1), pa.float16())
        return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~ok))
