"""``s3.client: s3fs`` against a real S3 API (moto's server): the same screening report as pyarrow's client, and
what users pick s3fs for, a named profile of the AWS config files, really used."""

from __future__ import annotations

import boto3
import numpy as np
import pyarrow.dataset as pads
import pytest
from s3fs import S3FileSystem

from rayood.config import ConfigError, S3Settings
from rayood.screen.pipeline import screen
from rayood.storage import StorageError, resolve
from tests.conftest import tiny_config
from tests.images import bad_images, good_images

BUCKET = "rayood-clients"


def read_report(uri: str, s3: S3Settings):
    rows = resolve(uri, s3).join("rows")
    return (
        pads.dataset(rows.path, filesystem=rows.fs, format="parquet")
        .to_table()
        .to_pandas()
        .set_index("id")
        .sort_index()
    )


def test_both_clients_screen_an_s3_prefix_of_images_into_an_s3_report_alike(ray_cluster, s3_server, tiny_bundle):
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    for name, data in good_images().items():
        client.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)
    for name, (data, _) in bad_images().items():
        client.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)
    reports = {}
    for name in ("pyarrow", "s3fs"):
        s3 = {"endpoint_url": s3_server, "client": name}
        summary, uri = screen(
            tiny_config(
                s3=s3,
                screen={
                    "inputs": [f"s3://{BUCKET}/images"],
                    "output": f"s3://{BUCKET}/report-{name}",
                    "bundle": tiny_bundle,
                },
            )
        )
        assert summary["rows"] == summary["expected_rows"] == len(good_images()) + len(bad_images())
        reports[name] = read_report(uri, S3Settings(**s3))
    pyarrow, s3fs = reports["pyarrow"], reports["s3fs"]
    assert list(s3fs.index) == list(pyarrow.index) and all(
        uri.startswith(f"s3://{BUCKET}/images/") for uri in s3fs.index
    )
    errors = {"pyarrow": pyarrow["error"].fillna(""), "s3fs": s3fs["error"].fillna("")}
    assert (s3fs["status"] == pyarrow["status"]).all() and (errors["s3fs"] == errors["pyarrow"]).all(), [
        (a, b) for a, b in zip(errors["pyarrow"], errors["s3fs"]) if a != b
    ]
    for column in (c for c in pyarrow.columns if c.startswith("score_")):
        np.testing.assert_allclose(s3fs[column], pyarrow[column], rtol=1e-5, err_msg=column)


def test_s3fs_signs_with_a_named_profile_of_the_aws_config_files(s3_server, tmp_path, monkeypatch):
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket="rayood-profile")
    credentials = tmp_path / "credentials"
    credentials.write_text("[rayood-reader]\naws_access_key_id = profilekey\naws_secret_access_key = profilesecret\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    S3FileSystem.clear_instance_cache()  # fsspec reuses a filesystem made with the same arguments, and its keys

    with_profile = resolve(
        "s3://rayood-profile/note.txt", S3Settings(endpoint_url=s3_server, client="s3fs", profile="rayood-reader")
    )
    with_profile.write_bytes(b"signed with the profile's key")
    assert with_profile.read_bytes() == b"signed with the profile's key"
    without = resolve("s3://rayood-profile/note.txt", S3Settings(endpoint_url=s3_server, client="s3fs", retries=0))
    # s3fs reports a request it could not sign as a missing object (its message is the bare path)
    with pytest.raises(StorageError, match="cannot read s3://rayood-profile/note.txt"):
        without.read_bytes()


def test_s3fs_only_options_name_the_client_they_need():
    with pytest.raises(ConfigError, match="s3.*requester_pays need client: s3fs"):
        tiny_config(s3={"requester_pays": True})
    assert tiny_config(s3={"requester_pays": True, "client": "s3fs"}).s3.requester_pays
