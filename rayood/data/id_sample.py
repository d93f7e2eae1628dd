"""Choosing rows by a hash of their id: the same rows in every run, whatever the file order, the worker count
or the block a row lands in. The calibration split and the bank's sample both choose this way, each with its
own salt so that the two choices are independent."""

from __future__ import annotations

import hashlib

BUCKETS = 10_000


def id_bucket(image_id: str, seed: int, salt: str = "") -> int:
    """A stable bucket in [0, BUCKETS) for an id (the calibration split uses no salt)."""
    key = f"{salt}\0{seed}\0{image_id}" if salt else f"{seed}\0{image_id}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % BUCKETS


def in_sample(image_id: str, fraction: float, seed: int, salt: str) -> bool:
    """Whether an id falls in a ``fraction`` sample; a smaller fraction's sample is inside a larger one's."""
    return id_bucket(image_id, seed, salt) < int(fraction * BUCKETS)


def in_calibration_split(image_id: str, fraction: float, seed: int) -> bool:
    """Whether a fit holds this ID row out for calibration (``train.calibration_fraction``, ``train.seed``)."""
    return in_sample(image_id, fraction, seed, salt="")
