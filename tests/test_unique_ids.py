"""The repeated-id check streams hashes: the answer must be exact whatever the ids' type, nulls and collisions."""

import numpy as np
import pyarrow as pa

from rayood.data import unique_ids
from rayood.data.unique_ids import repeated_ids


def chunks(values, type_=None, size=1000):
    array = pa.array(values, type_)
    return lambda: (array.slice(start, size) for start in range(0, len(array), size))


def check(values, type_=None):
    return repeated_ids(chunks(values, type_), len(values))


def test_repeats_are_found_across_batches_for_strings_binary_and_integers():
    ids = [f"img-{i}" for i in range(5000)]
    assert check(ids) == (0, [])
    assert check(ids + ["img-17", "img-4999", "img-17"]) == (2, ["img-17", "img-4999"])
    assert check([i.encode() for i in ids] + [b"img-3"], pa.binary()) == (1, [b"img-3"])
    assert check(list(range(3000)) + [2999]) == (1, [2999])


def test_nulls_are_not_repeats_and_an_empty_column_has_none():
    assert check(["a", None, "b", None]) == (0, [])
    assert repeated_ids(lambda: iter([]), 0) == (0, [])


def test_a_hash_collision_costs_a_second_pass_not_a_false_repeat(monkeypatch):
    """With every id hashed to one of two values, every id is a candidate: only the real repeat may be reported."""
    monkeypatch.setattr(unique_ids, "_hashes", lambda ids: np.arange(len(ids), dtype=np.uint64) % 2)
    passes = []

    def batches():
        passes.append(1)
        return chunks(["a", "b", "c", "d", "c"])()

    assert repeated_ids(batches, 5) == (1, ["c"])
    assert len(passes) == 2


def test_more_ids_than_the_footers_declare_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="more than the 2 rows"):
        repeated_ids(chunks(["a", "b", "c"]), 2)
