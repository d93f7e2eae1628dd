"""What review.html costs a filter run: seconds and peak memory of ``filter_report`` with and without the page, on
a report of ``--rows`` rows screened from a Parquet corpus of small PNGs.

    python benchmarks/review_page_cost.py [--rows 200000] [--gallery 24]

Builds the corpus (8 x 8 PNGs in an ``image`` column, a ``url`` column over 1,000 domains) and a finished report
of it (two row files, 1% error rows, a score whose top 5% come out rejected at Q = 0.1), then runs each filter
in a fresh process: the page with ``--by url:domain`` and four galleries, and ``--no-review``. Peak memory is the
growth of VmHWM past the imports; both run in one invocation so their ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from process_memory import status_kib  # noqa: E402

from rayood.config import DecisionSettings  # noqa: E402
from rayood.detectors.calibrate import ConformalReference  # noqa: E402
from rayood.report.summary import summarize  # noqa: E402
from rayood.report.target import ROWS, SUCCESS, SUMMARY  # noqa: E402

CHUNK = 50_000


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    sink = io.BytesIO()
    Image.fromarray(pixels).save(sink, format="PNG")
    return sink.getvalue()


def build(root: Path, rows: int) -> Path:
    """The corpus and a finished report of it; returns the report's directory."""
    corpus, report = root / "corpus.parquet", root / "report"
    (report / ROWS).mkdir(parents=True)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal(5_000)
    reference = ConformalReference(calibration)
    images = [png(i) for i in range(256)]  # distinct content matters little; distinct ids do
    tables = []
    with pq.ParquetWriter(corpus, pa.schema([("id", pa.string()), ("image", pa.binary())])) as writer:
        for start in range(0, rows, CHUNK):
            ids = [f"img-{i:09d}" for i in range(start, min(rows, start + CHUNK))]
            writer.write_table(
                pa.table({"id": ids, "image": [images[i % 256] for i in range(start, start + len(ids))]})
            )
            n = len(ids)
            ok = rng.random(n) > 0.01
            scores = np.where(rng.random(n) < 0.05, rng.normal(4.0, 1.0, n), rng.standard_normal(n))
            scores[~ok] = np.nan
            pvalues = reference.pvalues(scores)
            tables.append(
                pa.table(
                    {
                        "id": ids,
                        "source": [str(corpus)] * n,
                        "status": np.where(ok, "ok", "error").tolist(),
                        "error": [None if good else "not an image: cannot identify image file" for good in ok],
                        "score_knn": pa.array(scores, from_pandas=True),
                        "pvalue_knn": pa.array(pvalues, from_pandas=True),
                        "is_ood": pa.array([bool(p <= 0.05) if good else None for p, good in zip(pvalues, ok)]),
                        "url": [f"https://site-{rng.integers(1000)}.example/{i}.png" for i in ids],
                    }
                )
            )
    table = pa.concat_tables(tables)
    half = rows // 2
    pq.write_table(table.slice(0, half), report / ROWS / "part-0.parquet")
    pq.write_table(table.slice(half), report / ROWS / "part-1.parquet")
    summary = summarize(
        table,
        score_names=["knn"],
        calibration={"knn": calibration},
        decision=DecisionSettings(score="knn", alpha=0.05),
        expected_rows=rows,
        elapsed_s=1.0,
        bundle_id="benchmark",
    )
    (report / SUMMARY).write_text(json.dumps(summary))
    (report / SUCCESS).write_bytes(b"")
    return report


def child(report: str, output: str, review: bool, gallery: int) -> None:
    from rayood.decide.filter import filter_report
    from rayood.pages.review_settings import GroupBy, ReviewSettings
    from rayood.report.reader import FinishedReport
    from rayood.storage import resolve

    base = status_kib("VmHWM")
    started = time.perf_counter()
    settings = ReviewSettings(by=GroupBy.parse("url:domain"), gallery=gallery) if review else None
    result = filter_report(FinishedReport.open(report), 0.1, resolve(output), review=settings)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "peak_growth_mib": round((status_kib("VmHWM") - base) / 1024, 1),
                "rejected": result["rejected"],
                "kept": result["kept"],
                "errors": result["errors"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--gallery", type=int, default=24)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2] == "review", args.gallery)
        return
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        report = build(root, args.rows)
        results = {}
        for mode in ("review", "no-review", "review", "no-review"):  # each twice: the first of each warms the cache
            out = root / f"out-{mode}-{len(results)}"
            run = subprocess.run(
                [sys.executable, __file__, "--gallery", str(args.gallery), "--child", str(report), str(out), mode],
                capture_output=True,
                text=True,
                check=True,
            )
            results.setdefault(mode, []).append(json.loads(run.stdout.strip().splitlines()[-1]))
            if mode == "review":
                results.setdefault("page_kib", (out / "review.html").stat().st_size // 1024)
        print(json.dumps({"rows": args.rows, "gallery": args.gallery, **results}, indent=2))


if __name__ == "__main__":
    main()
