"""Benjamini-Hochberg on conformal p-values: the FDR guarantee by simulation, a hand-computed case, and the
filter job end to end on a report written with the real report code."""

import argparse
import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from scipy.stats import false_discovery_control

from rayood.config import CorpusSettings, DecisionSettings
from rayood.data.originals import iter_originals
from rayood.data.webdataset import WebSample, read_samples, sample_id, write_shards
from rayood.decide.fdr import BenjaminiHochberg
from rayood.decide.filter import filter_report
from rayood.detectors.calibrate import ConformalReference
from rayood.jobs import fdr_level
from rayood.report.guard import OutputError
from rayood.report.reader import FinishedReport
from rayood.report.summary import summarize
from rayood.report.target import ROWS, SUCCESS, SUMMARY
from rayood.storage import resolve
from tests.browser import assert_self_contained
from tests.conftest import tiny_config
from tests.images import encode, gradient
from tests.test_jobs import run_job

Q = 0.1
DRAWS = 200
N_CAL, N_ID, N_OOD = 1000, 800, 200
GAPS = (1.0, 2.0, 3.0, 4.0)


def simulate(
    gap: float, seed: int, n_cal: int = N_CAL, n_id: int = N_ID, n_ood: int = N_OOD
) -> tuple[np.ndarray, np.ndarray]:
    """Per draw: the false discovery proportion and the power of BH at ``Q``.

    Scores are N(0, 1) for calibration and ID images, N(gap, 1) for OOD images (higher = more OOD); every
    draw has fresh calibration scores, so the dependence that a shared calibration set induces is included."""
    rng = np.random.default_rng(seed)
    fdp, power = np.empty(DRAWS), np.empty(DRAWS)
    for draw in range(DRAWS):
        reference = ConformalReference(rng.standard_normal(n_cal))
        pvalues = reference.pvalues(np.concatenate([rng.standard_normal(n_id), rng.normal(gap, 1.0, n_ood)]))
        rejected = BenjaminiHochberg.fit(pvalues, Q).reject(pvalues)
        fdp[draw] = rejected[:n_id].sum() / max(rejected.sum(), 1)
        power[draw] = rejected[n_id:].mean() if n_ood else 0.0
    return fdp, power


def standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(values.size))


def test_bh_keeps_the_fdr_at_q_times_the_id_fraction():
    """Bates et al. (2023): with exchangeable ID and calibration scores, FDR <= Q m0 / m. The mean FDP over
    200 draws may exceed that only by sampling error: 3 standard errors of the mean (the FDP is bounded, so
    the CLT applies; a one-sided 0.13% false alarm rate). Once OOD images are easy to tell apart (gap >= 2)
    BH spends its whole budget: a mean FDP significantly below the bound would mean a needlessly
    conservative procedure (Bonferroni, say), which the second assertion catches."""
    bound = Q * N_ID / (N_ID + N_OOD)
    for gap in GAPS:
        fdp, _ = simulate(gap, seed=int(gap * 10))
        se = standard_error(fdp)
        print(f"m0={N_ID} m1={N_OOD} n_cal={N_CAL} gap {gap}: mean FDP {fdp.mean():.4f} (se {se:.4f}), bound {bound}")
        assert fdp.mean() - 3 * se <= bound, gap
        if gap >= 2:
            assert fdp.mean() + 3 * se >= bound, gap


def test_without_any_ood_a_rejection_happens_in_at_most_a_fraction_q_of_draws():
    """All ID: every rejection is false, so the FDR is P(any rejection), a binomial rate over the draws; its
    tolerance is 3 binomial standard errors at Q. The calibration set is 20x the corpus so that a single
    image can reach BH's first bound Q / m (the smallest conformal p-value is 1 / (n_cal + 1))."""
    fdp, _ = simulate(0.0, seed=7, n_cal=2000, n_id=100, n_ood=0)
    any_rejection = (fdp > 0).mean()
    print(f"global null, m=100 n_cal=2000: P(any rejection) {any_rejection:.3f}")
    assert any_rejection <= Q + 3 * np.sqrt(Q * (1 - Q) / DRAWS)


def test_power_rises_with_the_ood_score_gap():
    """Each step up in gap must raise the mean power by more than 3 standard errors of the difference."""
    powers = []
    for gap in GAPS:
        _, power = simulate(gap, seed=int(gap * 10))  # the draws of the FDR test
        powers.append((power.mean(), power.std(ddof=1) / np.sqrt(DRAWS)))
        print(f"gap {gap}: mean power {power.mean():.4f}")
    for (low, low_se), (high, high_se) in zip(powers, powers[1:]):
        assert high - low > 3 * np.hypot(low_se, high_se)
    assert powers[-1][0] > 0.9


