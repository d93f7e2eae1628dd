"""The review page of a filter run and the pages' shared parts (issue 31): opened in headless Chromium, which
must decode every thumbnail and make no request beyond the file; data shown as text, never as markup."""

import json
import re
from html import escape
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from rayood.config import CorpusSettings, DecisionSettings, S3Settings
from rayood.decide.filter import filter_report
from rayood.pages import thumbnails as thumbnails_module
from rayood.pages.html import gallery, table
from rayood.pages.report_page import ReportPageRows, write_report_page
from rayood.pages.review import MAX_GROUPS, OTHER_GROUPS, GroupCounts
from rayood.pages.review_settings import GroupBy, ReviewSettings
from rayood.pages.selection import Extremes, RowSample
from rayood.pages.thumbnails import recorded_limits
from rayood.report.reader import FinishedReport
from rayood.report.summary import summarize
from rayood.report.target import PAGE
from rayood.storage import resolve
from tests.browser import assert_self_contained
from tests.images import encode, gradient
from tests.test_fdr import write_report
from tests.test_jobs import run_job

# file names and group values a scraped corpus can carry: each must show as the text it is
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "a&amp;b", "<b>bold</b>", "$x^2$"]


def hostile_name(i: int) -> str:
    """A file name from the hostile corpus (no '/', which a file name cannot hold)."""
    return f"{HOSTILE[i % len(HOSTILE)].replace('/', '|')}-{i}.png" if i % 3 == 0 else f"img-{i}.png"


def hostile_corpus(directory: Path, rows: int) -> list[str]:
    """``rows`` small PNGs (a colour per row) named from the hostile corpus; their ids as a screening run gives them."""
    directory.mkdir(parents=True)
    ids = []
    for i in range(rows):
        pixels = gradient((24, 24)) // 2 + np.array([i * 37 % 128, i * 59 % 128, i * 83 % 128], dtype=np.uint8)
        (directory / hostile_name(i)).write_bytes(encode(Image.fromarray(pixels.astype(np.uint8)), "PNG"))
        ids.append(str(directory / hostile_name(i)))
    return ids


def test_review_page_opens_offline_shows_hostile_names_as_text_and_reads_only_the_shown_originals(
    chromium, tmp_path, monkeypatch
):
    ids = hostile_corpus(tmp_path / "corpus", 48)
    groups = [HOSTILE[i % len(HOSTILE)] for i in range(48)]
    write_report(tmp_path / "report", ids=ids, source=str(tmp_path / "corpus"), extra={"origin": groups})
    read: list[str] = []
    real = thumbnails_module.iter_originals

    def counting(source, wanted, corpus, s3):
        for row_id, files in real(source, wanted, corpus, s3):
            read.append(row_id)
            yield row_id, files

    monkeypatch.setattr(thumbnails_module, "iter_originals", counting)
    settings = ReviewSettings(by=GroupBy.parse("origin"), gallery=5)
    result = filter_report(
        FinishedReport.open(str(tmp_path / "report")), 0.1, resolve(str(tmp_path / "out")), review=settings
    )
    html = (tmp_path / "out" / "review.html").read_text()
    assert result["files"]["review"] == "review.html"
    assert "<script" not in html.lower() and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    shown = html.count("<figure>")
    assert 0 < result["rejected"] and shown == len(set(read)) == len(read)  # each shown original read once, no other
    text = assert_self_contained(tmp_path / "out" / "review.html", thumbnails=shown)
    for name in HOSTILE:
        assert name in text  # the group table and the ids show them as written
    kept = pq.read_table(tmp_path / "out" / "keep.parquet").column("id").to_pylist()
    rejected = pq.read_table(tmp_path / "out" / "reject.parquet").column("id").to_pylist()
    assert f"Kept {len(kept)}, rejected {len(rejected)}, not scored 2 of 48 rows" in text


def test_the_review_counts_rejections_per_group_and_reduces_urls_to_domains(tmp_path):
    ids = [f"img/{i}" for i in range(60)]
    urls = [
        f"https://{['a.example', 'B.example', 'c.example'][i % 3]}/{i}.jpg" if i % 10 else "not a url"
        for i in range(60)
    ]
    write_report(tmp_path / "report", ids=ids, extra={"url": urls})
    settings = ReviewSettings(by=GroupBy.parse("url:domain"), gallery=0)
    result = filter_report(
        FinishedReport.open(str(tmp_path / "report")), 0.2, resolve(str(tmp_path / "out")), review=settings
    )
    html = (tmp_path / "out" / "review.html").read_text()
    rejected = set(pq.read_table(tmp_path / "out" / "reject.parquet").column("id").to_pylist())
    domain = {i: (u.split("/")[2].lower() if "://" in u else "(no domain)") for i, u in zip(ids, urls)}
    for group in ["a.example", "b.example", "c.example", "(no domain)"]:
        members = [i for i in ids if domain[i] == group]
        expected = f"<tr><td>{group}</td><td>{len(members)}</td><td>{sum(i in rejected for i in members)}</td>"
        assert expected in html
    assert result["rejected"] == len(rejected) > 0 and "<figure>" not in html  # gallery 0: no thumbnails read


