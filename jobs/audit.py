"""Audit a corpus for drift against a reference.

    python jobs/audit.py --bundle URI --reference URI --target URI [--by COLUMN] --output DIR

--reference and --target are corpora (screened here, with embeddings) or finished reports (reused).
Writes OUTPUT/audit.json and OUTPUT/audit.html. See README, "Auditing a corpus for drift".
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayood.audit.two_sample import MMD_MAX_ROWS, MMD_PERMUTATIONS  # noqa: E402
from rayood.cli import base_parser, run  # noqa: E402
from rayood.jobs import at_least, audit_job, fdr_level  # noqa: E402

parser = base_parser(__doc__.splitlines()[0])
parser.add_argument("--bundle", required=True, help="the model bundle both corpora are (or were) screened with")
parser.add_argument("--reference", required=True, help="reference corpus URI, or a finished report of it")
parser.add_argument("--target", required=True, help="corpus URI to audit, or a finished report of it")
parser.add_argument("--output", required=True, help="directory or s3:// prefix for the audit (and new reports)")
parser.add_argument("--by", help="a column of the target (Parquet corpus or report) to audit group by group")
parser.add_argument(
    "--permutations", type=at_least(1), default=MMD_PERMUTATIONS, help="MMD permutations (default %(default)s)"
)
parser.add_argument(
    "--mmd-max-rows",
    type=at_least(2),
    default=MMD_MAX_ROWS,
    help="embeddings per side in the MMD, subsampled beyond (memory 2 x (2 x this)^2 x 8 bytes; default %(default)s)",
)
parser.add_argument(
    "--level",
    type=fdr_level,
    default=0.05,
    help="family-wise error level of the drift verdict (Holm; default %(default)s)",
)
parser.add_argument("--seed", type=int, default=0, help="seed of the MMD subsample and permutations")
parser.add_argument(
    "--thumbnails", type=at_least(0), default=24, help="most OOD target images shown (default %(default)s)"
)

if __name__ == "__main__":
    run(audit_job, parser)
