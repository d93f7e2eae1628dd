"""The OOD benchmark: detection metrics (AUROC, FPR@95TPR, AUPR), the per-set table and its plots."""
