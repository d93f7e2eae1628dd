"""Transient S3 faults on the wire (issue 12): a fault-injecting proxy in front of moto answers some requests
with 503 SlowDown or 500, drops some connections and stalls some. A fit and a screening run through it
finish, every row comes out once, and the scores equal those of an undisturbed run."""

import boto3
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rayood.screen.pipeline import screen
from rayood.train.fit import fit
from tests.conftest import NO_DDP, tiny_config
from tests.faulty_proxy import FaultyProxy

BUCKET = "rayood-faults"
FAULTS = {"slow_down": (7, 3), "internal": (11, 5), "drop": (13, 7), "stall": (17, 9)}


def report(output):
    table = pads.dataset(f"{output}/rows", format="parquet").to_table().to_pandas()
    return table.set_index("id").sort_index()


def test_a_fit_and_a_screening_run_through_transient_faults_match_an_undisturbed_run(
    ray_cluster, s3_server, demo_data, tmp_path
):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    fit_path, corpus = demo_data
    client.upload_file(str(fit_path), BUCKET, "id/fit.parquet")
    sample = pq.read_table(corpus / "corpus.parquet").slice(0, 160)
    pq.write_table(sample.slice(0, 80), tmp_path / "a.parquet")
    pq.write_table(sample.slice(80), tmp_path / "b.parquet")
    for name in ("a", "b"):
        client.upload_file(str(tmp_path / f"{name}.parquet"), BUCKET, f"corpus/{name}.parquet")
    port = int(s3_server.rsplit(":", 1)[1])

    with FaultyProxy(port, FAULTS, stall_s=1.0) as proxy:
        faulty = {"endpoint_url": proxy.url}
        bundle = str(tmp_path / "bundle")
        config = tiny_config(
            s3=faulty, model=NO_DDP,
            train={"data": [f"s3://{BUCKET}/id/fit.parquet"], "bundle": bundle, "checkpoint_path": str(tmp_path / "ckpt"),
                   "backbone": {"epochs": 1, "batch_size": 64, "lr": 0.05}, "layerwise": {"epochs": 2, "batch_size": 64}},
            screen={"inputs": [f"s3://{BUCKET}/corpus"], "output": str(tmp_path / "disturbed"), "bundle": bundle},
        )
        fit(config)
        disturbed_summary, _ = screen(config)
    print(f"proxy: {proxy.requests} requests, faults {dict(proxy.faults)}")
    assert all(proxy.faults[kind] > 0 for kind in FAULTS), proxy.faults

    calm = config.model_copy(update={
        "s3": config.s3.model_copy(update={"endpoint_url": s3_server}),
        "screen": config.screen.model_copy(update={"output": str(tmp_path / "undisturbed")}),
    })
    calm_summary, _ = screen(calm)
    assert disturbed_summary["rows"] == calm_summary["rows"] == disturbed_summary["expected_rows"] == 160
    disturbed, undisturbed = report(tmp_path / "disturbed"), report(tmp_path / "undisturbed")
    assert disturbed.index.is_unique and list(disturbed.index) == list(undisturbed.index)
    assert (disturbed["status"] == undisturbed["status"]).all()
    for column in (c for c in disturbed.columns if c.startswith("score_")):
        np.testing.assert_allclose(disturbed[column], undisturbed[column], rtol=1e-5, err_msg=column)
