"""Fitting across Ray Train workers: every stage splits its data, and the bundle is as good as one worker's.
This is also the one test that fits and screens with DDP (the shared tiny bundle leaves it out: it is slow)."""

from __future__ import annotations

import json

from rayood.screen.pipeline import screen
from rayood.train.fit import fit
from tests.conftest import WITH_DDP, tiny_config

STRONG_SCORES = ("mahalanobis", "layerwise_mse", "knn", "multiscale")  # the ones well above chance on the demo


def _demo_aurocs(bundle: str, corpus, output) -> dict[str, float]:
    config = tiny_config(
        screen={
            "inputs": [str(corpus)],
            "output": str(output),
            "bundle": bundle,
            "batch_size": 128,
            "passthrough_columns": ["group"],
            "truth": {"column": "group", "id_values": ["id"]},
        }
    )
    summary, _ = screen(config)
    return {name: scores["auroc"] for name, scores in summary["evaluation"]["scores"].items()}


def test_two_workers_split_every_stage_and_fit_a_bundle_as_good_as_one(ray_cluster, tiny_bundle, demo_data, tmp_path):
    fit_path, corpus = demo_data
    bundle = str(tmp_path / "two-workers")
    fit(
        tiny_config(
            model=WITH_DDP,
            train={
                "data": [str(fit_path)],
                "bundle": bundle,
                "num_workers": 2,
                "cpus_per_worker": 0.5,
                "torch_threads": 1,
            },
        )
    )
    manifest = json.load(open(f"{bundle}/manifest.json"))
    train_rows = manifest["data"]["train_rows"]
    for stage in ("backbone", "layerwise", "ddp"):
        rows = manifest["training"][stage]["worker_rows"]
        # Ray Train splits datasets with equal=True: up to num_workers - 1 rows are left out to even the shards
        assert len(rows) == 2 and train_rows - 2 < sum(rows) <= train_rows, (stage, rows)
        assert min(rows) >= 0.4 * train_rows, f"{stage}: each worker should see about half: {rows}"
    single = json.load(open(f"{tiny_bundle}/manifest.json"))
    assert single["training"]["backbone"]["worker_rows"] == [train_rows]

    two, one = _demo_aurocs(bundle, corpus, tmp_path / "two"), _demo_aurocs(tiny_bundle, corpus, tmp_path / "one")
    assert {"ddp", "ddp_t40", "ddp_t80"} <= set(two) and not {"ddp"} & set(one), "DDP scores only from the DDP bundle"
    print("AUROC one worker, two:", {name: (round(one[name], 4), round(two[name], 4)) for name in one})
    # Tiny fits (4 epochs, 519 images) differ by up to ~0.1 AUROC between runs whose rows land on other workers
    # (two-worker knn 0.848 in one CI run, 0.789 in another, same code); per-worker batches (the bug this guards
    # against) lost 0.06-0.25 on every one of these scores, DLSR 0.911 -> 0.657.
    gaps = [one[name] - two[name] for name in STRONG_SCORES]
    assert sum(gaps) / len(gaps) < 0.1 and min(two[name] for name in STRONG_SCORES) > 0.75, (gaps, two)
