"""OOD detection metrics with scikit-learn. Scores: higher = more OOD.

AUROC treats OOD as the positive class (0.5 = chance; an inverted score gives < 0.5). FPR@95TPR takes
ID as positive, as OpenOOD does: the fraction of OOD images accepted when 95% of ID images are accepted.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _labels(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([id_scores, ood_scores]).astype(np.float64)
    is_ood = np.concatenate([np.zeros(len(id_scores)), np.ones(len(ood_scores))])
    return scores, is_ood


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    scores, is_ood = _labels(id_scores, ood_scores)
    return float(roc_auc_score(is_ood, scores))


def fpr_at_95_tpr(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    scores, is_ood = _labels(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(1 - is_ood, -scores)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


def aupr_in(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    scores, is_ood = _labels(id_scores, ood_scores)
    return float(average_precision_score(1 - is_ood, -scores))


def aupr_out(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    scores, is_ood = _labels(id_scores, ood_scores)
    return float(average_precision_score(is_ood, scores))


def detection_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    return {
        "auroc": auroc(id_scores, ood_scores),
        "fpr_at_95_tpr": fpr_at_95_tpr(id_scores, ood_scores),
        "aupr_in": aupr_in(id_scores, ood_scores),
        "aupr_out": aupr_out(id_scores, ood_scores),
    }
