"""The same pipeline against a real S3 API: moto's standalone server on 127.0.0.1."""

import io
import json

import boto3
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from rayood.bundle_models import load_bundle
from rayood.config import S3Settings
from rayood.data.sources import InputError, plan_sources
from rayood.screen.pipeline import screen
from rayood.storage import resolve
from rayood.train.fit import fit
from tests.conftest import NO_DDP, tiny_config
from tests.images import bad_images, good_images

BUCKET = "rayood-test"


@pytest.fixture(scope="module")
def bucket(s3_server, demo_data):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    fit_path, corpus = demo_data
    client.upload_file(str(fit_path), BUCKET, "id/fit.parquet")
    client.upload_file(str(corpus / "corpus.parquet"), BUCKET, "corpus/part-0.parquet")
    for name, data in good_images().items():
        client.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)
    for name, (data, _) in bad_images().items():
        client.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)
    return client


def s3_config(endpoint, **sections):
    return tiny_config(s3={"endpoint_url": endpoint}, model=NO_DDP, **sections)


def test_fit_to_s3_then_screen_from_and_to_s3(ray_cluster, s3_server, bucket):
    bundle = f"s3://{BUCKET}/bundles/tiny"
    config = s3_config(
        s3_server,
        train={
            "data": [f"s3://{BUCKET}/id/fit.parquet"], "bundle": bundle,
            "checkpoint_path": f"s3://{BUCKET}/checkpoints",
            "backbone": {"epochs": 1, "batch_size": 64, "lr": 0.05}, "layerwise": {"epochs": 5, "batch_size": 64},
        },
        screen={
            "inputs": [f"s3://{BUCKET}/corpus", f"s3://{BUCKET}/images"], "output": f"s3://{BUCKET}/reports/run1",
            "bundle": bundle,
        },
    )
    assert fit(config) == bundle
    keys = {o["Key"] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix="bundles/tiny/")["Contents"]}
    assert {f"bundles/tiny/{n}" for n in ("manifest.json", "backbone.pt", "layerwise_denoiser.pt", "calibration.parquet")} <= keys
    assert bucket.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/")["KeyCount"] > 0, "Ray Train checkpoints on S3"
    assert load_bundle(bundle, config.s3).calibration is not None

    summary, report_uri = screen(config)
    corpus_rows = pq.read_table(io.BytesIO(bucket.get_object(Bucket=BUCKET, Key="corpus/part-0.parquet")["Body"].read())).num_rows
    expected = corpus_rows + len(good_images()) + len(bad_images())
    assert summary["rows"] == summary["expected_rows"] == expected
    assert summary["errors"] == len(bad_images())
    location = resolve(report_uri, S3Settings(endpoint_url=s3_server)).join("rows")
    report = pads.dataset(location.path, filesystem=location.fs, format="parquet").to_table()
    ids = report.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == expected
    assert f"s3://{BUCKET}/images/rgb.png" in ids
    assert json.loads(bucket.get_object(Bucket=BUCKET, Key="reports/run1/summary.json")["Body"].read())["rows"] == expected
    bucket.head_object(Bucket=BUCKET, Key="reports/run1/_SUCCESS")


def test_missing_prefix_and_unreachable_endpoint_fail_before_cluster_work(s3_server, bucket, tmp_path):
    config = s3_config(s3_server, screen={"inputs": [f"s3://{BUCKET}/missing"]})
    with pytest.raises(InputError, match="input not found"):
        plan_sources(config.screen.inputs, config.corpus, config.s3)
    dead = tiny_config(s3={"endpoint_url": "http://127.0.0.1:9", "retries": 0}, screen={"inputs": [f"s3://{BUCKET}/corpus"]})
    with pytest.raises(InputError, match="cannot reach"):
        plan_sources(dead.screen.inputs, dead.corpus, dead.s3)
