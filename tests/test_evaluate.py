"""The evaluation table and jobs/evaluate.py end to end on the demo's digits."""

import csv
import io
import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayood.evaluation.metrics import aupr_in, aupr_out, auroc, fpr_at_95_tpr
from rayood.evaluation.table import OODSet, evaluate_scores, to_markdown
from tests.test_jobs import run_job


def test_aupr_by_hand():
    id_scores, ood_scores = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.5, 0.6, 0.7])
    # OOD ranked first by score: P P P N P -> precisions 1, 1, 1, 4/5 at the positives; same for ID by -score
    assert aupr_out(id_scores, ood_scores) == pytest.approx((3 + 0.8) / 4)
    assert aupr_in(id_scores, ood_scores) == pytest.approx((3 + 0.8) / 4)
    # tied scores: both sets identical -> no separation either way
    assert fpr_at_95_tpr(np.ones(4), np.ones(4)) == pytest.approx(1.0)


def test_table_has_every_set_and_the_near_far_means():
    rng = np.random.default_rng(0)
    id_scores = {"good": rng.normal(size=200), "inverted": rng.normal(size=200)}
    oods = {
        name: {"good": rng.normal(shift, size=100), "inverted": rng.normal(-shift, size=100)}
        for name, shift in (("tin", 1.0), ("mnist", 3.0), ("dtd", 2.0))
    }
    sets = [OODSet("tin", "near"), OODSet("mnist", "far"), OODSet("dtd", "far")]
    rows = evaluate_scores(id_scores, oods, sets)
    by_key = {(row["score"], row["ood_set"]): row for row in rows}
    assert len(rows) == 2 * (3 + 2)
    far = [by_key[("good", name)]["auroc"] for name in ("mnist", "dtd")]
    assert by_key[("good", "far_mean")]["auroc"] == pytest.approx(np.mean(far))
    assert by_key[("good", "near_mean")]["auroc"] == pytest.approx(by_key[("good", "tin")]["auroc"])
    assert by_key[("inverted", "mnist")]["auroc"] < 0.5 < by_key[("good", "mnist")]["auroc"]
    markdown = to_markdown(rows, sets)
    header = next(line for line in markdown.splitlines() if line.startswith("| score"))
    assert header == "| score | tin | near (mean) | mnist | dtd | far (mean) |"
    good_row = next(line for line in markdown.splitlines() if line.startswith("| good"))
    assert good_row.count("**") == 2 * 5  # the better score is bold in every AUROC column


@pytest.fixture(scope="module")
def evaluation_sets(demo_data, tmp_path_factory):
    """The demo corpus split by its ground truth into an ID test set and two OOD sets."""
    root = tmp_path_factory.mktemp("eval_sets")
    corpus = pq.read_table(demo_data[1])
    paths = {}
    for group in ("id", "near_ood", "far_ood"):
        paths[group] = root / f"{group}.parquet"
        pq.write_table(corpus.filter(pc.equal(corpus.column("group"), group)), paths[group])
    return paths


def test_evaluate_job_end_to_end(ray_cluster, tiny_bundle, evaluation_sets, tmp_path):
    output = tmp_path / "evaluation"
    joined = {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    result = run_job(
        "evaluate.py",
        *[
            "--bundle",
            tiny_bundle,
            "--id",
            str(evaluation_sets["id"]),
            "--ood",
            f"digits59={evaluation_sets['near_ood']}",
            "--ood",
            f"photos={evaluation_sets['far_ood']}",
            "--near",
            "digits59",
            "--output",
            str(output),
        ],
        env=joined,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rows = list(csv.DictReader(io.StringIO((output / "metrics.csv").read_text())))
    report = pads.dataset(output / "report" / "rows", format="parquet").to_table()
    ok = report.filter(pc.equal(report.column("status"), "ok"))
    scores = sorted({row["score"] for row in rows})
    assert "fused" in scores and "layerwise_mfsim" in scores
    for row in rows:
        assert row["ood_set"] in {"digits59", "photos", "near_mean", "far_mean"}
        if row["ood_set"] == "photos":  # recomputed from the report's rows of each source
            values = {
                name: ok.filter(pc.equal(ok.column("source"), str(evaluation_sets[group])))
                .column(f"score_{row['score']}")
                .to_numpy()
                for name, group in (("id", "id"), ("photos", "far_ood"))
            }
            assert float(row["auroc"]) == pytest.approx(auroc(values["id"], values["photos"]), abs=1e-6)
    # sets told apart correctly: some detector separates the photo crops from held-out digits (mixed-up sets
    # would put every score near 0.5)
    assert max(float(r["auroc"]) for r in rows if r["ood_set"] == "photos") > 0.9
    # the classifier's accuracy on the labelled ID set, recomputed from the report's predicted_class
    evaluation = json.loads((output / "evaluation.json").read_text())
    id_rows = ok.filter(pc.equal(ok.column("source"), str(evaluation_sets["id"])))
    labels = dict(
        zip(*(pq.read_table(evaluation_sets["id"]).column(c).cast("string").to_pylist() for c in ("id", "label")))
    )
    predicted = id_rows.column("predicted_class").to_pylist()
    expected = np.mean([p == labels[i] for i, p in zip(id_rows.column("id").to_pylist(), predicted)])
    assert evaluation["id_accuracy"] == pytest.approx(expected) and expected > 0.5  # 5 classes: chance is 0.2
    assert 0.2 < evaluation["heldout_accuracy"] <= 1.0
    markdown = (output / "metrics.md").read_text()
    assert f"classifier accuracy {100 * expected:.2f}%" in markdown
    assert "**AUROC**" in markdown and "**FPR@95TPR**" in markdown and "| digits59 | near (mean) |" in markdown
    for name in scores:
        for kind in ("roc", "hist"):
            with Image.open(output / "plots" / f"{kind}_{name}.png") as image:
                assert image.format == "PNG" and image.size[0] > 200

    again = run_job("evaluate.py", *result.args[2:], env=joined)  # the same evaluation again
    assert again.returncode == 2 and "already holds an evaluation; pass --overwrite" in again.stderr


def test_evaluate_refuses_bad_arguments_before_screening(tiny_bundle, evaluation_sets, tmp_path):
    bad = run_job(
        "evaluate.py",
        *[
            "--bundle",
            tiny_bundle,
            "--id",
            str(evaluation_sets["id"]),
            "--ood",
            "no-equals-sign",
            "--output",
            str(tmp_path / "out"),
        ],
    )
    assert bad.returncode == 2 and "expected NAME=URI" in bad.stderr
    assert not (tmp_path / "out").exists()

    project = tmp_path / "project"  # `--output .` in a user's own folder: refused, nothing overwritten
    project.mkdir()
    (project / "metrics.csv").write_text("the user's own")
    (project / "notes.txt").write_text("keep me")
    refused = run_job(
        "evaluate.py",
        *[
            "--bundle",
            tiny_bundle,
            "--id",
            str(evaluation_sets["id"]),
            "--ood",
            f"photos={evaluation_sets['far_ood']}",
            "--output",
            str(project),
        ],
    )
    assert refused.returncode == 2 and "files rayood did not write (notes.txt)" in refused.stderr
    assert sorted(path.name for path in project.iterdir()) == ["metrics.csv", "notes.txt"]
    assert (project / "metrics.csv").read_text() == "the user's own"
