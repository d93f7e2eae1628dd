"""Permanent S3 errors against a real S3 API (moto's server): they fail the job with the object's URI,
before the cluster works when planning sees them, and without a hang when they appear mid-run."""

import boto3
import pytest

from rayood.data.sources import InputError, plan_sources
from rayood.screen import pipeline
from tests.conftest import tiny_config
from tests.images import good_images

BUCKET = "rayood-vanishing"
PLANNED = "rayood-planned"


@pytest.mark.parametrize("client", ["pyarrow", "s3fs"])
def test_a_missing_bucket_a_missing_prefix_and_an_unreachable_endpoint_fail_planning(s3_server, client):
    config = tiny_config(
        s3={"endpoint_url": s3_server, "retries": 0, "client": client},
        screen={"inputs": ["s3://rayood-no-such-bucket/images"]},
    )
    with pytest.raises(InputError, match="s3://rayood-no-such-bucket/images"):
        plan_sources(config.screen.inputs, config.corpus, config.s3)
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=PLANNED)
    missing = tiny_config(
        s3={"endpoint_url": s3_server, "client": client}, screen={"inputs": [f"s3://{PLANNED}/missing"]}
    )
    with pytest.raises(InputError, match="input not found"):
        plan_sources(missing.screen.inputs, missing.corpus, missing.s3)
    dead = tiny_config(
        s3={"endpoint_url": "http://127.0.0.1:9", "retries": 0, "client": client},
        screen={"inputs": [f"s3://{PLANNED}/corpus"]},
    )
    with pytest.raises(InputError, match="cannot reach"):
        plan_sources(dead.screen.inputs, dead.corpus, dead.s3)


def test_an_object_deleted_after_planning_fails_the_job_naming_it(
    ray_cluster, s3_server, tiny_bundle, tmp_path, monkeypatch
):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    for name, data in good_images().items():
        client.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)
    victim = f"images/{min(good_images())}"
    plan = pipeline.plan_sources

    def plan_then_lose_an_object(*args, **kwargs):  # the corpus changes under the run
        plans = plan(*args, **kwargs)
        client.delete_object(Bucket=BUCKET, Key=victim)
        return plans

    monkeypatch.setattr(pipeline, "plan_sources", plan_then_lose_an_object)
    output = tmp_path / "report"
    config = tiny_config(
        s3={"endpoint_url": s3_server, "retries": 1},
        screen={"inputs": [f"s3://{BUCKET}/images"], "output": str(output), "bundle": tiny_bundle},
    )
    with pytest.raises(InputError, match=f"cannot read s3://{BUCKET}/{victim} any more"):
        pipeline.screen(config)
    assert (output / "_STARTED").exists() and not (output / "_SUCCESS").exists()
