"""Drift audit: the level and power of its tests by simulation, the HTML page, and jobs/audit.py end to end
on real screenings of two small corpora."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scipy.stats import binomtest

from rayood.audit.compare import audit, groups_of, values_of
from rayood.audit.report_html import histogram_uri, render_html
from rayood.audit.two_sample import flagged_test, ks_test, mmd_test
from rayood.audit.verdict import drift_verdict, holm_adjusted, verdict_line
from rayood.config import CorpusSettings, DecisionSettings
from rayood.detectors.calibrate import ConformalReference
from rayood.pages.thumbnails import attach_thumbnails, most_ood
from rayood.report.reader import FinishedReport
from rayood.report.summary import summarize
from rayood.report.target import ROWS, SUCCESS, SUMMARY
from tests.conftest import tiny_config
from tests.test_jobs import run_job

DRAWS = 200
LEVEL = 0.05
# A rejection rate over DRAWS independent draws is binomial: 3 standard errors around the nominal level.
# A shifted sample must be rejected significantly more often than that.
TOLERANCE = 3 * np.sqrt(LEVEL * (1 - LEVEL) / DRAWS)


def rejection_rate(test, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([test(rng, draw) < LEVEL for draw in range(DRAWS)]))


def test_ks_holds_its_level_and_rejects_a_shift():
    same = rejection_rate(lambda rng, _: ks_test(rng.standard_normal(300), rng.standard_normal(300))["pvalue"], 1)
    shifted = rejection_rate(lambda rng, _: ks_test(rng.standard_normal(300), rng.normal(0.3, 1, 300))["pvalue"], 2)
    print(f"KS (300 vs 300): rejection rate {same:.3f} on ID vs ID, {shifted:.3f} on a 0.3 sd shift")
    assert abs(same - LEVEL) <= TOLERANCE
    assert shifted > LEVEL + TOLERANCE


def test_mmd_holds_its_level_and_rejects_a_shift():
    def draw(shift):
        def test(rng, seed):
            reference, target = rng.standard_normal((120, 16)), rng.standard_normal((120, 16))
            target[:, 0] += shift
            return mmd_test(reference, target, permutations=200, seed=seed)["pvalue"]

        return test

    same = rejection_rate(draw(0.0), 3)
    shifted = rejection_rate(draw(0.6), 4)
    print(
        f"MMD (120 vs 120, 16-d, 200 permutations): rejection rate {same:.3f} on ID vs ID, "
        f"{shifted:.3f} on a 0.6 sd shift in one dimension"
    )
    assert abs(same - LEVEL) <= TOLERANCE
    assert shifted > LEVEL + TOLERANCE


def test_mmd_subsamples_to_its_cap():
    rng = np.random.default_rng(0)
    result = mmd_test(rng.standard_normal((500, 4)), rng.standard_normal((90, 4)), permutations=10, max_rows=50)
    assert result["reference_rows"] == result["target_rows"] == 50 and result["permutations"] == 10
    assert mmd_test(rng.standard_normal((1, 4)), rng.standard_normal((9, 4)))["skipped"]


def test_flag_rate_test_holds_its_level_where_a_binomial_test_does_not():
    """1000 target images against 200 calibration scores: the calibration set's own randomness dominates the
    spread of the flag rate, which the beta-binomial law accounts for and a plain binomial test ignores."""
    exact, binomial = [], []
    rng = np.random.default_rng(5)
    for _ in range(DRAWS):
        pvalues = ConformalReference(rng.standard_normal(200)).pvalues(rng.standard_normal(1000))
        result = flagged_test(pvalues, LEVEL, 200)
        exact.append(result["pvalue"] < LEVEL)
        binomial.append(binomtest(result["flagged"], 1000, LEVEL, alternative="greater").pvalue < LEVEL)
    print(
        f"flag rate (1000 vs 200 calibration): rejection rate {np.mean(exact):.3f} beta-binomial, "
        f"{np.mean(binomial):.3f} binomial"
    )
    assert np.mean(exact) <= LEVEL + TOLERANCE
    assert np.mean(binomial) > LEVEL + TOLERANCE
    with_ood = ConformalReference(rng.standard_normal(200)).pvalues(
        np.concatenate([rng.standard_normal(800), rng.normal(3, 1, 200)])
    )
    assert flagged_test(with_ood, LEVEL, 200)["pvalue"] < 1e-3


class Page(HTMLParser):
    """Collects image sources, links, and the cells of every table row."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.rows, self.tables = [], [], [], 0
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "table":
            self.tables += 1
        if tag == "tr":
            self.rows.append((self.tables, []))
        if tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1][1].append(self._cell)
            self._cell = None


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    return parser