def test_hand_computed_case_with_ties_and_step_up():
    # m = 6, sorted p: .01 .035 .04 .04 .2 .5; BH bounds k * 0.1 / 6: .0167 .0333 .05 .0667 .0833 .1.
    # .035 misses its own bound but is rejected because the tied .04 pair passes at rank 4 (step-up).
    pvalues = np.array([0.5, 0.04, 0.01, 0.2, 0.035, 0.04])
    bh = BenjaminiHochberg.fit(pvalues, 0.1)
    # adjusted: min over ranks >= r of 6 p / rank, ties at their last rank: .06 .06 .06 .06 .24 .5
    np.testing.assert_allclose(bh.qvalues(pvalues), [0.5, 0.06, 0.06, 0.24, 0.06, 0.06])
    np.testing.assert_allclose(bh.qvalues(pvalues), false_discovery_control(pvalues))
    assert bh.reject(pvalues).tolist() == [False, True, True, False, True, True]
    assert bh.threshold == 0.04 and bh.rejections == 4
    strict = BenjaminiHochberg.fit(pvalues, 0.05)
    assert not strict.reject(pvalues).any() and strict.threshold is None and strict.rejections == 0
    batched = BenjaminiHochberg.fit_batches([pvalues[:2], pvalues[2:], np.empty(0)], 0.1)
    np.testing.assert_array_equal(batched.qvalues(pvalues), bh.qvalues(pvalues))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        BenjaminiHochberg.fit(np.array([0.1]), 1.0)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        BenjaminiHochberg.fit(np.array([0.1, np.nan]), 0.1)
    with pytest.raises(ValueError, match="outside the family"):
        BenjaminiHochberg.fit(np.array([0.1, 0.2]), 0.1).qvalues(np.array([0.15]))


