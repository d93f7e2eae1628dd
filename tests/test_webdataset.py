"""WebDataset input: real tar shards (written with tarfile) of real images, good and broken, read locally and
from moto's S3 server, through planning, the Ray Data read and a whole screening run; and the shard writer."""

import io
import json
import tarfile
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from rayood.config import CorpusSettings, S3Settings
from rayood.data.decode import DecodeLimits
from rayood.data.reader import read_decoded
from rayood.data.sources import InputError, plan_sources
from rayood.data.webdataset import (
    MEMBER_HIDDEN,
    MEMBER_NO_EXTENSION,
    PROBLEM_FIELD,
    BrokenSample,
    ShardReader,
    WebSample,
    count_samples,
    read_samples,
    sample_id,
    sample_row,
    split_member_name,
    split_sample_id,
    write_shards,
)
from rayood.screen.pipeline import screen
from rayood.storage import resolve
from tests.conftest import tiny_config
from tests.images import bad_images, good_images

BUCKET = "rayood-wds"
LOCAL = pafs.LocalFileSystem()


def make_shard(path, members: list[tuple[str, bytes]]) -> None:
    """A tar written by Python's tarfile, as webdataset's and img2dataset's writers do."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def img2dataset_sample(key: str, image_name: str, image: bytes) -> list[tuple[str, bytes]]:
    extension = image_name.split(".", 1)[1]
    meta = {"url": f"https://example.com/{image_name}", "caption": f"a {image_name}", "key": key, "status": "success"}
    text, metadata = meta["caption"].encode(), json.dumps(meta).encode()
    return [(f"{key}.{extension}", image), (f"{key}.txt", text), (f"{key}.json", metadata)]


def build_corpus(root) -> dict[str, dict]:
    """Three shards like img2dataset's; returns (shard file, key) -> the status and error text each must get."""
    root.mkdir()
    expected: dict[tuple[str, str | None], dict] = {}
    good = sorted(good_images().items())
    members = []
    for index, (name, data) in enumerate(good):
        key = f"00000{index:04d}"
        members += img2dataset_sample(key, name, data)
        expected[("00000.tar", key)] = {"status": "ok", "url": f"https://example.com/{name}"}
    make_shard(root / "00000.tar", members)
    (root / "00000_stats.json").write_text(json.dumps({"successes": len(good)}))  # img2dataset's sidecar

    bad = bad_images()
    members = img2dataset_sample("000010000", "rgb.png", good_images()["rgb.png"])
    members += img2dataset_sample("000010001", "text.jpg", bad["text.jpg"][0])
    members += img2dataset_sample("000010002", "truncated.jpg", bad["truncated.jpg"][0])
    members += [("000010003.json", json.dumps({"url": "https://example.com/gone", "status": "failed"}).encode())]
    members += img2dataset_sample("000010004", "rgb.jpg", good_images()["rgb.jpg"])
    members += [("README", b"no extension: part of no sample"), ("._000010004.jpg", b"macOS resource fork")]
    make_shard(root / "00001.tar", members)
    expected[("00001.tar", "000010000")] = {"status": "ok"}
    expected[("00001.tar", "000010001")] = {"status": "error", "error": "not an image"}
    expected[("00001.tar", "000010002")] = {"status": "error", "error": "truncated"}
    expected[("00001.tar", "000010003")] = {"status": "error", "error": "has no image member"}
    expected[("00001.tar", "000010004")] = {"status": "ok"}

    members = []
    for index in range(4):
        members += img2dataset_sample(f"00002{index:04d}", "rgb.png", good_images()["rgb.png"])
    make_shard(root / "00002.tar", members)
    whole = (root / "00002.tar").read_bytes()
    with tarfile.open(root / "00002.tar") as archive:
        third = archive.getmember("000020002.png")
    (root / "00002.tar").write_bytes(whole[: third.offset_data + third.size // 2])  # cut inside the third image
    expected[("00002.tar", "000020000")] = {"status": "ok"}
    expected[("00002.tar", "000020001")] = {"status": "ok"}
    expected[("00002.tar", "000020002")] = {"status": "error", "error": "is truncated"}
    return expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds") / "shards"
    return root, build_corpus(root)


@pytest.fixture(scope="module")
def s3_corpus(s3_server, corpus):
    root, expected = corpus
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    for path in root.iterdir():
        client.upload_file(str(path), BUCKET, f"laion/{path.name}")
    return f"s3://{BUCKET}/laion", expected


def check_rows(rows: list[dict], expected: dict, shard_uri) -> None:
    """Every sample exactly once, with its status, error text, shard and key; ids are ``<shard>#<key>``."""
    seen = {}
    for row in rows:
        shard_file = row["shard"].rsplit("/", 1)[1]
        assert row["shard"] == shard_uri(shard_file)
        assert row["id"] == f"{row['shard']}#{row['key']}" and split_sample_id(row["id"]) == (row["shard"], row["key"])
        assert (shard_file, row["key"]) not in seen, f"{row['id']} twice"
        seen[(shard_file, row["key"])] = row
    assert set(seen) == set(expected)
    for where, want in expected.items():
        row = seen[where]
        assert row["status"] == want["status"], (where, row["error"])
        if want["status"] == "error":
            assert want["error"] in row["error"], (where, row["error"])
        else:
            assert row["error"] is None
    cut = seen[("00002.tar", "000020002")]["error"]
    assert shard_uri("00002.tar") in cut and "later samples are lost" in cut


def test_member_names_split_into_key_and_extension():
    assert split_member_name("000000001.jpg") == ("000000001", "jpg")
    assert split_member_name("part/a/000001.seg.png") == ("part/a/000001", "seg.png")
    assert split_member_name("._000001.jpg") is None and split_member_name("README") is None
    assert split_sample_id(sample_id("s3://b/p/00001.tar", "dir/000010001")) == ("s3://b/p/00001.tar", "dir/000010001")
    assert split_sample_id(sample_id("/data/00001.tar", None)) == ("/data/00001.tar", None)


def test_planning_counts_samples_from_headers_and_skips_sidecars(corpus, caplog):
    root, expected = corpus
    (plan,) = plan_sources([str(root)], CorpusSettings())
    assert plan.kind == "webdataset" and plan.rows == len(expected)
    shard = str(root / "00001.tar")
    assert sorted(plan.left_out) == [
        (MEMBER_HIDDEN, f"{shard}#._000010004.jpg"),
        (MEMBER_NO_EXTENSION, f"{shard}#README"),
    ]
    assert "left out 1 entries (shard member without an extension)" in caplog.text
    assert [p.rsplit("/", 1)[1] for p in plan.paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert plan.skipped_files == (str(root / "00000_stats.json"),)
    (single,) = plan_sources([str(root / "00002.tar")], CorpusSettings())
    assert single.kind == "webdataset" and single.rows == 3


def test_a_directory_mixing_shards_and_images_is_refused(corpus, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "00000.tar").write_bytes((corpus[0] / "00000.tar").read_bytes())
    (mixed / "photo.png").write_bytes(good_images()["rgb.png"])
    with pytest.raises(InputError, match="both WebDataset shards"):
        plan_sources([str(mixed)], CorpusSettings())


def cut_points(path) -> dict[str, int]:
    """Where to cut a three-sample shard: inside the last image's data, on its header, inside its header."""
    with tarfile.open(path) as archive:
        last = archive.getmember("000000002.jpg")
    return {"in data": last.offset_data + 10, "at a header": last.offset, "in a header": last.offset + 100}


@pytest.mark.parametrize("where", ["in data", "at a header", "in a header", "garbage header", "not a tar"])
def test_a_broken_shard_keeps_what_precedes_the_break_and_counts_what_it_reads(tmp_path, where):
    """The sample being read when the shard breaks is the one error row: cut inside its data, it is the
    member's sample; cut at or in a header, the sample before it (whose last member may be missing)."""
    path = tmp_path / "shard.tar"
    image = good_images()["rgb.jpg"]
    samples = [WebSample(f"00000000{i}", {"jpg": image, "txt": str(i).encode()}) for i in range(3)]
    make_shard(path, [(f"{s.key}.{ext}", data) for s in samples for ext, data in s.files.items()])
    data = path.read_bytes()
    if where == "garbage header":
        offset = cut_points(path)["at a header"]
        path.write_bytes(data[:offset] + b"\x7f" * 512 + data[offset + 512 :])
    elif where == "not a tar":
        path.write_bytes(b"<html>403 Forbidden</html>")
    else:
        path.write_bytes(data[: cut_points(path)[where]])
    read = list(read_samples(LOCAL, str(path), "s3://b/shard.tar"))
    assert count_samples(LOCAL, str(path), "s3://b/shard.tar").rows == len(read)
    *complete, broken = read
    assert isinstance(broken, BrokenSample) and "s3://b/shard.tar" in broken.error
    if where == "not a tar":
        assert complete == [] and broken.key is None and "not a readable tar" in broken.error
    elif where == "in data":
        assert complete == samples[:2] and broken.key == "000000002"
        assert "truncated" in broken.error and "inside 000000002.jpg" in broken.error
    else:
        assert complete == samples[:1] and broken.key == "000000001" and "may be incomplete" in broken.error
        assert ("corrupt" if where == "garbage header" else "truncated") in broken.error


def test_split_samples_and_repeated_members_are_error_rows_not_merges(tmp_path):
    path = tmp_path / "shard.tar"
    image = good_images()["rgb.jpg"]
    make_shard(
        path,
        [
            ("a.jpg", image),
            ("b.jpg", image),
            ("a.txt", b"late"),
            ("c.jpg", image),
            ("c.jpg", image),
            ("._d.jpg", b"AppleDouble"),
            ("d", b"no extension"),
            ("d.png", good_images()["rgb.png"]),
        ],
    )
    samples = list(read_samples(LOCAL, str(path), "shard.tar"))
    assert count_samples(LOCAL, str(path), "shard.tar").rows == len(samples) == 5
    assert [isinstance(s, WebSample) for s in samples] == [True, True, False, False, True]
    assert [s.key for s in samples] == ["a", "b", "a#part2", "c", "d"], "one id per row, also for repeats"
    assert "not adjacent" in samples[2].error and "two members named c.jpg" in samples[3].error
    assert samples[4].files == {"png": good_images()["rgb.png"]}


def test_a_json_member_that_cannot_be_read_is_that_samples_error_row(tmp_path):
    """Deep nesting raises RecursionError in the JSON parser: it must not kill the read (and every resume)."""
    path = tmp_path / "shard.tar"
    image = good_images()["rgb.jpg"]
    deep = b"[" * 100_000 + b"]" * 100_000
    make_shard(path, [("a.jpg", image), ("a.json", deep), ("b.jpg", image), ("b.json", b'{"url": "x"}')])
    rows = [sample_row(s, "shard.tar", ("jpg",), ("url",)) for s in read_samples(LOCAL, str(path), "shard.tar")]
    assert "RecursionError" in rows[0][PROBLEM_FIELD] and rows[0]["id"] == "shard.tar#a"
    assert rows[1][PROBLEM_FIELD] is None and rows[1]["url"] == "x"


def test_hard_links_read_their_targets_data_and_symbolic_links_are_error_rows(tmp_path):
    """GNU tar stores a repeated file as a hard link: that sample is screened with the target's bytes. A
    symbolic link is never followed (it could name any file of the reading machine), but is still a row."""
    path = tmp_path / "shard.tar"
    image = good_images()["rgb.jpg"]
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("a.jpg")
        info.size = len(image)
        archive.addfile(info, io.BytesIO(image))
        for name, kind, target in [
            ("b.jpg", tarfile.LNKTYPE, "a.jpg"),
            ("c.jpg", tarfile.SYMTYPE, "/etc/passwd"),
            ("d.jpg", tarfile.LNKTYPE, "missing.jpg"),
        ]:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, target
            archive.addfile(link)
    samples = list(read_samples(LOCAL, str(path), "shard.tar"))
    assert count_samples(LOCAL, str(path), "shard.tar").rows == len(samples) == 4
    assert samples[:2] == [WebSample("a", {"jpg": image}), WebSample("b", {"jpg": image})]
    assert "symbolic link (to /etc/passwd), which is not followed" in samples[2].error
    assert "hard link to missing.jpg" in samples[3].error


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_a_member_over_max_bytes_is_an_error_row_without_being_read(tmp_path):
    """The tar header gives the size: a member over the limit never reaches memory (issue 12, item 7)."""
    from rayood.data.webdataset import _walk

    path = tmp_path / "shard.tar"
    image = good_images()["rgb.jpg"]
    make_shard(path, [("big.png", b"\0" * (4 << 20)), ("big.json", b"{}"), ("small.jpg", image)])
    data = path.read_bytes()
    handle = CountingReader(data)
    samples = list(_walk(handle, len(data), "shard.tar", with_data=True, max_member_bytes=1 << 20))
    assert (
        isinstance(samples[0], BrokenSample)
        and "big.png has 4194304 bytes > max_bytes 1048576 (not read)" in samples[0].error
    )
    assert samples[1] == WebSample("small", {"jpg": image})
    assert handle.bytes_read < 1 << 20


def test_an_image_file_over_max_bytes_is_an_error_row_without_being_read(ray_cluster, tmp_path):
    """Its size comes from the listing: a sparse 4 GiB file is never read into a read task's memory."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "small.jpg").write_bytes(good_images()["rgb.jpg"])
    with open(tmp_path / "corpus" / "huge.png", "wb") as huge:
        huge.truncate(4 << 30)
    plans = plan_sources([str(tmp_path / "corpus")], CorpusSettings())
    rows = (
        read_decoded(plans, image_column="image", id_column="id", size=32, limits=DecodeLimits())
        .drop_columns(["pixels"])
        .take_all()
    )
    by_id = {row["id"]: row for row in rows}
    assert by_id[str(tmp_path / "corpus" / "small.jpg")]["status"] == "ok"
    huge_row = by_id[str(tmp_path / "corpus" / "huge.png")]
    assert (
        huge_row["status"] == "error"
        and f"{4 << 30} bytes > max_bytes" in huge_row["error"]
        and "(not read)" in huge_row["error"]
    )


def test_a_shard_streams_out_in_bounded_blocks(corpus):
    root, expected = corpus
    shards = pa.table({"path": [str(root / "00000.tar"), str(root / "00001.tar")], "shard": ["a.tar", "b.tar"]})
    blocks = list(ShardReader(LOCAL, CorpusSettings().file_extensions, ("url",), rows_per_block=3)(shards))
    assert [block.num_rows for block in blocks] == [3, 3, 3, 3, 3, 1]  # 11 + 5 samples, never a whole shard
    assert sum(block.column("image").null_count for block in blocks) == 1  # the sample with only a .json
    one_byte = list(ShardReader(LOCAL, CorpusSettings().file_extensions, bytes_per_block=1)(shards))
    assert len(one_byte) == 15 and one_byte[-1].num_rows == 2  # the block after the image-less sample holds two


def test_read_decoded_yields_every_sample_once_with_shard_key_and_metadata(ray_cluster, corpus):
    root, expected = corpus
    plans = plan_sources([str(root)], CorpusSettings(), extra_columns=("url", "caption", "txt"))
    decoded = read_decoded(
        plans,
        image_column="image",
        id_column="id",
        size=32,
        limits=DecodeLimits(),
        passthrough=("url", "caption", "txt"),
        batch_size=4,
    )
    rows = decoded.drop_columns(["pixels"]).take_all()
    assert len(rows) == plans[0].rows
    check_rows(rows, expected, lambda name: str(root / name))
    first = next(r for r in rows if r["key"] == "000000000")
    assert first["url"] == expected[("00000.tar", "000000000")]["url"]
    assert first["caption"] == first["txt"] == "a " + first["url"].rsplit("/", 1)[1]
    assert next(r for r in rows if r["key"] == "000010003")["url"] == "https://example.com/gone"  # on error rows too
    assert {r["source"] for r in rows} == {str(root)}


def test_screening_local_and_s3_shards_reports_the_planned_rows(tiny_bundle, s3_server, corpus, s3_corpus, tmp_path):
    root, expected = corpus
    prefix, _ = s3_corpus
    output = tmp_path / "report"
    config = tiny_config(
        s3={"endpoint_url": s3_server},
        screen={
            "inputs": [str(root), prefix],
            "output": str(output),
            "bundle": tiny_bundle,
            "passthrough_columns": ["shard", "key", "url"],
        },
    )
    summary, _ = screen(config)
    assert summary["rows"] == summary["expected_rows"] == 2 * len(expected)
    assert summary["errors"] == 2 * sum(want["status"] == "error" for want in expected.values())
    report = pads.dataset(str(output / "rows"), format="parquet").to_table().to_pylist()
    for source, shard_uri in ((str(root), lambda name: str(root / name)), (prefix, lambda name: f"{prefix}/{name}")):
        rows = [row for row in report if row["source"] == source]
        check_rows(rows, expected, shard_uri)
        assert all((row["score_layerwise_mfsim"] is None) == (row["status"] == "error") for row in rows)
    assert (output / "_SUCCESS").exists()
    assert summary["left_out_entries"] == {MEMBER_HIDDEN: 2, MEMBER_NO_EXTENSION: 2}  # one each in both copies


def test_written_shards_read_back_with_tarfile_and_the_reader(s3_server, s3_corpus, tmp_path):
    images = good_images()
    samples = [
        WebSample(f"{i:09d}", {name.split(".", 1)[1]: data, "json": json.dumps({"key": f"{i:09d}"}).encode()})
        for i, (name, data) in enumerate(sorted(images.items()))
    ]
    uris = write_shards(samples, resolve(str(tmp_path / "kept")), prefix="part-", max_samples=4)
    assert [uri.rsplit("/", 1)[1] for uri in uris] == ["part-00000.tar", "part-00001.tar", "part-00002.tar"]
    first_image = min(images).split(".", 1)[1]
    with tarfile.open(uris[0]) as archive:
        assert archive.getnames()[:2] == [f"000000000.{first_image}", "000000000.json"]
        assert archive.extractfile(f"000000000.{first_image}").read() == samples[0].files[first_image]
    back = [sample for uri in uris for sample in read_samples(LOCAL, uri, uri)]
    assert back == samples
    again = write_shards(samples, resolve(str(tmp_path / "again")), prefix="part-", max_samples=4)
    assert [Path(uri).read_bytes() for uri in again] == [Path(uri).read_bytes() for uri in uris], "deterministic"

    by_size = write_shards(samples, resolve(str(tmp_path / "by-size")), max_bytes=1)
    assert len(by_size) == len(samples), "a sample larger than max_bytes gets a shard of its own"

    remote = resolve(f"s3://{BUCKET}/kept", S3Settings(endpoint_url=s3_server))
    (uri,) = write_shards(samples, remote)
    assert uri == f"s3://{BUCKET}/kept/00000.tar"
    assert list(read_samples(remote.fs, f"{BUCKET}/kept/00000.tar", uri)) == samples


@pytest.mark.parametrize(
    "key, files, match",
    [
        ("a.b", {"jpg": b"x"}, "no dot"),
        ("", {"jpg": b"x"}, "no dot"),
        ("a", {}, "no files"),
        ("a", {"": b"x"}, "invalid extension"),
    ],
)
def test_the_writer_refuses_samples_that_would_not_read_back(tmp_path, key, files, match):
    with pytest.raises(ValueError, match=match):
        write_shards([WebSample(key, files)], resolve(str(tmp_path)))


def test_the_writer_refuses_a_key_twice_in_a_shard(tmp_path):
    with pytest.raises(ValueError, match="repeats"):
        write_shards([WebSample("a", {"jpg": b"x"}), WebSample("a", {"txt": b"y"})], resolve(str(tmp_path)))
