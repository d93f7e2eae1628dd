"""A scoring pool must leave the cluster a CPU for reading and decoding: Ray Data starts the pool's actors
first, and a pool whose smallest size holds every CPU waits for ever (ray-project/ray#44687)."""

from __future__ import annotations

import logging

import pyarrow.parquet as pq
import pytest

from rayood.config import ConfigError, RaySettings, ScreenSettings
from rayood.scoring.pool import check_room_for_decoding
from rayood.screen.pipeline import screen
from tests.conftest import tiny_config


def test_a_pool_floor_holding_every_cpu_is_refused_on_a_local_cluster_and_warned_about_on_a_joined_one(
    ray_cluster, caplog
):
    # the fixture's cluster has 2 CPUs; the settings with its address say the job joined it
    local, joined = RaySettings(), RaySettings(address=ray_cluster.get_runtime_context().gcs_address)
    check_room_for_decoding(ScreenSettings(min_actors=1, max_actors=4), local)  # growing past it is Ray Data's call
    with pytest.raises(ConfigError, match=r"screen.min_actors \(2\) x screen.cpus_per_actor \(1\) = 2 CPUs"):
        check_room_for_decoding(ScreenSettings(min_actors=2, max_actors=2), local)
    with pytest.raises(ConfigError, match=r"screen.cpus_per_actor \(1.5\)"):
        check_room_for_decoding(ScreenSettings(cpus_per_actor=1.5), local)
    with caplog.at_level(logging.WARNING, logger="rayood.scoring.pool"):
        check_room_for_decoding(ScreenSettings(min_actors=2, max_actors=2), joined)
    assert "only if an autoscaler adds nodes" in caplog.text


def test_screening_with_such_a_pool_fails_at_once_naming_the_field(ray_cluster, tiny_bundle, demo_data, tmp_path):
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pq.read_table(demo_data[1] / "corpus.parquet").slice(0, 16), corpus)
    config = tiny_config(
        screen={
            "inputs": [str(corpus)],
            "output": str(tmp_path / "report"),
            "bundle": tiny_bundle,
            "min_actors": 2,
            "max_actors": 2,
        }
    )
    with pytest.raises(ConfigError, match="screen.min_actors"):
        screen(config)
    assert not list((tmp_path / "report").glob("rows/*.parquet"))
