"""Keep or reject the images of a finished report with Benjamini-Hochberg.

    python jobs/filter.py --report URI --fdr Q --output DIR [--score NAME]

Writes DIR/keep.parquet, DIR/reject.parquet (expected fraction of ID images among the rejected <= Q),
DIR/errors.parquet (rows that could not be scored), DIR/review.html (a page to look at before deleting anything)
and DIR/filter.json. See README, "Filtering a corpus".
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayood.cli import base_parser, run  # noqa: E402
from rayood.jobs import at_least, fdr_level, filter_job, group_by  # noqa: E402
from rayood.pages.review_settings import MAX_GALLERY, REDUCTIONS  # noqa: E402

parser = base_parser(__doc__.splitlines()[0])
parser.add_argument("--report", required=True, help="a finished screening report (directory or s3:// prefix)")
parser.add_argument("--fdr", required=True, type=fdr_level, help="target false discovery rate Q, in (0, 1)")
parser.add_argument("--output", required=True, help="directory or s3:// prefix for the lists")
parser.add_argument("--score", help="score to decide on (default: the report's decision score)")
parser.add_argument(
    "--write-shards",
    metavar="DIR",
    help="also write the kept samples, read back from the screened corpus, as WebDataset shards DIR/kept-*.tar",
)
parser.add_argument(
    "--by",
    type=group_by,
    metavar="COLUMN[:REDUCTION]",
    help="review.html counts rejections per group of this report column (e.g. source, or a passthrough url "
    f"reduced to its domain: url:domain; id:shard for WebDataset); reductions: {', '.join(sorted(REDUCTIONS))}",
)
parser.add_argument(
    "--review-size",
    type=at_least(0),
    default=24,
    metavar="N",
    help=f"images in each of review.html's four galleries (default 24, at most {MAX_GALLERY})",
)
parser.add_argument("--no-review", action="store_true", help="write no review.html")

if __name__ == "__main__":
    run(filter_job, parser)
