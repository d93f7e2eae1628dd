"""Shared fixtures: a real local Ray cluster, a real S3 API (moto's standalone server), a tiny bundle
fitted with Ray Train on scikit-learn digits, and corpora of real image files, good and bad."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from rayood.config import RayoodConfig, parse_config
from rayood.data.demo import build_demo

TINY_MODEL = {
    "preprocess": {"native_size": 32, "input_size": 32, "mean": [0.2, 0.2, 0.2], "std": [0.3, 0.3, 0.3]},
    "backbone": {"arch": "cifar_resnet", "widths": [8, 16, 32, 32], "blocks": [1, 1, 1, 1]},
    "layerwise": {"num_blocks": 2, "hidden_multiplier": 1.0, "time_embed_dim": 32},
    "ddp": {"base_channels": 8, "channel_mults": [1, 2], "levels": [40, 80], "stride": 40, "draws": 1},
    "fusion": {"synthetic_per_kind": 100},
}
NO_DDP = {"ddp": {"enabled": False}}  # for tests about other things: DDP is the slow score
TINY_TRAIN = {
    "run_name": "tiny",
    "calibration_fraction": 0.25,
    "augment": ["crop"],
    "backbone": {"epochs": 4, "batch_size": 64, "lr": 0.05, "checkpoint_every": 2},
    "layerwise": {"epochs": 40, "batch_size": 64, "lr": 0.002, "checkpoint_every": 20},
    "ddpm": {"epochs": 2, "batch_size": 64, "lr": 0.001, "warmup_steps": 5},
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


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> tuple[Path, Path]:
    """The demo's fitting set (digits 0-4) and corpus (ID, near- and far-OOD), built once."""
    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def tiny_bundle(ray_cluster, demo_data, tmp_path_factory) -> str:
    from rayood.train.fit import fit

    fit_path, _ = demo_data
    bundle = str(tmp_path_factory.mktemp("bundles") / "tiny")
    return fit(tiny_config(train={"data": [str(fit_path)], "bundle": bundle, "checkpoint_path": f"{bundle}-checkpoints"}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# moto's credentials, in the environment before any Ray worker or job process starts: rayood never ships
# S3 keys in task arguments, so every process must find them in its own environment, as on a real cluster.
for _key, _value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ[_key] = _value


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1, as s3fs tests itself: Ray workers are separate processes,
    so in-process mocks would be invisible to them. Credentials go through the standard variables."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


# The slow tier: tests that start Ray (a fixture cluster, their own head) or run a job in a new process. The
# rest run in seconds: ``make test-fast`` (``pytest -m "not cluster"``).
CLUSTER_FIXTURES = {"ray_cluster", "tiny_bundle"}
CLUSTER_CALLS = {"run_job", "ray_head", "subprocess"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        calls = set(function.__code__.co_names) if function is not None else set()
        if CLUSTER_FIXTURES & set(item.fixturenames) or CLUSTER_CALLS & calls:
            item.add_marker(pytest.mark.cluster)
