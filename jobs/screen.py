"""Screen a corpus for OOD images.

    python jobs/screen.py [--config C] [--input URI ...] [--output URI] [--bundle URI]

With no arguments it runs the embedded demo: builds the demo corpus, fits a bundle if none exists, screens.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayood.cli import base_parser, run  # noqa: E402
from rayood.jobs import fdr_level, screen_job  # noqa: E402

parser = base_parser(__doc__.splitlines()[0])
parser.add_argument("--input", action="append", help="corpus URI (repeatable): image dir, Parquet file or dir")
parser.add_argument("--output", help="report URI (directory or s3:// prefix)")
parser.add_argument("--bundle", help="model bundle URI")
parser.add_argument(
    "--filter-fdr",
    type=fdr_level,
    metavar="Q",
    help="also split the fresh report with Benjamini-Hochberg at FDR Q into OUTPUT/filter/",
)

if __name__ == "__main__":
    run(screen_job, parser)
