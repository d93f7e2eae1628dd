"""A fit to S3 and a screening run from and to S3, both through transient faults on the wire (issue 12): a
fault-injecting proxy in front of moto answers some requests with 503 SlowDown or 500, drops some connections
and stalls some. The bundle and Ray Train's checkpoints land on S3, every input row (Parquet and image files,
good and bad) comes out once, and the scores equal those of a screening run that saw no faults."""

import json

import boto3
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from rayood.bundle_models import load_bundle
from rayood.config import S3Settings
from rayood.screen.pipeline import screen
from rayood.storage import resolve
from rayood.train.fit import fit
from tests.conftest import NO_LAYERWISE, tiny_config
from tests.faulty_proxy import FaultyProxy
from tests.images import bad_images, good_images

BUCKET = "rayood-faults"
FAULTS = {"slow_down": (7, 3), "internal": (11, 5), "drop": (13, 7), "stall": (17, 9)}
CORPUS_ROWS = 160


def report(uri: str, s3: S3Settings):
    rows = resolve(uri, s3).join("rows")
    table = pads.dataset(rows.path, filesystem=rows.fs, format="parquet").to_table().to_pandas()
    return table.set_index("id").sort_index()


def upload_inputs(client, demo_data, tmp_path) -> None:
    """The ID corpus, a corpus in two Parquet files, and a prefix of image files, good and bad."""
    client.create_bucket(Bucket=BUCKET)
    fit_path, corpus = demo_data
    client.upload_file(str(fit_path), BUCKET, "id/fit.parquet")
    sample = pq.read_table(corpus / "corpus.parquet").slice(0, CORPUS_ROWS)
    for name, part in (("a", sample.slice(0, CORPUS_ROWS // 2)), ("b", sample.slice(CORPUS_ROWS // 2))):
        pq.write_table(part, tmp_path / f"{name}.parquet")
        client.upload_file(str(tmp_path / f"{name}.parquet"), BUCKET, f"corpus/{name}.parquet")
    for name, data in good_images().items():
        client.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)
    for name, (data, _) in bad_images().items():
        client.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)


def test_a_fit_to_s3_and_a_screening_through_transient_faults_match_an_undisturbed_run(
    ray_cluster, s3_server, demo_data, tmp_path
):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    upload_inputs(client, demo_data, tmp_path)
    port = int(s3_server.rsplit(":", 1)[1])
    bundle = f"s3://{BUCKET}/bundles/tiny"

    with FaultyProxy(port, FAULTS, stall_s=0.2) as proxy:  # a fit makes ~2,000 requests, one in 17 stalls
        config = tiny_config(
            s3={"endpoint_url": proxy.url},
            model=NO_LAYERWISE,  # one Ray Train stage is enough here
            train={
                "data": [f"s3://{BUCKET}/id/fit.parquet"],
                "bundle": bundle,
                "checkpoint_path": f"s3://{BUCKET}/checkpoints",
                "backbone": {"epochs": 2, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1},
            },
            screen={
                "inputs": [f"s3://{BUCKET}/corpus", f"s3://{BUCKET}/images"],
                "output": f"s3://{BUCKET}/reports/disturbed",
                "bundle": bundle,
                "decision": {"score": "knn"},
            },
        )
        assert fit(config) == bundle
        disturbed_summary, disturbed_uri = screen(config)
    print(f"proxy: {proxy.requests} requests, faults {dict(proxy.faults)}")
    assert all(proxy.faults[kind] > 0 for kind in FAULTS), proxy.faults

    calm_s3 = config.s3.model_copy(update={"endpoint_url": s3_server})
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="bundles/tiny/")["Contents"]}
    assert {
        f"bundles/tiny/{n}" for n in ("manifest.json", "backbone.pt", "multiscale_bank.npy", "calibration.parquet")
    } <= keys
    assert client.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/")["KeyCount"] > 0, "Ray Train checkpoints on S3"
    assert load_bundle(bundle, calm_s3).calibration is not None

    calm = config.model_copy(
        update={
            "s3": calm_s3,
            "screen": config.screen.model_copy(update={"output": f"s3://{BUCKET}/reports/undisturbed"}),
        }
    )
    calm_summary, calm_uri = screen(calm)
    expected = CORPUS_ROWS + len(good_images()) + len(bad_images())
    for summary in (disturbed_summary, calm_summary):
        assert summary["rows"] == summary["expected_rows"] == expected and summary["errors"] == len(bad_images())
    disturbed, undisturbed = report(disturbed_uri, calm_s3), report(calm_uri, calm_s3)
    assert disturbed.index.is_unique and list(disturbed.index) == list(undisturbed.index)
    assert f"s3://{BUCKET}/images/rgb.png" in disturbed.index
    assert (disturbed["status"] == undisturbed["status"]).all()
    for column in (c for c in disturbed.columns if c.startswith("score_")):
        np.testing.assert_allclose(disturbed[column], undisturbed[column], rtol=1e-5, err_msg=column)
    assert (
        json.loads(client.get_object(Bucket=BUCKET, Key="reports/disturbed/summary.json")["Body"].read())["rows"]
        == expected
    )
    client.head_object(Bucket=BUCKET, Key="reports/disturbed/_SUCCESS")


def test_rayoods_own_reads_retry_a_get_answered_with_a_transient_error(s3_server):
    """pyarrow gives up on a GetObject answered with 503 SlowDown or 500 (a HEAD or a PUT it retries): the reads
    of bundle files, leases and report files retry it (``storage.retry_transient``)."""
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="rayood-reads")
    data = b'{"run_id": "r1"}' * 100
    client.put_object(Bucket="rayood-reads", Key="lease.json", Body=data)
    port = int(s3_server.rsplit(":", 1)[1])
    for kind in ("slow_down", "internal"):
        # a read is a HEAD and a GET: request 1 of every 4 is the first read's GET, request 3 its retry's
        with FaultyProxy(port, {kind: (4, 1)}) as proxy:
            location = resolve("s3://rayood-reads/lease.json", S3Settings(endpoint_url=proxy.url))
            assert location.read_bytes() == data
        assert proxy.faults[kind] == 1, (kind, proxy.faults, proxy.requests)
