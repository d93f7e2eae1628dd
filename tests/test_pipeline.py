"""Fit with Ray Train and screen with Ray Data on a real local cluster; read the Parquet report back."""

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from rayood.bundle import read_manifest
from rayood.config import ConfigError
from rayood.data.sources import HIDDEN, InputError
from rayood.evaluation.metrics import auroc
from rayood.report.guard import OutputError
from rayood.report.lease import EXCLUSIVE
from rayood.screen.pipeline import rows_per_file, screen
from rayood.screen.progress import RowProgress
from rayood.storage import LINK_NOT_FOLLOWED, resolve
from tests.conftest import tiny_config
from tests.images import bad_images, good_images

SCORES = [
    "msp",
    "energy",
    "maxlogit",
    "mahalanobis",
    "layerwise_mse",
    "layerwise_mfsim",
    "knn",
    "multiscale",
]


def read_report(output):
    return pads.dataset(f"{output}/rows", format="parquet").to_table()


def corpus_config(bundle, inputs, output, **screen):
    settings = {
        "inputs": [str(i) for i in inputs],
        "output": str(output),
        "bundle": bundle,
        "batch_size": 128,
        "passthrough_columns": ["label", "group"],
        "truth": {"column": "group", "id_values": ["id"]},
        **screen,
    }
    return tiny_config(screen=settings)


