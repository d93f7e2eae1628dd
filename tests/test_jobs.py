"""The entry points as users run them: separate processes, exit codes, and messages."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import TINY_MODEL, TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]


def run_job(script, *args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def write_config(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_bad_config_names_field_and_file(tmp_path):
    config = write_config(tmp_path / "bad.yaml", {"screen": {"batch_size": 0, "colour": "red"}})
    result = run_job("screen.py", "--config", config, timeout=120)
    assert result.returncode == 2
    assert "screen.batch_size" in result.stderr and "screen.colour" in result.stderr and config in result.stderr
    assert "Started a local Ray" not in result.stderr + result.stdout


def test_missing_bundle_and_missing_input_fail_before_ray(tmp_path, demo_data):
    config = write_config(
        tmp_path / "c.yaml", {"screen": {"inputs": [str(demo_data[1])], "output": str(tmp_path / "o")}}
    )
    result = run_job("screen.py", "--config", config, "--bundle", str(tmp_path / "no-bundle"), timeout=120)
    assert result.returncode == 2 and "no model bundle" in result.stderr


def test_demo_flow_builds_data_fits_and_screens(ray_cluster, tmp_path):
    root = tmp_path / "demo"
    config = write_config(
        tmp_path / "demo.yaml",
        {
            "demo": {"root": str(root)},
            "model": TINY_MODEL,
            "train": {**TINY_TRAIN, "data": [str(root / "id_fit.parquet")], "bundle": str(root / "bundle")},
            "screen": {
                "inputs": [str(root / "corpus")],
                "output": str(root / "report"),
                "bundle": str(root / "bundle"),
                "fit_if_missing": True,
                "passthrough_columns": ["label", "group"],
                "truth": {"column": "group", "id_values": ["id"]},
            },
        },
    )
    env = {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    result = run_job("screen.py", "--config", config, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "layerwise_mfsim" in result.stdout and "AUROC" in result.stdout
    assert (root / "report" / "_SUCCESS").exists() and (root / "bundle" / "manifest.json").exists()

    again = run_job("train.py", "--config", config, env=env, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = run_job("screen.py", "--config", config, "--input", str(tmp_path / "nope"), env=env, timeout=120)
    assert missing.returncode == 2 and "input not found" in missing.stderr


def test_without_config_a_job_given_data_starts_from_neutral_defaults():
    """The demo's config (passthrough label/group, truth column, its paths) applies only when a job is given no
    data at all; ``--config`` always wins (issue 14)."""
    import argparse

    from rayood.cli import DEFAULT_CONFIG, job_config

    demo = job_config(argparse.Namespace(config=None), None, None)
    assert demo.demo is not None and demo.screen.passthrough_columns == ("label", "group")
    neutral = job_config(argparse.Namespace(config=None), ["my_images"], None)
    assert neutral.demo is None and neutral.screen.passthrough_columns == () and neutral.screen.truth is None
    assert neutral.screen.inputs == () and not neutral.screen.fit_if_missing
    assert job_config(argparse.Namespace(config=str(DEFAULT_CONFIG)), ["my_images"]).demo is not None


def test_screening_a_plain_image_folder_needs_no_config(ray_cluster, tiny_bundle, tmp_path):
    """A new user's first command: ``screen.py --bundle B --input DIR --output OUT`` on a folder of images."""
    from tests.images import good_images

    (tmp_path / "my_images").mkdir()
    for name, data in good_images().items():
        (tmp_path / "my_images" / name).write_bytes(data)
    env = {"RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    result = run_job(
        "screen.py",
        "--bundle",
        tiny_bundle,
        "--input",
        str(tmp_path / "my_images"),
        "--output",
        str(tmp_path / "out"),
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "_SUCCESS").exists() and f"rows {len(good_images())}" in result.stdout
    # the console is rayood's: a screenful, no per-second progress blocks or workers' lines, Ray's logs named
    console = (result.stdout + result.stderr).splitlines()
    assert len(console) <= 40, "\n".join(console)
    assert not [line for line in console if "logging_progress" in line or "pid=" in line], "\n".join(console)
    logs = [line.split("Ray's own logs: ")[1].split(" ")[0] for line in console if "Ray's own logs: " in line]
    assert len(logs) == 1 and Path(logs[0]).is_dir(), console
    verbose = run_job(
        "screen.py",
        "--bundle",
        tiny_bundle,
        "--input",
        str(tmp_path / "my_images"),
        "--output",
        str(tmp_path / "out"),
        "--overwrite",
        "--verbose",
        env=env,
    )
    assert verbose.returncode == 0 and "logging_progress" in verbose.stdout + verbose.stderr
