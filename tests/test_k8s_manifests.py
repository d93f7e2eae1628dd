"""What KubeRay and Kubernetes need from k8s/, the Dockerfile and the ignore files, checked without a cluster."""

from __future__ import annotations

import re
import runpy
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rayood.config import load_config

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "k8s").glob("*.y*ml"))
CREDENTIAL_NAME = re.compile(r"SECRET|KEY|TOKEN|PASSWORD", re.IGNORECASE)
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")


def ray_pin() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [dep.split("==", 1)[1].strip() for dep in dependencies if re.match(r"ray(\[[^\]]*\])?\s*==", dep)]
    assert len(pins) == 1, f"pyproject.toml must pin ray exactly once with ==, found {pins}"
    return pins[0]


def documents() -> list[tuple[str, dict]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((f"{path.relative_to(REPO)} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return docs


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayClusterSpec: a RayCluster's spec and a RayJob's rayClusterSpec."""
    specs = []
    for where, doc in documents():
        if doc["kind"] == "RayCluster":
            specs.append((where, doc["spec"]))
        elif doc["kind"] == "RayJob":
            specs.append((where, doc["spec"]["rayClusterSpec"]))
    return specs


def pod_specs(spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"worker group {group.get('groupName')}", group["template"]["spec"]


def containers() -> Iterator[tuple[str, dict]]:
    for where, spec in cluster_specs():
        for role, pod in pod_specs(spec):
            for container in pod["containers"]:
                yield f"{where} {role} container {container.get('name')}", container


def dockerfile_instruction(name: str) -> list[str]:
    lines = (REPO / "Dockerfile").read_text().splitlines()
    return [line.split(None, 1)[1].strip() for line in lines if line.upper().startswith(f"{name} ")]


def test_there_are_manifests_of_each_kind():
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == ["RayCluster", "RayJob", "RayJob"], (
        f"k8s/ should hold one RayCluster and two RayJobs, holds {kinds}"
    )


def test_every_document_has_api_version_kind_and_name():
    for where, doc in documents():
        assert doc.get("apiVersion") and doc.get("kind"), f"{where}: apiVersion and kind are required"
        assert doc.get("metadata", {}).get("name"), f"{where}: metadata.name is required"
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1", (
                f"{where}: KubeRay's stable API is ray.io/v1, not {doc['apiVersion']}"
            )


def test_no_credentials_in_k8s():
    for where, doc in documents():
        assert doc["kind"] != "Secret", (
            f"{where}: credentials are created with kubectl (k8s/README.md), never committed"
        )
    for path in MANIFESTS + [REPO / "Dockerfile", REPO / "configs" / "cluster-gpu.yaml"]:
        assert not AWS_KEY_ID.search(path.read_text()), f"{path.name} contains something shaped like an AWS key id"
    for where, container in containers():
        for env in container.get("env", []):
            if CREDENTIAL_NAME.search(env["name"]):
                assert "value" not in env, f"{where}: {env['name']} has an inline value; use valueFrom.secretKeyRef"
                assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']} must come from a Secret"


def test_every_ray_container_gets_the_s3_credentials_from_the_secret():
    for where, container in containers():
        refs = {env["name"]: env.get("valueFrom", {}).get("secretKeyRef") for env in container.get("env", [])}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert refs.get(name), f"{where}: {name} is missing or not from a secretKeyRef"
            assert refs[name].get("name") and refs[name].get("key"), (
                f"{where}: {name}'s secretKeyRef needs name and key"
            )
            assert not refs[name].get("optional"), f"{where}: {name} must not be optional: the jobs need it"


def test_cluster_specs_are_what_kuberay_expects():
    assert cluster_specs(), "no RayCluster spec found under k8s/"
    for where, spec in cluster_specs():
        head = spec.get("headGroupSpec")
        assert head and isinstance(head.get("rayStartParams"), dict), (
            f"{where}: headGroupSpec.rayStartParams is required"
        )
        groups = spec.get("workerGroupSpecs") or []
        assert groups, f"{where}: no workerGroupSpecs"
        names = [group.get("groupName") for group in groups]
        assert all(names) and len(set(names)) == len(names), f"{where}: worker groups need unique groupNames: {names}"
        for params in [head["rayStartParams"]] + [group.get("rayStartParams", {}) for group in groups]:
            bad = {key: value for key, value in params.items() if not isinstance(value, str)}
            assert not bad, f"{where}: rayStartParams values must be strings (quote them): {bad}"
        for group in groups:
            low, replicas, high = group.get("minReplicas"), group.get("replicas"), group.get("maxReplicas")
            assert all(isinstance(n, int) for n in (low, replicas, high)), (
                f"{where} {group['groupName']}: set minReplicas, replicas, maxReplicas"
            )
            assert 0 <= low <= replicas <= high and high >= 1, (
                f"{where} {group['groupName']}: need 0 <= minReplicas <= replicas <= maxReplicas, "
                f"got {low}, {replicas}, {high}"
            )
        for role, pod in pod_specs(spec):
            assert pod.get("containers"), f"{where} {role}: template.spec.containers is empty"
            for container in pod["containers"]:
                assert container.get("name") and container.get("image"), (
                    f"{where} {role}: a container needs name and image"
                )


def test_ray_version_matches_the_pin_everywhere():
    pin = ray_pin()
    for where, spec in cluster_specs():
        assert str(spec.get("rayVersion")) == pin, (
            f"{where}: rayVersion {spec.get('rayVersion')!r}, pyproject.toml pins ray=={pin}"
        )
    images = dockerfile_instruction("FROM")
    assert len(images) == 1, f"Dockerfile: expected one FROM, found {images}"
    assert re.fullmatch(rf"rayproject/ray:{re.escape(pin)}-py3\d+-(gpu|cu\d+)", images[0]), (
        f"Dockerfile: FROM {images[0]} should be rayproject/ray:{pin}-py3XX-gpu (the pinned Ray, with CUDA)"
    )


def test_one_project_image_everywhere():
    images = {container["image"] for _, container in containers()}
    assert len(images) == 1, f"every Ray container must run the same project image (Dockerfile), found {sorted(images)}"


def test_resources_on_every_container():
    for where, spec in cluster_specs():
        for role, pod in pod_specs(spec):
            for container in pod["containers"]:
                resources = container.get("resources", {})
                for kind in ("requests", "limits"):
                    missing = {"cpu", "memory"} - set(resources.get(kind, {}))
                    assert not missing, f"{where} {role}: resources.{kind} lacks {sorted(missing)}"
                gpus = resources["limits"].get("nvidia.com/gpu")
                if "nvidia.com/gpu" in resources["requests"]:
                    assert resources["requests"]["nvidia.com/gpu"] == gpus, (
                        f"{where} {role}: GPU requests must equal limits"
                    )
        options = spec.get("autoscalerOptions", {}).get("resources", {})
        assert options.get("requests") and options.get("limits"), f"{where}: set autoscalerOptions.resources too"


def test_gpu_workers_autoscale_and_tolerate_gpu_taints_and_the_head_takes_no_work():
    for where, spec in cluster_specs():
        assert spec.get("enableInTreeAutoscaling") is True, f"{where}: enableInTreeAutoscaling must be true"
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", (
            f'{where}: the head should advertise num-cpus "0" so that no task or actor lands on it'
        )
        head = spec["headGroupSpec"]["template"]["spec"]
        assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in head["containers"]), (
            f"{where}: the head needs no GPU"
        )
        gpu_groups = [
            group
            for group in spec["workerGroupSpecs"]
            if any("nvidia.com/gpu" in c["resources"]["limits"] for c in group["template"]["spec"]["containers"])
        ]
        assert gpu_groups, f"{where}: no worker group has nvidia.com/gpu in its limits"
        for group in gpu_groups:
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), (
                f"{where} {group['groupName']}: GPU nodes are usually tainted nvidia.com/gpu; add a toleration"
            )


def test_rayjobs_clean_up_and_are_bounded():
    jobs = [(where, doc["spec"]) for where, doc in documents() if doc["kind"] == "RayJob"]
    for where, spec in jobs:
        assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: shutdownAfterJobFinishes must be true"
        ttl, deadline, retries = (
            spec.get("ttlSecondsAfterFinished"),
            spec.get("activeDeadlineSeconds"),
            spec.get("backoffLimit"),
        )
        assert isinstance(ttl, int) and ttl >= 0, f"{where}: set ttlSecondsAfterFinished (seconds), got {ttl!r}"
        assert isinstance(deadline, int) and deadline > 0, (
            f"{where}: set a positive activeDeadlineSeconds, got {deadline!r}"
        )
        assert isinstance(retries, int) and 0 <= retries <= 3, (
            f"{where}: backoffLimit should be 0-3 (each retry is a new cluster), got {retries!r}"
        )


def test_entrypoints_run_files_of_this_repo_with_arguments_the_jobs_accept():
    """The image holds the repo at the Dockerfile's WORKDIR; each entrypoint must name a job of this repo, a
    config that loads, and only options its parser accepts."""
    (workdir,) = dockerfile_instruction("WORKDIR")
    jobs = [(where, doc["spec"]["entrypoint"]) for where, doc in documents() if doc["kind"] == "RayJob"]
    assert {Path(shlex.split(entry)[1]).name for _, entry in jobs} == {"train.py", "screen.py"}, "one RayJob per job"
    for where, entrypoint in jobs:
        words = shlex.split(entrypoint)
        assert words[0] == "python", f"{where}: the entrypoint should start with python, not {words[0]}"
        paths = [word for word in words if word.endswith((".py", ".yaml", ".yml"))]
        for path in paths:
            assert path.startswith(f"{workdir}/"), f"{where}: {path} is not under the image's WORKDIR {workdir}"
            assert (REPO / path.removeprefix(f"{workdir}/")).is_file(), (
                f"{where}: {path} has no counterpart in the repo"
            )
        local = [str(REPO / word.removeprefix(f"{workdir}/")) if word in paths else word for word in words[1:]]
        parser = runpy.run_path(local[0], run_name="entrypoint_check")["parser"]
        try:
            args = parser.parse_args(local[1:])
        except SystemExit:
            pytest.fail(f"{where}: jobs/{Path(local[0]).name} rejects the entrypoint's arguments {local[1:]}")
        load_config(args.config)
        for uri in [args.output, getattr(args, "bundle", None), *(getattr(args, "input", None) or [])]:
            assert uri is None or uri.startswith("s3://"), f"{where}: {uri} is a path inside the pod; use s3://"


@pytest.mark.parametrize("ignore_file", [".rayignore", ".dockerignore"])
def test_ignore_files_keep_environments_data_and_secrets_out(ignore_file):
    from ray._private.thirdparty.pathspec import PathSpec

    patterns = [line for line in (REPO / ignore_file).read_text().splitlines() if line and not line.startswith("#")]
    # .dockerignore's Go syntax needs "**/" where git's matches at any depth; both read the same for these paths.
    spec = PathSpec.from_lines("gitwildmatch", patterns)
    for path in (
        ".venv",
        ".git",
        ".whl2",
        "rayood-demo",
        "rayood-bench",
        "rayood.egg-info",
        "data/corpus.parquet",
        "my-bundle/backbone.pt",
        "report/_SUCCESS",
        "corpus/cat.jpg",
        ".env",
        "rayood/__pycache__",
    ):
        assert spec.match_file(path), f"{ignore_file} lets {path} through"
    for path in (
        "rayood/jobs.py",
        "jobs/screen.py",
        "configs/demo.yaml",
        "configs/cluster-gpu.yaml",
        "pyproject.toml",
        "README.md",
    ):
        assert not spec.match_file(path), f"{ignore_file} excludes {path}, which the jobs need"