def assert_self_contained(page: Page, thumbnails: int, histograms: int):
    assert len(page.images) == thumbnails + histograms and not page.links
    for source in page.images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def write_report(directory, corpus, shift: float, groups: list[str], seed: int, embedding: bool = True) -> None:
    """A finished report in the real layout (summary from the real summary code) of the Parquet ``corpus``:
    one score, 8-d float16 embeddings shifted by ``shift``, a ``group`` column, and one error row."""
    rng = np.random.default_rng(seed)
    ids = pq.read_table(corpus, columns=["id"]).column("id").to_pylist()
    n = len(ids)
    calibration = {"mfsim": rng.standard_normal(300)}
    scores = rng.normal(shift, 1.0, n)
    scores[-1] = np.nan
    ok = ~np.isnan(scores)
    vectors = (rng.standard_normal((n, 8)) + shift).astype(np.float16)
    table = pa.table(
        {
            "id": ids,
            "source": [str(corpus)] * n,
            "status": np.where(ok, "ok", "error").tolist(),
            "error": [None if good else "not an image: test" for good in ok],
            "score_mfsim": pa.array(scores, from_pandas=True),
            "pvalue_mfsim": pa.array(ConformalReference(calibration["mfsim"]).pvalues(scores), from_pandas=True),
            "is_ood": pa.array(ConformalReference(calibration["mfsim"]).pvalues(scores) <= 0.05, mask=~ok),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1), pa.float16()), 8, mask=pa.array(~ok)
            ),
            "group": [groups[i % len(groups)] for i in range(n)],
        }
    )
    if not embedding:
        table = table.drop_columns(["embedding"])
    (directory / ROWS).mkdir(parents=True)
    pq.write_table(table, directory / ROWS / "part-0.parquet")
    summary = summarize(
        table,
        score_names=["mfsim"],
        calibration=calibration,
        decision=DecisionSettings(score="mfsim"),
        expected_rows=n,
        elapsed_s=1.0,
        bundle_id="simulated",
    )
    (directory / SUMMARY).write_text(json.dumps(summary))
    (directory / SUCCESS).write_bytes(b"")


def corpus_and_reference(demo_data, tmp_path, rows: int):
    """A Parquet corpus of the first ``rows`` demo images and a reference report of it written by hand."""
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pq.read_table(demo_data[1]).slice(0, rows), corpus)
    write_report(tmp_path / "reference", corpus, 0.0, ["all"], seed=1)
    return corpus


def audit_by_hand(tmp_path, corpus, name: str, shift: float, groups: list[str], seed: int):
    """Write the target report ``name`` and audit it by group against the reference."""
    write_report(tmp_path / name, corpus, shift, groups, seed=seed)
    reference, target = FinishedReport.open(str(tmp_path / "reference")), FinishedReport.open(str(tmp_path / name))
    return audit(reference, target, calibration_rows={"mfsim": 300}, by="group")


def test_html_page_from_reports_written_by_hand(demo_data, tmp_path):
    """The page without a cluster: both reports given, thumbnails read back from the Parquet corpus."""
    corpus = corpus_and_reference(demo_data, tmp_path, 90)
    result, reference_rows, target_rows = audit_by_hand(tmp_path, corpus, "target", 1.0, ["b&<x>", "a"], seed=2)
    assert result["mmd"]["pvalue"] < 0.05 and result["scores"]["mfsim"]["ks"]["pvalue"] < 1e-3
    assert (
        result["target"]["scored_rows"] == 89
        and result["groups"]["a"]["rows"] + result["groups"]["b&<x>"]["rows"] == 89
    )
    rows = attach_thumbnails(most_ood(target_rows, "mfsim", 5), CorpusSettings(), None, size=32)
    assert all(row["thumbnail"] for row in rows)
    histograms = {
        "mfsim": histogram_uri(
            "mfsim", values_of(reference_rows, "score_mfsim"), values_of(target_rows, "score_mfsim"), {}
        )
    }
    page = parse(render_html(result, histograms, rows))
    assert_self_contained(page, thumbnails=5, histograms=1)
    group_table = max(index for index, _ in page.rows)
    assert [cells[0] for index, cells in page.rows if index == group_table] == ["group", "a", "b&<x>"]

    write_report(tmp_path / "plain", corpus, 1.0, ["a"], seed=3, embedding=False)
    reference = FinishedReport.open(str(tmp_path / "reference"))
    plain, _, _ = audit(reference, FinishedReport.open(str(tmp_path / "plain")), calibration_rows={"mfsim": 300})
    assert plain["mmd"] == {"skipped": "no embeddings in the report: MMD skipped"}
    assert "no embeddings in the report: MMD skipped" in render_html(plain, {}, [])


