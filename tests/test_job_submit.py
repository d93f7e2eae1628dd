"""``ray job submit --working-dir <repo>`` against a real ``ray start --head`` cluster, as a cluster user runs it.

Submissions switch off Ray's own defaults (.gitignore, and the .git/.venv default excludes), so that what stays
out of the upload is what .rayignore says.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

from tests.cluster import RAY, Head, ray_head
from tests.images import bad_images, good_images

REPO = Path(__file__).resolve().parents[1]
ONLY_RAYIGNORE = {"RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1", "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES": ""}


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Head:
    with ray_head(tmp_path_factory.mktemp("head")) as head:
        yield head


def ray_cli(head: Head, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**head.env(), **ONLY_RAYIGNORE},
        cwd=REPO,
    )


def submit(head: Head, submission_id: str, *entrypoint: str) -> subprocess.CompletedProcess:
    return ray_cli(
        head,
        "job",
        "submit",
        "--address",
        head.dashboard,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        *entrypoint,
        timeout=300,
    )


def write_config(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def uploaded_working_dirs(head: Head) -> list[Path]:
    """The packages the head unpacked for the submitted jobs."""
    root = head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    return [path for path in root.glob("_ray_pkg_*") if path.is_dir()]


def test_submitted_screen_job_joins_the_cluster_and_writes_a_complete_report(head, tiny_bundle, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name, data in good_images().items():
        (images / name).write_bytes(data)
    (images / "truncated.jpg").write_bytes(bad_images()["truncated.jpg"][0])
    names = sorted(path.name for path in images.iterdir())
    config = write_config(tmp_path / "screen.yaml", {"screen": {"batch_size": 8}})
    output = tmp_path / "report"

    result = submit(
        head,
        "rayood-screen-ok",
        "jobs/screen.py",
        "--config",
        config,
        "--input",
        str(images),
        "--output",
        str(output),
        "--bundle",
        tiny_bundle,
    )
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]
    assert "joined the Ray cluster" in logs and "started a local Ray cluster" not in logs, (
        "the job did not join the cluster it was submitted to"
    )
    assert f"rows {len(names)} (expected {len(names)}): ok {len(names) - 1}, errors 1" in logs, logs[-4000:]

    assert (output / "_SUCCESS").is_file(), "the report has no _SUCCESS marker"
    table = pads.dataset(output / "rows").to_table(columns=["id", "status"])
    ids = table.column("id").to_pylist()
    assert len(ids) == len(names) and len(set(ids)) == len(ids), f"expected each of {len(names)} inputs once, got {ids}"
    assert sorted(Path(uri).name for uri in ids) == names
    assert table.column("status").to_pylist().count("error") == 1

    packages = uploaded_working_dirs(head)
    assert packages, "no unpacked working_dir package on the head"
    for package in packages:
        assert (package / "jobs" / "screen.py").is_file() and (package / "configs" / "demo.yaml").is_file()
        present = [
            name
            for name in (".venv", ".git", ".whl", ".whl2", "rayood-demo", "rayood-bench", "rayood.egg-info")
            if (package / name).exists()
        ]
        assert not present, f"the upload carried {present}: .rayignore must exclude them"
        data = [
            str(path.relative_to(package)) for path in package.rglob("*") if path.suffix in (".parquet", ".pt", ".npy")
        ]
        assert not data, f"the upload carried data files {data[:5]}"
        size = sum(path.stat().st_size for path in package.rglob("*") if path.is_file())
        assert size < 5 * 2**20, (
            f"the uploaded working dir is {size / 2**20:.1f} MiB: something large slipped past .rayignore"
        )


def test_config_error_fails_the_submitted_job_and_names_the_field(head, tmp_path):
    config = write_config(tmp_path / "bad.yaml", {"screen": {"colour": "red"}})

    result = submit(head, "rayood-screen-bad-config", "jobs/screen.py", "--config", config, "--input", str(tmp_path))
    assert result.returncode != 0, "ray job submit must report the failed job through its exit status"

    status = ray_cli(head, "job", "status", "--address", head.dashboard, "rayood-screen-bad-config")
    assert "failed" in status.stdout + status.stderr and "exit code 2" in status.stdout + status.stderr, (
        f"expected a FAILED job that exited 2 (a user error), got: {(status.stdout + status.stderr)[-2000:]}"
    )
    logs = ray_cli(head, "job", "logs", "--address", head.dashboard, "rayood-screen-bad-config")
    assert "screen.colour" in logs.stdout and config in logs.stdout, (
        f"the job's logs should name the field and file: {logs.stdout[-2000:]}"
    )
