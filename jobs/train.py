"""Fit a model bundle on ID data with Ray Train: ``python jobs/train.py --config C [--output BUNDLE_URI]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayood.cli import base_parser, run  # noqa: E402
from rayood.jobs import train_job  # noqa: E402

parser = base_parser(__doc__.splitlines()[0])
parser.add_argument("--output", help="where to write the bundle (directory or s3:// prefix)")

if __name__ == "__main__":
    run(train_job, parser)
