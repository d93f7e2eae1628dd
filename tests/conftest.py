"""Shared fixtures: a real local Ray cluster, a real S3 API (moto's standalone server), a tiny bundle
fitted with Ray Train on scikit-learn digits, and corpora of real image files, good and bad."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rayood.config import RayoodConfig, parse_config
from rayood.data.demo import build_demo
from tests.cluster import free_port

TINY_MODEL = {
    "preprocess": {"native_size": 32, "input_size": 32, "mean": [0.2, 0.2, 0.2], "std": [0.3, 0.3, 0.3]},
    "backbone": {"arch": "cifar_resnet", "widths": [8, 16, 32, 32], "blocks": [1, 1, 1, 1]},
    "layerwise": {"num_blocks": 2, "hidden_multiplier": 1.0, "time_embed_dim": 32},
    # DDP is the slow score (a screen of the demo corpus takes ~45 s with it, ~7 s without): off in the shared
    # tiny bundle, on in exactly one test (test_multiworker.py, with WITH_DDP)
    "ddp": {
        "enabled": False,
        "base_channels": 8,
        "channel_mults": [1, 2],
        "levels": [40, 80],
        "stride": 40,
        "draws": 1,
    },
    "fusion": {"synthetic_per_kind": 100},
}
WITH_DDP = {"ddp": {**TINY_MODEL["ddp"], "enabled": True}}
NO_LAYERWISE = {"layerwise": {**TINY_MODEL["layerwise"], "enabled": False}}  # one Ray Train stage less (~20 s)
TINY_TRAIN = {
    "run_name": "tiny",
    "calibration_fraction": 0.25,
    "augment": ["crop"],
    "backbone": {"epochs": 4, "batch_size": 64, "lr": 0.05, "checkpoint_every": 2},
    "layerwise": {"epochs": 40, "batch_size": 64, "lr": 0.002, "checkpoint_every": 20},
    "ddp": {"epochs": 2, "batch_size": 64, "lr": 0.001, "warmup_steps": 5},
}


def tiny_config(**sections: dict) -> RayoodConfig:
    """The tiny model and training settings, with sections added or replaced."""
    data = {"model": TINY_MODEL, "train": dict(TINY_TRAIN)}
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value}
    return parse_config(data, "tests")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


PACKAGE = Path(__file__).resolve().parents[1] / "rayood"
STALE_CACHE_S = 3600  # cache entries of other code versions older than this are removed


def _code_key() -> str:
    """What the demo data and the tiny bundle depend on: rayood's code, the tiny settings and the installed
    libraries. Any change to them makes a new cache entry."""
    digest = hashlib.sha256(json.dumps([TINY_MODEL, TINY_TRAIN], sort_keys=True).encode())
    for package in ("torch", "torchvision", "ray", "numpy", "scikit-learn"):
        digest.update(f"{package}={importlib.metadata.version(package)}".encode())
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def fixture_cache(request) -> Path:
    """This code version's entry in pytest's cache (``.pytest_cache``, never in git): the fast tier's end-to-end
    test and a rerun of the suite reuse the tiny bundle instead of fitting it again (about 80 s on 2 cores)."""
    root, key = Path(request.config.cache.mkdir("rayood-fixtures")), _code_key()
    for entry in root.iterdir():
        if entry.name != key and time.time() - entry.stat().st_mtime > STALE_CACHE_S:
            shutil.rmtree(entry, ignore_errors=True)
    (root / key).mkdir(exist_ok=True)
    return root / key


def _built_once(target: Path, build: Callable[[Path], object]) -> Path:
    """``target``, built by ``build(scratch)`` in a scratch folder beside it and renamed into place: a session
    never sees half of one, and of two sessions building at once the second keeps the first one's."""
    if not target.exists():
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            build(scratch)
            scratch.rename(target)
        except OSError:  # another session renamed its copy into place first
            if not target.exists():
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # gone after a rename; a failed build leaves nothing
    return target


@pytest.fixture(scope="session")
def demo_data(fixture_cache) -> tuple[Path, Path]:
    """The demo's fitting set (digits 0-4) and corpus (ID, near- and far-OOD). Read only: its path is part of
    the tiny bundle's stage fingerprints, so it stays where the cached bundle was fitted on it."""
    return build_demo(_built_once(fixture_cache / "demo", build_demo))


@pytest.fixture(scope="session")
def tiny_bundle(ray_cluster, demo_data, fixture_cache, tmp_path_factory) -> str:
    """The tiny bundle and its Ray Train checkpoints, fitted once per code version; each session gets a copy,
    since tests refit from those checkpoints."""
    from rayood.train.fit import fit

    def fit_into(folder: Path) -> None:
        bundle = str(folder / "tiny")
        fit(
            tiny_config(
                train={"data": [str(demo_data[0])], "bundle": bundle, "checkpoint_path": f"{bundle}-checkpoints"}
            )
        )

    copy = tmp_path_factory.mktemp("bundles") / "fitted"
    shutil.copytree(_built_once(fixture_cache / "bundle", fit_into), copy)
    return str(copy / "tiny")


# moto's credentials, in the environment before any Ray worker or job process starts: rayood never ships
# S3 keys in task arguments, so every process must find them in its own environment, as on a real cluster.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ[_key] = _value


def _atomic_conditional_puts() -> None:
    """moto checks a PUT's If-Match / If-None-Match and then writes, with no lock between, so two threads of its
    server can both pass the check (seen once in CI: two runs both held an expired lease they took over). AWS S3
    decides a conditional write atomically; this server does too, by taking conditional PUTs one at a time."""
    from moto.s3.responses import S3Response

    unlocked, lock = S3Response.put_object, threading.Lock()

    def put_object(self):
        if self.headers.get("If-Match") or self.headers.get("If-None-Match"):
            with lock:
                return unlocked(self)
        return unlocked(self)

    S3Response.put_object = put_object


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1, as s3fs tests itself: Ray workers are separate processes,
    so in-process mocks would be invisible to them. Credentials go through the standard variables."""
    from moto.server import ThreadedMotoServer

    _atomic_conditional_puts()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def chromium() -> None:
    """The page tests need Debian's chromium (``make browser`` installs it): a missing browser fails them."""
    if shutil.which("chromium") is None:
        pytest.fail("no chromium on PATH: `make browser` installs Debian's chromium package")


# The slow tier: tests that start Ray (a fixture cluster, their own head) or run a job in a new process. The
# rest run in seconds: ``make test-fast`` (``pytest -m "not cluster"``), with the one test marked ``smoke``.
CLUSTER_FIXTURES = {"ray_cluster", "tiny_bundle", "head"}  # head: a test module's own `ray start` cluster
CLUSTER_CALLS = {"run_job", "ray_head", "subprocess"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        calls = set(function.__code__.co_names) if function is not None else set()
        if item.get_closest_marker("smoke") is None and (
            CLUSTER_FIXTURES & set(item.fixturenames) or CLUSTER_CALLS & calls
        ):
            item.add_marker(pytest.mark.cluster)