def test_missing_originals_are_placeholders_that_say_why_and_an_s3_corpus_renders_its_thumbnails(
    chromium, s3_server, tmp_path
):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="pages")
    names = [hostile_name(i) for i in range(40)]
    for i, name in enumerate(names):
        image = Image.fromarray((gradient((20, 20)) // 3 + i).astype(np.uint8))
        client.put_object(Bucket="pages", Key=f"corpus/{name}", Body=encode(image, "PNG"))
    ids = [f"s3://pages/corpus/{name}" for name in names]
    table = write_report(tmp_path / "report", ids=ids, source="s3://pages/corpus")
    s3 = S3Settings(endpoint_url=s3_server)
    report = FinishedReport.open(str(tmp_path / "report"))
    most_ood = int(np.nanargmax(table.column("score_mfsim").to_numpy(zero_copy_only=False)))
    client.delete_object(Bucket="pages", Key=f"corpus/{names[most_ood]}")  # gone since the screening
    filter_report(report, 0.1, resolve(str(tmp_path / "out")), s3=s3, review=ReviewSettings(gallery=4))
    html = (tmp_path / "out" / "review.html").read_text()
    figures = html.count("<figure>")
    assert html.count("no image: the original is no longer in its source") == 1
    text = assert_self_contained(tmp_path / "out" / "review.html", thumbnails=figures - 1)
    assert "no image: the original is no longer in its source" in text


def test_review_settings_are_checked_before_anything_is_written(tmp_path):
    write_report(tmp_path / "report")
    out = tmp_path / "out"
    for args, message in [
        (["--review-size", "201"], "--review-size must be between 0 and 200"),
        (["--by", "nosuch"], "--by nosuch: the report"),
        (["--by", "url:host"], "unknown reduction 'host'"),
    ]:
        result = run_job("filter.py", "--report", str(tmp_path / "report"), "--fdr", "0.1", "--output", str(out), *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert not out.exists()
    result = run_job(
        "filter.py", "--report", str(tmp_path / "report"), "--fdr", "0.1", "--output", str(out), "--no-review"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / "review.html").exists() and "review" not in json.loads((out / "filter.json").read_text())["files"]


def test_extremes_and_the_row_sample_choose_from_the_whole_stream_in_batches():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(5_000)
    values[rng.choice(5_000, 50, replace=False)] = np.nan
    highest, lowest, sample = Extremes(7, highest=True), Extremes(7, highest=False), RowSample(300, seed=1)
    for start in range(0, 5_000, 777):
        batch = pa.table({"i": np.arange(start, min(start + 777, 5_000)), "v": values[start : start + 777]})
        highest.add(values[start : start + 777], batch)
        lowest.add(values[start : start + 777], batch)
        sample.add(batch)
    finite = np.sort(values[~np.isnan(values)])
    assert [row["v"] for row in highest.rows] == finite[::-1][:7].tolist()
    assert [row["v"] for row in lowest.rows] == finite[:7].tolist()
    positions = np.array([row["i"] for row in sample.rows])
    assert len(set(positions)) == 300 and positions.max() > 4_000 and positions.min() < 1_000  # late rows too


def test_group_counts_stay_bounded_and_pool_the_rest():
    counts = GroupCounts()
    labels = pa.array([f"g{i}" for i in range(MAX_GROUPS + 10)])
    counts.add(labels, np.ones(len(labels), dtype=bool), np.zeros(len(labels), dtype=bool))
    assert len(counts.counts) == MAX_GROUPS + 1 and counts.counts[OTHER_GROUPS] == [10, 10, 0]


def test_page_parts_escape_every_value():
    hostile = HOSTILE[0]
    html = table([hostile], [[hostile]]) + gallery(
        [{"id": hostile, "thumbnail": None, "missing": hostile}], lambda row: [row["id"]], "none"
    )
    assert "<script>" not in html and html.count("&lt;script&gt;") == 4
    assert re.search(r"<img", html) is None


def test_the_screening_page_shows_the_summary_histograms_and_the_most_ood_images(chromium, tmp_path):
    ids = hostile_corpus(tmp_path / "corpus", 40)
    write_report(tmp_path / "report", ids=ids, source=str(tmp_path / "corpus"))
    report = FinishedReport.open(str(tmp_path / "report"))
    rows = ReportPageRows(["mfsim", "knn"], "mfsim", thumbnails=6)
    calibration = {"mfsim": np.random.default_rng(0).standard_normal(500), "knn": np.zeros(3)}

    def batches():  # one pass for the page and the summary, as screening makes it
        for batch in report.dataset().to_batches(batch_size=7):
            rows.add(batch)
            yield batch

    summary = summarize(
        batches(),
        score_names=["mfsim", "knn"],
        calibration=calibration,
        samples=rows.samples,
        decision=DecisionSettings(score="mfsim", alpha=0.05),
        expected_rows=40,
        elapsed_s=1.0,
        bundle_id="simulated",
    )
    assert rows.samples["mfsim"].count == summary["ok"] == summary["scores"]["mfsim"]["count"]  # drawn from its sample
    write_report_page(
        rows,
        summary,
        calibration,
        resolve(str(tmp_path / "report")),
        CorpusSettings(),
        None,
        recorded_limits(report.summary),
    )
    table = report.dataset().to_table().to_pandas()
    top = table[table.status == "ok"].nlargest(6, "score_mfsim")
    html = (tmp_path / "report" / PAGE).read_text()
    captions = [html.find(f"<figcaption>{escape(i)}<br>") for i in top.id]
    assert html.count("<figure>") == 6 and -1 not in captions and captions == sorted(captions)  # most OOD first
    text = assert_self_contained(tmp_path / "report" / PAGE, thumbnails=6)
    assert f"{summary['decision']['flagged']} of {summary['ok']} scored rows flagged" in text
    assert "histogram of score_knn" in html and "not an image" in text  # every score drawn; error kinds counted
