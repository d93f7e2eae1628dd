"""The screening actor: a callable class for ``Dataset.map_batches`` (pyarrow in, pyarrow out).

It loads the bundle once, scores the rows that decoded, and leaves error rows untouched with null
scores, so the row count out equals the row count in. Plain Python: tests call it without Ray.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from rayood.bundle import load_bundle
from rayood.config import DecisionSettings, S3Settings
from rayood.data.decode import STATUS_OK, pixels_from_column
from rayood.detectors.calibrate import ConformalReference
from rayood.screen.scorer import Scorer, pick_device

KEY_COLUMNS = ("id", "source", "status", "error")


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
    ) -> None:
        torch.set_num_threads(max(1, cpu_threads))
        calibrated = decision is not None
        self.bundle = load_bundle(bundle_uri, s3, "cpu", require_calibration=calibrated)
        self.scorer = Scorer(self.bundle, pick_device(device))
        self.decision = decision
        self.passthrough = passthrough
        self.size = self.bundle.settings.preprocess.native_size
        if decision is not None and decision.score not in self.bundle.score_names:
            raise ValueError(f"screen.decision.score {decision.score!r} is not one of {self.bundle.score_names}")
        self.references = (
            {name: ConformalReference(scores) for name, scores in self.bundle.calibration.items()} if calibrated else {}
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pc.equal(batch.column("status"), STATUS_OK).to_numpy(zero_copy_only=False)
        ok = np.asarray(ok, dtype=bool)
        failed = ~ok
        names = self.bundle.score_names
        values = {name: np.full(len(ok), np.nan) for name in names}
        if ok.any():
            pixels = pixels_from_column(batch.column("pixels"), self.size)[ok]
            ids = [i for i, flag in zip(batch.column("id").to_pylist(), ok) if flag]
            for name, scores in self.scorer.score(pixels, ids).items():
                values[name][ok] = scores
        columns = {name: batch.column(name) for name in KEY_COLUMNS}
        for name in names:
            columns[f"score_{name}"] = pa.array(values[name], pa.float64(), mask=failed)
        if self.decision is not None:
            pvalues = {name: self.references[name].pvalues(values[name]) for name in names}
            for name in names:
                columns[f"pvalue_{name}"] = pa.array(pvalues[name], mask=failed)
            decided = pvalues[self.decision.score] <= self.decision.alpha
            columns["is_ood"] = pa.array(decided, pa.bool_(), mask=failed)
        for name in self.passthrough:
            columns[name] = batch.column(name)
        return pa.table(columns)
