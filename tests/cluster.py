"""A real multi-process Ray cluster for tests that need one outside the pytest process.

``ray start --head --block`` runs in its own process group on 127.0.0.1 with its own temporary directory;
stopping kills that group only. ``ray stop`` is never used: it would kill every Ray process of this user,
including the session's in-process test cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Head:
    address: str  # GCS address, for ray.init(address=...) and RAY_ADDRESS
    dashboard: str  # job server URL, for ray job submit --address
    temp_dir: Path

    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster: its address, and Ray's token authentication (on by
        default for ``ray start``; the token is the one ``ray start`` saved under ``~/.ray``)."""
        return {**_venv_env(), "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token"}


def _venv_env() -> dict[str, str]:
    """This interpreter's bin first on PATH, so that ``python`` in a job's entrypoint is the test's Python."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _wait_for_dashboard(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError:  # 401 under Ray's token authentication: the server is up
            return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the Ray head's job server at {url} did not come up in {timeout_s} s")


# How fast the head declares a lost node dead (Ray's defaults take about 30 s). Node-loss tests only: a lost
# node is found by the same health check either way, sooner. A killed raylet refuses the check at once, so
# five failed checks a second apart find it in ~5 s; a live node busy on two loaded cores gets 10 s to answer
# (with a 1 s timeout the head declared a healthy node dead mid-test).
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "10000",
    "RAY_health_check_failure_threshold": "5",
}


@contextmanager
def ray_head(
    temp_dir: Path, num_cpus: int = 2, timeout_s: float = 120, env: dict[str, str] | None = None
) -> Iterator[Head]:
    port, dashboard_port, agent_port = free_port(), free_port(), free_port()
    # Ray's socket paths must stay short (AF_UNIX limit): a deep pytest tmp dir is too long.
    short = Path(f"/tmp/rh{port}")
    short.symlink_to(temp_dir, target_is_directory=True)
    log = open(temp_dir / "ray-start.log", "wb")
    process = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--temp-dir={short}",
            "--disable-usage-stats",
            # the job agent's HTTP port (default 52365) is taken whenever another local cluster runs
            f"--dashboard-agent-listen-port={agent_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # no 30 s drain on SIGTERM (it lets Serve quiesce; a test cluster has nothing to drain)
        env={**_venv_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **(env or {})},
    )
    head = Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", temp_dir)
    try:
        _wait_for_dashboard(head.dashboard, process, timeout_s)
        yield head
    finally:
        _stop(process)
        log.close()
        short.unlink()


@dataclass(frozen=True)
class WorkerNode:
    process: subprocess.Popen  # ``ray start --block``: the group leader of the node's raylet and workers
    resource: str  # a custom resource only this node has, to find it in ``ray.nodes()``

    def raylet_pid(self) -> int:
        """The node's raylet: the one process of the group whose command is Ray's ``raylet`` binary."""
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if command.endswith(b"/raylet"):
                return pid
        raise LookupError(f"no raylet below pid {self.process.pid}")


@contextmanager
def ray_worker_node(head: Head, name: str, num_cpus: int = 2, timeout_s: float = 120) -> Iterator[WorkerNode]:
    """A second node of ``head``'s cluster on this machine (loopback), with ``num_cpus`` CPUs and one unit of the
    custom resource ``name``; yields once the head counts it as alive. Its own temporary directory (short, for
    Ray's socket paths), as on another machine: sharing the head's, both nodes' log monitors would stream every
    log line twice."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))
    log = open(head.temp_dir / f"ray-start-{name}.log", "wb")
    process = subprocess.Popen(
        [
            RAY,
            "start",
            f"--address={head.address}",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            f'--resources={{"{name}": 1}}',
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=head.env(),
    )
    node = WorkerNode(process, name)
    try:
        _wait_for_node(head, name, process, timeout_s)
        yield node
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_node(head: Head, name: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start (node {name}) exited with {process.returncode}")
        status = subprocess.run(
            [RAY, "status", f"--address={head.address}"], capture_output=True, text=True, env=head.env(), timeout=60
        )
        if f" {name}" in status.stdout or f"/{name}" in status.stdout:  # its resource is in the cluster's total
            return
        time.sleep(1)
    raise TimeoutError(f"node {name} did not join the cluster at {head.address} in {timeout_s} s")


def descendants(root: int) -> set[int]:
    """Processes below ``root``, from /proc."""
    children: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # gone meanwhile
            continue
        children.setdefault(ppid, set()).add(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    return found


def actor_pids(root: int, class_name: str) -> list[int]:
    """Processes below ``root`` that Ray titled ``ray::<class_name>...`` (its actors of that class); Ray Data's
    actor-pool workers are ``_MapWorker``."""
    pids = []
    for pid in descendants(root):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and class_name in title:
            pids.append(pid)
    return pids


def actor_restarts(class_name: str) -> dict[str, int]:
    """How often Ray restarted each actor (by id) whose class name contains ``class_name``, from the connected
    cluster's actor table. Ray's public state API needs the dashboard, which the in-process cluster does not start."""
    from ray._private.state import actors

    return {
        actor_id: info["NumRestarts"] for actor_id, info in actors().items() if class_name in info["ActorClassName"]
    }


def _stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
