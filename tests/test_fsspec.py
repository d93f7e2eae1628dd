"""Any fsspec URI for inputs, bundles and reports: fsspec's in-memory filesystem for the storage layer and the
bundle format, and a folder of images screened over HTTP from a local ``http.server``."""

from __future__ import annotations

import functools
import http.server
import logging
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from rayood import http_spool
from rayood.bundle import new_manifest, read_calibration, read_manifest, write_calibration, write_manifest
from rayood.config import CorpusSettings, ModelSettings
from rayood.data.sources import InputError, plan_sources
from rayood.manifest import CalibrationRecord
from rayood.screen.pipeline import screen
from rayood.storage import StorageError, redacted, resolve
from tests.conftest import tiny_config
from tests.images import bad_images, good_images

FEATURE_SCORES = ("msp", "energy", "maxlogit", "mahalanobis", "knn", "multiscale")  # no per-id noise in these


def test_an_fsspec_uri_reads_writes_and_lists_like_a_local_path():
    location = resolve("memory://rayood-test/store/")
    assert location.uri == "memory://rayood-test/store" and location.uri_prefix == "memory://"
    location.join("a", "one.bin").write_bytes(b"1")
    location.join("two.bin").write_bytes(b"22")
    files = location.list_files()
    assert [(location.uri_of(f.path), f.size) for f in files] == [
        ("memory:///rayood-test/store/a/one.bin", 1),
        ("memory:///rayood-test/store/two.bin", 2),
    ]
    assert resolve(location.uri_of(files[1].path)).read_bytes() == b"22"


def test_a_bundle_manifest_and_calibration_on_an_fsspec_uri():
    uri = "memory://rayood-test/bundle"
    bundle = resolve(uri)
    manifest = new_manifest(ModelSettings(), ["a", "b"], [8, 16], 16, written=())
    write_calibration(bundle, {name: np.arange(4.0) for name in manifest.scores})
    manifest = manifest.model_copy(update={"calibration": CalibrationRecord(file="calibration.parquet", rows=4)})
    write_manifest(bundle, manifest)
    assert read_manifest(uri) == manifest
    np.testing.assert_array_equal(read_calibration(uri)["msp"], np.arange(4.0))


def test_unknown_schemes_and_missing_filesystem_packages_are_clear_errors():
    with pytest.raises(StorageError, match="unsupported URI scheme in 'nope://x'"):
        resolve("nope://x")
    with pytest.raises(StorageError, match=r"gs:// needs an extra package.*gcsfs"):  # not a rayood dependency
        resolve("gs://bucket/images")


def test_reports_record_urls_without_their_secrets():
    assert redacted({"bundle": "https://user:pw@host.example/b?sig=abc", "n": 3, "inputs": ["s3://b/k", "/local"]}) == {
        "bundle": "https://host.example/b?redacted",
        "n": 3,
        "inputs": ["s3://b/k", "/local"],
    }


@pytest.fixture
def http_images(tmp_path):
    """Image files (good, bad, in a subfolder), and the same images as one Parquet file, served over HTTP on
    loopback by Python's own server, which ignores Range headers (it answers a ranged GET with the whole file)."""
    root = tmp_path / "site" / "images"
    (root / "more").mkdir(parents=True)
    for name, data in good_images().items():
        (root / name).write_bytes(data)
    for name, (data, _) in bad_images().items():
        (root / "more" / name).write_bytes(data)
    images = {**good_images(), **{name: data for name, (data, _) in bad_images().items()}}
    pq.write_table(pa.table({"image": list(images.values()), "id": list(images)}), tmp_path / "site" / "images.parquet")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=root.parent))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/images/", root
    server.shutdown()


def test_a_folder_of_images_over_http_is_screened_like_the_same_folder_on_disk(tiny_bundle, http_images, tmp_path):
    url, local = http_images
    reports = {}
    for name, source in (("http", url), ("local", str(local))):
        output = tmp_path / name
        screen(tiny_config(screen={"inputs": [source], "output": str(output), "bundle": tiny_bundle}))
        table = pads.dataset(f"{output}/rows").to_table().sort_by("id")
        reports[name] = table
    over_http, on_disk = reports["http"], reports["local"]
    expected = len(good_images()) + len(bad_images())
    assert over_http.num_rows == on_disk.num_rows == expected
    ids = over_http.column("id").to_pylist()
    assert all(i.startswith(url) for i in ids) and len(set(ids)) == expected
    assert [i[len(url) :] for i in ids] == [i[len(str(local)) + 1 :] for i in on_disk.column("id").to_pylist()]
    assert over_http.column("status").to_pylist() == on_disk.column("status").to_pylist()
    assert over_http.column("status").to_pylist().count("ok") == len(good_images())
    for score in FEATURE_SCORES:
        np.testing.assert_allclose(
            over_http.column(f"score_{score}").to_numpy(zero_copy_only=False),
            on_disk.column(f"score_{score}").to_numpy(zero_copy_only=False),
            rtol=1e-5,
            equal_nan=True,
        )


def test_parquet_on_a_server_without_range_support_is_screened_from_one_local_copy(
    tiny_bundle, http_images, tmp_path, caplog
):
    url, local = http_images
    remote, on_disk = url.replace("/images/", "/images.parquet"), str(local.parent / "images.parquet")
    reports = {}
    with caplog.at_level(logging.WARNING, logger="rayood.http_spool"):
        for name, source in (("http", remote), ("local", on_disk)):
            summary, _ = screen(
                tiny_config(screen={"inputs": [source], "output": str(tmp_path / name), "bundle": tiny_bundle})
            )
            reports[name] = pads.dataset(f"{tmp_path / name}/rows").to_table().sort_by("id")
    assert f"{remote}: the server does not serve byte ranges; reading it from a local copy" in caplog.text
    over_http, from_disk = reports["http"], reports["local"]
    assert over_http.num_rows == from_disk.num_rows == len(good_images()) + len(bad_images()) == summary["rows"]
    assert over_http.column("id").to_pylist() == from_disk.column("id").to_pylist()
    assert over_http.column("status").to_pylist() == from_disk.column("status").to_pylist()
    for score in FEATURE_SCORES:
        np.testing.assert_allclose(
            over_http.column(f"score_{score}").to_numpy(zero_copy_only=False),
            from_disk.column(f"score_{score}").to_numpy(zero_copy_only=False),
            rtol=1e-5,
            equal_nan=True,
        )


def test_a_rangeless_file_too_large_for_the_spool_is_a_clear_input_error(http_images, monkeypatch):
    url, _ = http_images
    monkeypatch.setattr(http_spool, "SPOOL_MAX_BYTES", 1000)
    monkeypatch.setattr(http_spool, "_spooled", {})
    with pytest.raises(InputError, match="does not serve byte ranges, and the file .* does not fit the local spool"):
        plan_sources([url.replace("/images/", "/images.parquet")], CorpusSettings())


def test_spooled_copies_are_deleted_when_the_process_ends(http_images, monkeypatch):
    url, _ = http_images
    monkeypatch.setattr(http_spool, "_spooled", {})
    location = resolve(url.replace("/images/", "/images.parquet"))
    with location.fs.open_input_file(location.path) as handle:
        assert pq.ParquetFile(handle).metadata.num_rows == len(good_images()) + len(bad_images())
    (copy,) = http_spool._spooled.values()
    assert os.path.exists(copy)
    http_spool._delete_spool()  # what atexit runs
    assert not os.path.exists(copy)
