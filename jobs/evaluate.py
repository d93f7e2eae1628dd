"""Evaluate a bundle: ``python jobs/evaluate.py --bundle URI --id URI --ood NAME=URI [--ood ...] --output DIR``.

Screens the ID test set and every OOD set with the screening pipeline and writes AUROC, FPR@95TPR,
AUPR-In and AUPR-Out per score and OOD set (metrics.csv, metrics.md), ROC curves and histograms (plots/).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayood.cli import base_parser, run  # noqa: E402
from rayood.evaluate import evaluate_job  # noqa: E402

parser = base_parser(__doc__.splitlines()[0])
parser.add_argument("--bundle", required=True, help="model bundle URI")
parser.add_argument("--id", required=True, help="ID test corpus URI (not the data the bundle was fitted on)")
parser.add_argument("--ood", action="append", required=True, help="NAME=URI of an OOD set (repeatable)")
parser.add_argument("--near", action="append", help="NAME of an --ood set that is near-OOD (others are far)")
parser.add_argument("--output", required=True, help="directory (or s3:// prefix) for the report, tables and plots")

if __name__ == "__main__":
    run(evaluate_job, parser)
