"""What a screening's decision drops: per source, per true ID class, and which classes the kept OOD rows pose as.

    python benchmarks/dropped_rows.py --report rayood-cifar10/evaluation/report \
        --id-data ../cifar10-lossless/cifar10_val.parquet

Reads a finished report (``jobs/evaluate.py`` writes one under its output; ``jobs/screen.py`` writes one) and its
``is_ood`` flags, and prints JSON:
- ``per_source``: rows and the share flagged in each source file;
- ``id_dropped_by_class``: for the ID file (its ``label`` column joined on ``id``), the share of each true class
  flagged: a filter that removes 5% of ID on average may remove far more of one class;
- ``ood_kept_by_predicted_class``: for every other source, how its unflagged rows spread over the predicted
  classes: what a filtered training set would take in, and as what.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from rayood.report.reader import FinishedReport


def _share(flags: np.ndarray) -> float:
    return round(float(flags.mean()), 4) if len(flags) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="a finished report folder or URI")
    parser.add_argument("--id-data", required=True, help="the ID Parquet file that was screened, with label and id")
    args = parser.parse_args()
    report = FinishedReport.open(args.report)
    rows = report.dataset().to_table(columns=["id", "source", "status", "is_ood", "predicted_class"])
    rows = rows.filter(rows.column("status").to_numpy(zero_copy_only=False) == "ok")
    source = rows.column("source").to_numpy(zero_copy_only=False)
    flagged = rows.column("is_ood").to_numpy(zero_copy_only=False).astype(bool)
    predicted = rows.column("predicted_class").to_numpy(zero_copy_only=False)
    id_name = os.path.basename(args.id_data)
    id_source = next((s for s in set(source) if os.path.basename(s) == id_name), None)
    if id_source is None:
        raise SystemExit(f"no source of {args.report} is {args.id_data}")
    labels = pq.read_table(args.id_data, columns=["id", "label"])
    label_of = dict(zip(labels.column("id").to_pylist(), labels.column("label").to_pylist(), strict=True))
    is_id = source == id_source
    truth = np.array([label_of[i] for i in rows.column("id").to_numpy(zero_copy_only=False)[is_id]])
    result = {
        "report": report.uri,
        "per_source": {
            s: {"rows": int((source == s).sum()), "flagged": _share(flagged[source == s])} for s in sorted(set(source))
        },
        "id_dropped_by_class": {str(c): _share(flagged[is_id][truth == c]) for c in sorted(set(truth.tolist()))},
        "ood_kept_by_predicted_class": {
            s: dict(Counter(str(p) for p in predicted[(source == s) & ~flagged]).most_common())
            for s in sorted(set(source) - {id_source})
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