def test_values_from_reports_are_escaped_and_plotted_as_plain_text(demo_data, tmp_path):
    """A summary's counts and a group value are data: escaped in the page, never read as mathtext by the plot
    (``$\\foo$`` made matplotlib raise and killed the audit after both screenings; issue 12, item 18)."""
    corpus = corpus_and_reference(demo_data, tmp_path, 60)
    result, reference_rows, target_rows = audit_by_hand(tmp_path, corpus, "target", 1.0, ["$\\foo$", "a"], seed=2)
    groups = {g: values_of(target_rows, "score_mfsim", groups_of(target_rows, "group") == g) for g in result["groups"]}
    histograms = {
        "mfsim": histogram_uri(
            "mfsim", values_of(reference_rows, "score_mfsim"), values_of(target_rows, "score_mfsim"), groups
        )
    }
    result["reference"]["errors"] = "<script>alert(1)</script>"
    html = render_html(result, histograms, [])
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_holm_adjusted_pvalues_by_hand():
    adjusted = holm_adjusted({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_the_verdict_says_no_drift_between_two_samples_of_one_distribution_and_yes_under_a_shift(demo_data, tmp_path):
    """Many tests, one answer: same-distribution reports give "no" although some single test may fall below
    0.05; a shifted target gives "yes", carried by the tests that see the shift (issue 14)."""
    corpus = corpus_and_reference(demo_data, tmp_path, 90)
    for name, shift, seed, drifted in (("same", 0.0, 2, False), ("shifted", 1.0, 3, True)):
        result, _, _ = audit_by_hand(tmp_path, corpus, name, shift, ["a", "b", "c"], seed)
        verdict = drift_verdict(result, 0.05)
        assert verdict["tests"] == 3 + 3 * 3 and verdict["drift"] is drifted, (name, verdict)
        assert verdict_line(verdict).startswith("drift: YES" if drifted else "drift: no")
        if drifted:
            assert "ks score_mfsim" in verdict["rejected"] and all(p <= 0.05 for p in verdict["rejected"].values())
        assert verdict_line(verdict) in render_html({**result, "verdict": verdict}, {}, [])


@pytest.fixture(scope="module")
def corpora(demo_data, tmp_path_factory):
    """Reference: 120 held-out ID digits. Target: 60 other ID digits, 40 unseen digits and 40 photo crops."""
    root = tmp_path_factory.mktemp("audit-corpora")
    corpus = pq.read_table(demo_data[1])
    rng = np.random.default_rng(0)
    group = np.array(corpus.column("group").to_pylist())
    ids = rng.permutation(np.flatnonzero(group == "id"))
    near = rng.permutation(np.flatnonzero(group == "near_ood"))[:40]
    far = rng.permutation(np.flatnonzero(group == "far_ood"))[:40]
    pq.write_table(corpus.take(ids[:120]), root / "reference.parquet")
    pq.write_table(corpus.take(np.concatenate([ids[120:180], near, far])), root / "target.parquet")
    config = root / "audit.yaml"
    config.write_text(yaml.safe_dump(tiny_config(screen={"batch_size": 64}).model_dump(mode="json")))
    return root, str(config)


@pytest.fixture(scope="module")
def audited(ray_cluster, tiny_bundle, corpora):
    root, config = corpora
    output = root / "audit"
    env = {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    result = run_job(
        "audit.py",
        "--config",
        config,
        "--bundle",
        tiny_bundle,
        "--reference",
        str(root / "reference.parquet"),
        "--target",
        str(root / "target.parquet"),
        "--by",
        "group",
        "--output",
        str(output),
        "--permutations",
        "200",
        "--thumbnails",
        "6",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


def test_audit_job_screens_both_corpora_and_finds_the_shifted_groups(audited):
    output, result = audited
    audit = json.loads((output / "audit.json").read_text())
    print(result.stdout)
    assert (output / "reference" / "_SUCCESS").exists() and (output / "target" / "_SUCCESS").exists()
    assert audit["reference"]["scored_rows"] == 120 and audit["target"]["scored_rows"] == 140
    decision = audit["decision_score"]
    assert audit["scores"][decision]["ks"]["pvalue"] < 1e-3
    # The whole target mixes 60 ID images in: MMD^2 falls with the square of the shifted fraction, so with 140
    # images only the groups are sure to be told apart; the overall test must run on every embedding.
    assert audit["mmd"]["reference_rows"] == 120 and audit["mmd"]["target_rows"] == 140
    groups = audit["groups"]
    assert set(groups) == {"id", "near_ood", "far_ood"} and groups["far_ood"]["rows"] == 40
    far = groups["far_ood"]
    assert far["scores"][decision]["ks"]["pvalue"] < 1e-3 and far["mmd"]["pvalue"] < 0.05
    assert far["scores"][decision]["flagged"]["pvalue"] < 1e-3
    assert groups["id"]["scores"][decision]["ks"]["pvalue"] > 1e-3  # held-out ID against held-out ID
    assert len(audit["most_ood"]) == 6
    assert "far_ood" in result.stdout or "group=far_ood" in result.stdout


def test_audit_html_is_self_contained_with_every_group(audited):
    output, _ = audited
    audit = json.loads((output / "audit.json").read_text())
    page = parse((output / "audit.html").read_text())
    assert_self_contained(page, thumbnails=6, histograms=len(audit["scores"]))
    group_table = max(index for index, _ in page.rows)
    first_cells = [cells[0] for index, cells in page.rows if index == group_table]
    assert first_cells == ["group", "far_ood", "id", "near_ood"]
    score_rows = [cells for index, cells in page.rows if index == 1][1:]
    assert [cells[0] for cells in score_rows] == list(audit["scores"])


def test_audit_job_reuses_finished_reports_without_ray(audited, tiny_bundle, corpora):
    output, _ = audited
    root, config = corpora
    again = root / "again"
    result = run_job(
        "audit.py",
        "--config",
        config,
        "--bundle",
        tiny_bundle,
        "--reference",
        str(output / "reference"),
        "--target",
        str(output / "target"),
        "--by",
        "group",
        "--output",
        str(again),
        "--permutations",
        "200",
        "--thumbnails",
        "6",
        env={"RAY_ADDRESS": ""},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Started a local Ray" not in result.stderr + result.stdout and not (again / "target").exists()
    first, second = json.loads((output / "audit.json").read_text()), json.loads((again / "audit.json").read_text())
    assert second["scores"] == first["scores"] and second["groups"] == first["groups"]
    refused = run_job(
        "audit.py",
        "--config",
        config,
        "--bundle",
        tiny_bundle,
        "--reference",
        str(output / "reference"),
        "--target",
        str(output / "target"),
        "--output",
        str(again),
        timeout=300,
    )
    assert refused.returncode == 2 and "already holds an audit" in refused.stderr


def test_audit_job_checks_arguments_before_screening(tiny_bundle, corpora, tmp_path):
    root, config = corpora
    common = ["--config", config, "--bundle", tiny_bundle, "--reference", str(root / "reference.parquet")]
    missing = run_job(
        "audit.py",
        *common,
        "--target",
        str(root / "target.parquet"),
        "--by",
        "colour",
        "--output",
        str(tmp_path / "a"),
        timeout=300,
    )
    assert missing.returncode == 2 and "colour" in missing.stderr
    assert not (tmp_path / "a" / "reference").exists(), (
        "the reference must not be screened before the target is checked"
    )
    bad = run_job(
        "audit.py",
        *common,
        "--target",
        str(root / "target.parquet"),
        "--permutations",
        "0",
        "--output",
        str(tmp_path / "b"),
        timeout=300,
    )
    assert bad.returncode == 2 and "--permutations" in bad.stderr
    no_bundle = run_job(
        "audit.py",
        "--config",
        config,
        "--bundle",
        str(tmp_path / "none"),
        "--reference",
        str(root / "reference.parquet"),
        "--target",
        str(root / "target.parquet"),
        "--output",
        str(tmp_path / "c"),
        timeout=300,
    )
    assert no_bundle.returncode == 2 and "bundle" in no_bundle.stderr
