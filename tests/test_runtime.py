"""Starting the local Ray cluster a job runs on when it joins none."""

from __future__ import annotations

import subprocess
import sys


def test_a_local_cluster_gets_the_configured_object_store_size():
    """Bounds what the scoring actor's memory can grow to over a long run (BENCHMARKS.md)."""
    size = 120 * 2**20
    code = (
        "import ray; from rayood.config import RaySettings; from rayood.runtime import init_ray; "
        f"init_ray(RaySettings(num_cpus=1, object_store_memory={size})); "
        "print(int(ray.cluster_resources()['object_store_memory']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) == size