def write_report(
    directory,
    seed=0,
    ids: list[str] | None = None,
    source: str = "s3://bucket/corpus",
    extra: dict[str, list] | None = None,
) -> pa.Table:
    """A finished report in the real layout, its summary from the real summary code: two row files, error rows,
    two scores; ``extra``: passthrough columns, one value per row."""
    rng = np.random.default_rng(seed)
    calibration = {"mfsim": rng.standard_normal(500), "knn": rng.standard_normal(500)}
    n_id, n_ood, n_err = (300, 100, 7) if ids is None else (len(ids) - len(ids) // 4 - 2, len(ids) // 4, 2)
    scores = {
        "mfsim": np.concatenate([rng.standard_normal(n_id), rng.normal(3.0, 1.0, n_ood), np.full(n_err, np.nan)]),
        "knn": np.concatenate([rng.standard_normal(n_id), rng.normal(1.0, 1.0, n_ood), np.full(n_err, np.nan)]),
    }
    ok = np.arange(n_id + n_ood + n_err) < n_id + n_ood
    columns = {
        "id": pa.array(ids or [f"img/{i:04d}" for i in range(ok.size)]),
        "source": pa.array([source] * ok.size),
        "status": pa.array(np.where(ok, "ok", "error").tolist()),
        "error": pa.array([None if good else "not an image: cannot identify image file" for good in ok]),
    }
    for name, values in scores.items():
        columns[f"score_{name}"] = pa.array(values, from_pandas=True)
        columns[f"pvalue_{name}"] = pa.array(ConformalReference(calibration[name]).pvalues(values), from_pandas=True)
    decision = DecisionSettings(score="mfsim", alpha=0.05)
    columns["is_ood"] = pa.array(
        [p <= decision.alpha if good else None for p, good in zip(columns["pvalue_mfsim"].to_pylist(), ok)]
    )
    columns["group"] = pa.array(["id"] * n_id + ["ood"] * n_ood + [None] * n_err)
    columns.update({name: pa.array(values) for name, values in (extra or {}).items()})
    table = pa.table(columns)
    rows = directory / ROWS
    rows.mkdir(parents=True)
    order = rng.permutation(table.num_rows)
    pq.write_table(table.take(order[:200]), rows / "part-0.parquet")
    pq.write_table(table.take(order[200:]), rows / "part-1.parquet")
    summary = summarize(
        table,
        score_names=list(scores),
        calibration=calibration,
        decision=decision,
        expected_rows=table.num_rows,
        elapsed_s=1.0,
        bundle_id="simulated",
    )
    (directory / SUMMARY).write_text(json.dumps(summary))
    (directory / SUCCESS).write_bytes(b"")
    return table


def read(path):
    return pq.read_table(path).to_pandas().set_index("id")


def test_filter_job_end_to_end_on_a_finished_report(tmp_path):
    report = tmp_path / "report"
    table = write_report(report).to_pandas().set_index("id")
    out = tmp_path / "filtered"
    result = run_job("filter.py", "--report", str(report), "--fdr", "0.1", "--output", str(out), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rejected" in result.stdout

    ok = table[table["status"] == "ok"]
    bh = BenjaminiHochberg.fit(ok["pvalue_mfsim"].to_numpy(), 0.1)
    summary = json.loads((out / "filter.json").read_text())
    assert summary["score"] == "mfsim" and summary["fdr"] == 0.1 and summary["rows"] == len(table)
    assert summary["rejected"] == bh.rejections > 0 and summary["kept"] == len(ok) - bh.rejections
    assert summary["errors"] == 7 and summary["threshold_pvalue"] == bh.threshold

    keep, reject, errors = read(out / "keep.parquet"), read(out / "reject.parquet"), read(out / "errors.parquet")
    assert list(keep.columns) == list(reject.columns) == ["source", "pvalue_mfsim", "qvalue_mfsim"]
    assert set(keep.index) | set(reject.index) == set(ok.index) and not set(keep.index) & set(reject.index)
    assert (reject["qvalue_mfsim"] <= 0.1).all() and (reject["pvalue_mfsim"] <= bh.threshold).all()
    assert (keep["pvalue_mfsim"] > bh.threshold).all()
    np.testing.assert_allclose(reject["pvalue_mfsim"], ok.loc[reject.index, "pvalue_mfsim"])
    np.testing.assert_allclose(
        reject["qvalue_mfsim"],
        false_discovery_control(ok["pvalue_mfsim"].to_numpy())[ok.index.get_indexer(reject.index)],
    )
    assert set(errors.index) == set(table.index[table["status"] == "error"])
    assert (errors["error"].str.contains("not an image")).all()
    truth_of_rejected = table.loc[reject.index, "group"]
    print(f"filter job: rejected {len(reject)}, of which ID {(truth_of_rejected == 'id').sum()}")

    again = run_job(
        "filter.py", "--report", str(report), "--fdr", "0.1", "--output", str(out), "--score", "knn", timeout=120
    )
    assert again.returncode == 2 and "already holds a filter result" in again.stderr
    other = run_job(
        "filter.py",
        "--report",
        str(report),
        "--fdr",
        "0.1",
        "--output",
        str(out),
        "--score",
        "knn",
        "--overwrite",
        timeout=120,
    )
    assert other.returncode == 0, other.stderr[-3000:]
    assert json.loads((out / "filter.json").read_text())["score"] == "knn"
    assert "qvalue_knn" in pq.read_schema(out / "keep.parquet").names


def test_filter_job_refuses_unfinished_reports_and_bad_arguments(tmp_path):
    report = tmp_path / "report"
    write_report(report)
    out = str(tmp_path / "out")
    (report / "_SUCCESS").unlink()
    unfinished = run_job("filter.py", "--report", str(report), "--fdr", "0.1", "--output", out, timeout=120)
    assert unfinished.returncode == 2 and "not a finished rayood report (no _SUCCESS)" in unfinished.stderr
    (report / "_SUCCESS").write_bytes(b"")
    for bad in ("1.5", "0", "ten"):  # the type of --fdr and --filter-fdr: argparse names the flag and exits with 2
        with pytest.raises(argparse.ArgumentTypeError, match="\\(0, 1\\)"):
            fdr_level(bad)
    bad_score = run_job(
        "filter.py", "--report", str(report), "--fdr", "0.1", "--output", out, "--score", "ddp", timeout=120
    )
    assert bad_score.returncode == 2 and "--score 'ddp'" in bad_score.stderr and "mfsim" in bad_score.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    refused = run_job("filter.py", "--report", str(report), "--fdr", "0.1", "--output", str(foreign), timeout=120)
    assert (
        refused.returncode == 2 and "files rayood did not write (precious.txt); nothing was deleted" in refused.stderr
    )
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_screen_job_filters_its_fresh_report_and_both_pages_open_in_the_browser(
    ray_cluster, tiny_bundle, demo_data, tmp_path, chromium
):
    corpus = pq.read_table(demo_data[1])
    small = tmp_path / "small.parquet"
    pq.write_table(corpus.take(np.random.default_rng(0).permutation(corpus.num_rows)[:120]), small)
    config = tmp_path / "screen.yaml"
    config.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    output = tmp_path / "report"
    env = {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    args = ["--config", str(config), "--bundle", tiny_bundle, "--input", str(small), "--output", str(output)]
    result = run_job("screen.py", *args, "--filter-fdr", "0.2", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((output / "filter" / "filter.json").read_text())
    rows = pads.dataset(output / "rows").to_table(columns=["id", "pvalue_layerwise_mfsim"]).to_pandas().set_index("id")
    bh = BenjaminiHochberg.fit(rows["pvalue_layerwise_mfsim"].to_numpy(), 0.2)
    assert summary["score"] == "layerwise_mfsim" and summary["rejected"] == bh.rejections
    assert summary["kept"] + summary["rejected"] == 120 and summary["errors"] == 0
    rejected = set(pq.read_table(output / "filter" / "reject.parquet").column("id").to_pylist())
    assert rejected == set(rows.index[bh.reject(rows["pvalue_layerwise_mfsim"].to_numpy())])
    # the pages of a Parquet corpus: thumbnails read back from its image column
    assert_self_contained(output / "report.html", thumbnails=24)
    review = output / "filter" / "review.html"
    figures = review.read_text().count("<figure>")
    assert figures >= min(24, summary["rejected"]) + 24  # at least the most OOD rejected and the kept just before
    assert_self_contained(review, thumbnails=figures)


def test_filter_job_writes_the_kept_samples_as_webdataset_shards(demo_data, tmp_path):
    corpus_path = tmp_path / "corpus.parquet"
    corpus = pq.read_table(demo_data[1]).slice(0, 48)
    pq.write_table(corpus, corpus_path)
    write_report(tmp_path / "report", ids=corpus.column("id").to_pylist(), source=str(corpus_path))
    out, shards = tmp_path / "filtered", tmp_path / "shards"
    result = run_job(
        "filter.py",
        "--report",
        str(tmp_path / "report"),
        "--fdr",
        "0.1",
        "--output",
        str(out),
        "--write-shards",
        str(shards),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "filter.json").read_text())
    kept = set(pq.read_table(out / "keep.parquet").column("id").to_pylist())
    assert summary["shards"] == {"directory": str(shards), "files": 1, "samples": len(kept)} and 0 < len(kept) < 46
    images = dict(zip(corpus.column("id").to_pylist(), corpus.column("image").to_pylist()))
    samples = list(read_samples(pafs.LocalFileSystem(), str(shards / "kept-00000.tar"), "kept-00000.tar"))
    metas = [json.loads(sample.files["rayood.json"]) for sample in samples]
    assert sorted(meta["id"] for meta in metas) == sorted(kept)
    assert [sample.key for sample in samples] == [f"{i:09d}" for i in range(len(kept))]
    assert all(sample.files["png"] == images[meta["id"]] for sample, meta in zip(samples, metas))
    assert all(meta["source"] == str(corpus_path) and meta["qvalue_mfsim"] > 0.1 for meta in metas)


def test_a_filter_writing_into_the_screened_corpus_is_refused_before_anything_is_deleted(tmp_path):
    """The kept shards of an earlier filter, screened again and filtered into their own directory with
    --overwrite: the shards would be deleted before they are read back. Any output inside an input, or holding
    one, is refused with nothing written or deleted; one beside the corpus works."""
    png = encode(Image.fromarray(gradient()), "PNG")
    corpus = resolve(str(tmp_path / "kept"))
    shard_uris = write_shards([WebSample(f"{i:09d}", {"png": png}) for i in range(12)], corpus, prefix="kept-")
    write_report(tmp_path / "report", ids=[sample_id(shard_uris[0], f"{i:09d}") for i in range(12)], source=corpus.uri)
    report, shard = FinishedReport.open(str(tmp_path / "report")), tmp_path / "kept" / "kept-00000.tar"
    before = shard.read_bytes()
    lists = resolve(str(tmp_path / "lists"))
    for outputs in (
        {"output": lists, "shards": corpus},  # the case above
        {"output": resolve(str(tmp_path / "kept" / "lists")), "shards": None},  # lists inside the corpus
        {"output": lists, "shards": resolve(str(tmp_path))},  # shards around the corpus
    ):
        with pytest.raises(OutputError, match="overlap"):
            filter_report(report, 0.1, outputs["output"], overwrite=True, shards=outputs["shards"])
        assert shard.read_bytes() == before and not (tmp_path / "lists").exists()
        assert not (tmp_path / "kept" / "lists").exists()

    result = filter_report(report, 0.1, lists, shards=resolve(str(tmp_path / "kept-again")))
    assert result["shards"]["samples"] == result["kept"] > 0


def test_originals_come_back_by_id_from_webdataset_shards_and_image_files(tmp_path):
    """The reader behind --write-shards and the audit's thumbnails, on the two input kinds the Parquet test
    above does not cover; ids that a source does not hold are not returned."""
    png = encode(Image.fromarray(gradient()), "PNG")
    shards = write_shards(
        [WebSample(f"part/{i:04d}", {"jpg": png, "txt": f"caption {i}".encode()}) for i in range(5)],
        resolve(str(tmp_path / "wds")),
        max_samples=3,
    )
    wanted = {sample_id(shards[0], "part/0001"), sample_id(shards[1], "part/0004"), sample_id(shards[1], "part/0009")}
    found = dict(iter_originals(str(tmp_path / "wds"), wanted, CorpusSettings()))
    assert set(found) == wanted - {sample_id(shards[1], "part/0009")}
    assert found[sample_id(shards[1], "part/0004")] == {"jpg": png, "txt": b"caption 4"}
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png)
    files = dict(iter_originals(str(tmp_path / "images"), {str(tmp_path / "images" / "a.png")}, CorpusSettings()))
    assert files == {str(tmp_path / "images" / "a.png"): {"png": png}}


def test_originals_are_looked_up_in_the_recorded_source_never_read_from_a_path_made_of_an_id(tmp_path):
    """A Parquet row whose id looks like a file or a shard member outside the corpus gets its own bytes back,
    and an image-directory source never reads a file it did not list (issue 12, item 2: a data leak)."""
    secret, own = encode(Image.fromarray(gradient()), "PNG"), encode(Image.fromarray(gradient()[::-1].copy()), "PNG")
    (tmp_path / "secret.png").write_bytes(secret)
    shards = write_shards([WebSample("k", {"png": secret})], resolve(str(tmp_path / "elsewhere")))
    corpus = tmp_path / "corpus.parquet"
    by_path, by_shard = f"{corpus}/../secret.png", sample_id(shards[0], "k")
    pq.write_table(pa.table({"id": [by_path, by_shard], "image": [own, own]}), corpus)
    for row_id in (by_path, by_shard):
        assert dict(iter_originals(str(corpus), {row_id}, CorpusSettings())) == {row_id: {"png": own}}

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(own)
    outside = {str(tmp_path / "images" / ".." / "secret.png"), sample_id(shards[0], "k")}
    assert dict(iter_originals(str(tmp_path / "images"), outside, CorpusSettings())) == {}


def test_too_few_calibration_rows_give_a_null_threshold_and_a_warning_in_strict_json(tmp_path):
    """With fewer than 1/alpha - 1 calibration rows no p-value reaches alpha: the summary says so instead of
    holding Infinity, which strict JSON readers reject (issue 12, item 16)."""
    from rayood.report.target import ReportTarget

    table = pa.table(
        {
            "id": ["a", "b"],
            "source": ["s", "s"],
            "status": ["ok", "ok"],
            "error": [None, None],
            "is_ood": [False, False],
            "score_mfsim": [0.1, float("nan")],
        }
    )
    summary = summarize(
        table,
        score_names=["mfsim"],
        calibration={"mfsim": np.arange(10.0)},
        decision=DecisionSettings(score="mfsim", alpha=0.05),
        expected_rows=2,
        elapsed_s=1.0,
        bundle_id="simulated",
    )
    assert summary["decision"]["threshold"] is None and summary["scores"]["mfsim"]["threshold"] is None
    assert summary["warnings"] and "10 calibration rows" in summary["warnings"][0] and "19" in summary["warnings"][0]
    target = ReportTarget(resolve(str(tmp_path / "report")), "fingerprint")
    target.prepare(overwrite=False)
    target.finish(summary)

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    written = json.loads((tmp_path / "report" / SUMMARY).read_text(), parse_constant=refuse)
    assert written["decision"]["threshold"] is None and written["warnings"] == summary["warnings"]
