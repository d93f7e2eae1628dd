"""Parquet inputs a job cannot read as configured (issue 12, item 6): every file's schema is checked at
planning, with an error naming the file and the column; per-row problems (an id that is not UTF-8) are error
rows, not a dead job."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayood.config import CorpusSettings
from rayood.data.decode import BatchDecoder, DecodeLimits
from rayood.data.sources import InputError, plan_source
from tests.images import good_images

PNG = good_images()["rgb.png"]


def write(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize(
    "columns, match",
    [
        ({"image": pa.array([PNG])}, r"b\.parquet lacks column\(s\) \['id'\]"),
        ({"id": ["x"], "image": ["not bytes"]}, r"b\.parquet column 'image' has type string"),
        (
            {"id": ["x"], "image": pa.array([{"path": "x.png"}])},
            r"b\.parquet column 'image' is a struct .* without a binary 'bytes'",
        ),
        ({"id": pa.array([[1]]), "image": pa.array([PNG])}, r"b\.parquet column 'id' has type list"),
    ],
)
def test_every_files_schema_is_checked_at_planning(tmp_path, columns, match):
    (tmp_path / "corpus").mkdir()
    write(tmp_path / "corpus" / "a.parquet", id=["a"], image=pa.array([PNG]))
    write(tmp_path / "corpus" / "b.parquet", **columns)
    with pytest.raises(InputError, match=match):
        plan_source(str(tmp_path / "corpus"), CorpusSettings())


def test_hugging_face_image_structs_and_integer_ids_are_accepted(tmp_path):
    path = write(tmp_path / "hf.parquet", id=pa.array([7]), image=pa.array([{"bytes": PNG, "path": "x.png"}]))
    assert plan_source(str(path), CorpusSettings()).rows == 1


def test_an_id_that_is_not_utf8_is_an_error_row_with_a_printable_id():
    batch = pa.table({"id": pa.array([b"good", b"caf\xe9"], pa.binary()), "image": pa.array([PNG, PNG])})
    decoder = BatchDecoder(image_column="image", id_column="id", source="src", size=8, limits=DecodeLimits())
    rows = decoder(batch).to_pylist()
    assert [row["id"] for row in rows] == ["good", "caf\\xe9"]
    assert [row["status"] for row in rows] == ["ok", "error"] and "not valid UTF-8" in rows[1]["error"]


def test_repeated_ids_and_inputs_given_twice_are_refused_at_planning(tmp_path):
    """Rows are known by (source, id): a repeat would break resume, filtering and joins (issue 12, item 10)."""
    from rayood.data.sources import plan_sources

    (tmp_path / "corpus").mkdir()
    write(tmp_path / "corpus" / "a.parquet", id=["x", "y"], image=pa.array([PNG, PNG]))
    write(tmp_path / "corpus" / "b.parquet", id=["z", "x"], image=pa.array([PNG, PNG]))
    with pytest.raises(InputError, match=r"1 ids occur more than once in column 'id' \(e\.g\. 'x'\)"):
        plan_source(str(tmp_path / "corpus"), CorpusSettings())
    single = str(tmp_path / "corpus" / "a.parquet")
    assert plan_sources([single], CorpusSettings())[0].rows == 2
    with pytest.raises(InputError, match="is read by two inputs"):
        plan_sources([single, single], CorpusSettings())
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "images" / "sub" / "a.png").write_bytes(PNG)
    with pytest.raises(InputError, match="is read by two inputs"):
        plan_sources([str(tmp_path / "images"), str(tmp_path / "images" / "sub")], CorpusSettings())


def test_a_resumed_run_skips_exactly_the_ids_its_report_holds_as_text():
    """Reports hold ids as text: an integer id 7 was written as "7" and must match it; a null id matches nothing."""
    from rayood.data.decode import ids_as_text, text_ids
    from rayood.data.reader import unwritten

    for column in (
        pa.chunked_array([pa.array([7, 8, None, 70])]),
        pa.chunked_array([pa.array([b"7", b"8", None, b"70"])]),
    ):
        assert text_ids(column).to_pylist() == ids_as_text(column)[0]
        assert unwritten(text_ids(column), pa.array(["7", "9"])).to_pylist() == [False, True, True, True]
