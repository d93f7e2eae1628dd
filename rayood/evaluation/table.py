"""The OOD benchmark table: every score against every OOD set, with near/far averages.

Layout follows OpenOOD's tables so that numbers can stand beside the papers': one row per score, one
column per OOD set and metric, then the near-OOD and far-OOD means (the unweighted mean over the sets of
that kind, as OpenOOD averages datasets, not images).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from rayood.evaluation.metrics import detection_metrics

METRICS = ("auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out")
METRIC_LABELS = {"auroc": "AUROC", "fpr_at_95_tpr": "FPR@95TPR", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
KINDS = ("near", "far")


@dataclass(frozen=True)
class OODSet:
    name: str
    kind: str  # "near" or "far"


def evaluate_scores(
    id_scores: dict[str, np.ndarray], ood_scores: dict[str, dict[str, np.ndarray]], sets: list[OODSet]
) -> list[dict]:
    """Rows of (score, ood_set, kind, metrics...), then the near/far means per score as ``ood_set`` =
    ``near_mean`` / ``far_mean`` when that kind has any set."""
    rows = []
    for score, id_values in id_scores.items():
        per_set = []
        for ood in sets:
            metrics = detection_metrics(id_values, ood_scores[ood.name][score])
            per_set.append({"score": score, "ood_set": ood.name, "kind": ood.kind, **metrics})
        rows.extend(per_set)
        for kind in KINDS:
            members = [row for row in per_set if row["kind"] == kind]
            if members:
                means = {metric: float(np.mean([row[metric] for row in members])) for metric in METRICS}
                rows.append({"score": score, "ood_set": f"{kind}_mean", "kind": kind, **means})
    return rows


def to_csv(rows: list[dict]) -> str:
    sink = io.StringIO()
    writer = csv.DictWriter(sink, fieldnames=["score", "ood_set", "kind", *METRICS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.6f}" if isinstance(value, float) else value) for key, value in row.items()})
    return sink.getvalue()


def to_markdown(rows: list[dict], sets: list[OODSet], metrics: tuple[str, ...] = ("auroc", "fpr_at_95_tpr")) -> str:
    """One table per metric, in percent like OpenOOD; the best score per column in bold."""
    columns = []
    for kind in KINDS:
        kind_sets = [s.name for s in sets if s.kind == kind]
        columns += kind_sets + ([f"{kind}_mean"] if kind_sets else [])
    by_key = {(row["score"], row["ood_set"]): row for row in rows}
    scores = list(dict.fromkeys(row["score"] for row in rows))
    headers = [name.replace("_mean", " (mean)") for name in columns]
    tables = []
    for metric in metrics:
        lower_is_better = metric == "fpr_at_95_tpr"
        best = {
            column: (min if lower_is_better else max)(by_key[(score, column)][metric] for score in scores)
            for column in columns
        }
        lines = [
            f"**{METRIC_LABELS[metric]}** (%, {'lower' if lower_is_better else 'higher'} is better)",
            "",
            "| score | " + " | ".join(headers) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        for score in scores:
            cells = []
            for column in columns:
                value = by_key[(score, column)][metric]
                text = f"{100 * value:.2f}"
                cells.append(f"**{text}**" if value == best[column] else text)
            lines.append(f"| {score} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"