@pytest.fixture(scope="module")
def parquet_report(tiny_bundle, demo_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("reports") / "parquet"
    summary, _ = screen(corpus_config(tiny_bundle, [demo_data[1]], output))
    return output, summary


def test_bundle_records_what_it_was_fitted_on(tiny_bundle):
    manifest = json.load(open(f"{tiny_bundle}/manifest.json"))
    assert read_manifest(tiny_bundle).scores == SCORES
    assert manifest["class_names"] == ["0", "1", "2", "3", "4"]
    data = manifest["data"]
    assert data["train_rows"] + data["calibration_rows"] + data["error_rows"] == data["rows"]
    assert manifest["calibration"]["rows"] == data["calibration_rows"] > 100
    backbone = manifest["training"]["backbone"]
    assert backbone["epoch"] == 4 and 0 < backbone["epoch_s"] <= backbone["epochs_s"] < backbone["wall_s"]
    assert 0.5 < manifest["heldout_accuracy"] <= 1.0  # 5 digit classes: chance is 0.2
    # fused scores chosen on synthetic outliers: a non-empty subset, with the evidence that chose it
    fusion = manifest["fusion"]
    assert fusion["scores"] and set(fusion["scores"]) <= set(SCORES) and fusion["synthetic_outliers"] >= 5 * 100
    assert set(fusion["single_mean_auroc"]) == set(SCORES)
    assert [step["add"] for step in fusion["steps"]] == fusion["scores"]


def test_every_corpus_row_comes_out_once_with_scores_and_pvalues(parquet_report, demo_data):
    output, summary = parquet_report
    source_ids = pq.read_table(demo_data[1]).column("id").to_pylist()
    report = read_report(output)
    assert sorted(report.column("id").to_pylist()) == sorted(source_ids)
    assert summary["rows"] == summary["expected_rows"] == len(source_ids) and summary["errors"] == 0
    for name in [*SCORES, "fused"]:
        assert report.column(f"score_{name}").null_count == 0
        pvalues = report.column(f"pvalue_{name}").to_numpy()
        assert ((pvalues > 0) & (pvalues <= 1)).all()
    assert (output / "_SUCCESS").exists() and json.loads((output / "summary.json").read_text()) == summary
    assert "embedding" not in report.column_names  # only on request


def test_embedding_column_holds_the_penultimate_features(tiny_bundle, tmp_path):
    from rayood.bundle_models import load_bundle
    from rayood.data.decode import decode_image
    from rayood.models.backbones import uint8_to_unit

    corpus = tmp_path / "images"
    corpus.mkdir()
    for name, data in good_images().items():
        (corpus / name).write_bytes(data)
    (corpus / "broken.png").write_bytes(b"\x89PNG not really")
    config = tiny_config(
        screen={"inputs": [str(corpus)], "output": str(tmp_path / "out"), "bundle": tiny_bundle, "embedding": True}
    )
    screen(config)
    report = read_report(tmp_path / "out")
    bundle = load_bundle(tiny_bundle)
    embedding = report.column("embedding")
    assert str(embedding.type) == f"fixed_size_list<element: halffloat>[{bundle.manifest.feature_dim}]"
    rows = report.to_pylist()
    for row in rows:
        if row["status"] != "ok":
            assert row["embedding"] is None
            continue
        pixels = decode_image(open(row["id"], "rb").read(), 32)
        expected = bundle.backbone.features(uint8_to_unit(torch.from_numpy(pixels[None]))).penultimate[0]
        assert np.asarray(row["embedding"], dtype=np.float32) == pytest.approx(
            expected.detach().numpy(), rel=2e-3, abs=2e-3
        )
    assert sum(row["status"] != "ok" for row in rows) == 1


def test_ood_scores_higher_than_id(parquet_report):
    output, summary = parquet_report
    report = read_report(output).to_pandas()
    is_id = report["group"] == "id"
    # DLSR and Mahalanobis separate the tiny bundle's digits almost perfectly; the neighbour scores depend more
    # on how its 4-epoch backbone happened to train (0.71-0.85 seen across runs), so they must only be clearly
    # better than chance (AUROC's standard error here is about 0.02)
    for name, floor in (
        ("mahalanobis", 0.8),
        ("layerwise_mse", 0.8),
        ("layerwise_mfsim", 0.8),
        ("knn", 0.65),
        ("multiscale", 0.65),
    ):
        values = report[f"score_{name}"].to_numpy()
        assert auroc(values[is_id], values[~is_id]) > floor, name
        assert summary["evaluation"]["scores"][name]["auroc"] == pytest.approx(auroc(values[is_id], values[~is_id]))
    flagged = report.groupby("group")["is_ood"].mean()
    assert flagged["far_ood"] > flagged["id"]


def test_image_files_good_and_bad_each_give_one_row(tiny_bundle, tmp_path):
    corpus = tmp_path / "images"
    (corpus / "nested").mkdir(parents=True)
    for name, data in good_images().items():
        (corpus / "nested" / name).write_bytes(data)
    for name, (data, _) in bad_images().items():
        (corpus / name).write_bytes(data)
    (corpus / "README.txt").write_text("not part of the corpus")
    (corpus / "loop").symlink_to("..")
    (corpus / ".DS_Store").write_bytes(b"Finder")
    output = tmp_path / "report"
    summary, _ = screen(tiny_config(screen={"inputs": [str(corpus)], "output": str(output), "bundle": tiny_bundle}))
    report = read_report(output).to_pandas().set_index("id")
    expected = {str(corpus / "nested" / n) for n in good_images()} | {str(corpus / n) for n in bad_images()}
    assert set(report.index) == expected and len(report) == len(expected)
    assert summary["skipped_non_image_files"] == 1
    assert summary["left_out_entries"] == {HIDDEN: 1, LINK_NOT_FOLLOWED: 1}
    assert summary["output_lease"] == EXCLUSIVE
    provenance = summary["provenance"]
    assert provenance["bundle_uri"] == tiny_bundle and provenance["bundle_id"] == summary["bundle_id"]
    assert {"rayood", "ray", "torch"} <= set(provenance["versions"]) and provenance["config"]["screen"]["inputs"] == [
        str(corpus)
    ]
    for name, (_, cause) in bad_images().items():
        row = report.loc[str(corpus / name)]
        assert row["status"] == "error" and cause in row["error"]
        assert np.isnan(row["score_layerwise_mfsim"]) and row["is_ood"] is None
    good = report[report["status"] == "ok"]
    assert len(good) == len(good_images()) and good["error"].isna().all()
    assert summary["errors"] == len(bad_images())


def test_a_second_run_never_mixes_rows_and_scores_are_reproducible(parquet_report, tiny_bundle, demo_data):
    output, summary = parquet_report
    first = read_report(output).to_pandas().set_index("id").sort_index()
    with pytest.raises(OutputError, match="already holds a finished report"):
        screen(corpus_config(tiny_bundle, [demo_data[1]], output))
    again, _ = screen(corpus_config(tiny_bundle, [demo_data[1]], output, overwrite=True, batch_size=50))
    second = read_report(output).to_pandas().set_index("id").sort_index()
    assert len(second) == summary["rows"] == again["rows"]
    for name in SCORES:  # other batch boundaries, same per-id noise: the same scores
        np.testing.assert_allclose(second[f"score_{name}"], first[f"score_{name}"], rtol=1e-4, atol=1e-6, err_msg=name)


def test_an_unfinished_report_of_another_run_is_refused_or_redone_and_foreign_dirs_are_left_alone(
    tiny_bundle, demo_data, tmp_path
):
    unfinished = tmp_path / "unfinished"
    (unfinished / "rows").mkdir(parents=True)
    (unfinished / "_STARTED").write_text("{}")
    corpus = pq.read_table(demo_data[1])
    pq.write_table(corpus.slice(0, 5).select(["id"]), unfinished / "rows" / "stale.parquet")
    small = tmp_path / "small.parquet"
    pq.write_table(corpus.slice(0, 60), small)
    with pytest.raises(OutputError, match="unfinished report of another run"):
        screen(corpus_config(tiny_bundle, [small], unfinished))
    assert (unfinished / "rows" / "stale.parquet").exists()
    summary, _ = screen(corpus_config(tiny_bundle, [small], unfinished, overwrite=True))
    assert summary["expected_rows"] == 60
    assert read_report(unfinished).num_rows == summary["expected_rows"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="holds no _STARTED, so it is not rayood.s"):
        screen(corpus_config(tiny_bundle, [small], foreign))
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_missing_input_is_an_input_error(tiny_bundle, tmp_path):
    with pytest.raises(InputError, match="input not found"):
        screen(corpus_config(tiny_bundle, [tmp_path / "nope"], tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_parquet_without_the_configured_columns_is_an_input_error(tiny_bundle, demo_data, tmp_path):
    config = tiny_config(
        corpus={"image_column": "jpeg"},
        screen={"inputs": [str(demo_data[1])], "output": str(tmp_path / "out"), "bundle": tiny_bundle},
    )
    with pytest.raises(InputError, match="lacks column"):
        screen(config)


def test_fitting_again_resumes_from_the_finished_checkpoints(tiny_bundle, demo_data, tmp_path):
    """Same settings and checkpoint storage: every Ray Train stage resumes at its last epoch and trains no more."""
    import torch

    from rayood.train.fit import fit

    again = str(tmp_path / "again")
    config = tiny_config(
        train={"data": [str(demo_data[0])], "bundle": again, "checkpoint_path": f"{tiny_bundle}-checkpoints"}
    )
    fit(config)
    for name in ("backbone.pt", "layerwise_denoiser.pt"):  # bank and statistics follow from these
        before = torch.load(f"{tiny_bundle}/{name}", weights_only=True)
        after = torch.load(f"{again}/{name}", weights_only=True)
        assert all(torch.equal(before[k], after[k]) for k in before), name
    first, second = json.load(open(f"{tiny_bundle}/manifest.json")), json.load(open(f"{again}/manifest.json"))
    assert first["bundle_id"] != second["bundle_id"] and first["data"] == {
        **second["data"],
        "uris": first["data"]["uris"],
    }


def test_a_scoring_actor_refuses_a_bundle_replaced_since_the_run_was_planned(tiny_bundle):
    """An actor restarted after ``train --overwrite`` must not score with a model the summary does not name."""
    from rayood.bundle import BundleError
    from rayood.config import S3Settings
    from rayood.scoring.actor import ScoreActor

    planned = json.load(open(f"{tiny_bundle}/manifest.json"))["bundle_id"]
    assert ScoreActor(bundle_uri=tiny_bundle, s3=S3Settings(), bundle_id=planned).bundle.bundle_id == planned
    with pytest.raises(BundleError, match=f"is now {planned}, but this run screens with 0123abcd"):
        ScoreActor(bundle_uri=tiny_bundle, s3=S3Settings(), bundle_id="0123abcd")


def test_a_synthetic_corpus_is_screened_with_progress_lines(tiny_bundle, tmp_path, caplog):
    """synthetic://N end to end (issue 15, item 5): every row once, and the driver logs progress meanwhile."""
    output = tmp_path / "report"
    config = tiny_config(
        screen={
            "inputs": ["synthetic://3000"],
            "output": str(output),
            "bundle": tiny_bundle,
            "batch_size": 64,
            "progress_every_s": 0.2,
        }
    )
    with caplog.at_level(logging.INFO, logger="rayood.screen.progress"):
        summary, _ = screen(config)
    assert summary["rows"] == summary["ok"] == 3000 and summary["per_source"] == {"synthetic://3000": 3000}
    assert len(read_report(output).column("id").unique()) == 3000
    progress = [r.getMessage() for r in caplog.records if r.name == "rayood.screen.progress"]
    assert progress and all(" of 3000 rows" in line for line in progress)
    started = [line for line in progress if "no new row file yet" not in line]
    assert started and all("rows/s, ETA" in line for line in started), progress


def test_progress_counts_finished_row_files_only(tmp_path):
    rows = tmp_path / "rows"
    rows.mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"]}), rows / "done.parquet")
    (rows / "being-written.parquet").write_bytes(b"PAR1 no footer yet")
    progress = RowProgress(resolve(str(rows)), total=10, every_s=0)
    assert progress.rows_done() == 3
    pq.write_table(pa.table({"id": ["d"]}), rows / "being-written.parquet")  # finished later: counted then
    assert progress.rows_done() == 4


def test_row_files_hold_sixteen_batches_and_a_small_corpus_still_makes_several():
    assert rows_per_file(256, 10_000_000) == 256 * 16
    assert rows_per_file(256, 20_000) == 2_500  # eight files
    assert rows_per_file(8, 600) == 75
    assert rows_per_file(256, 1_321) == rows_per_file(256, 10) == 256  # never under one batch


def test_a_report_inside_an_input_or_around_one_is_refused_before_anything_is_written(tiny_bundle, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "rgb.png").write_bytes(good_images()["rgb.png"])
    for output in (corpus / "report", tmp_path):
        config = tiny_config(screen={"inputs": [str(corpus)], "output": str(output), "bundle": tiny_bundle})
        with pytest.raises(ConfigError, match=f"screen.output {output} and the input {corpus} overlap"):
            screen(config)
    assert sorted(path.name for path in corpus.iterdir()) == ["rgb.png"]
    beside = tmp_path / "corpus-report"  # a name that merely starts like the input's is fine
    summary, _ = screen(tiny_config(screen={"inputs": [str(corpus)], "output": str(beside), "bundle": tiny_bundle}))
    assert summary["rows"] == 1
