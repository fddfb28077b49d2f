"""Static checks of the compose deployment (there is no Docker daemon in CI)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _replicas(services: dict[str, dict[str, Any]], kind: str) -> list[str]:
    return sorted(name for name in services if re.fullmatch(rf"{kind}-\d+", name))


def _app_services(services: dict[str, dict[str, Any]]) -> list[str]:
    return _replicas(services, "gateway") + _replicas(services, "worker")


def _published_ports(service: dict[str, Any]) -> set[int]:
    published: set[int] = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published.add(int(port["published"]))
        else:  # "HOST:CONTAINER", "IP:HOST:CONTAINER" or "CONTAINER"
            parts = str(port).split("/")[0].split(":")
            published.add(int(parts[-2] if len(parts) > 1 else parts[-1]))
    return published


def test_three_gateways_and_three_workers(services: dict[str, dict[str, Any]]) -> None:
    assert _replicas(services, "gateway") == ["gateway-1", "gateway-2", "gateway-3"]
    assert _replicas(services, "worker") == ["worker-1", "worker-2", "worker-3"]


def test_app_services_are_supervised(services: dict[str, dict[str, Any]]) -> None:
    for name in _app_services(services):
        svc = services[name]
        assert svc["restart"] == "unless-stopped", name
        assert "/health" in " ".join(svc["healthcheck"]["test"]), name
        assert svc["stop_grace_period"] == "30s", name
        for dep in ("redis", "kafka"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy", (name, dep)


def test_app_services_are_built_and_run_their_module(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in _app_services(services):
        svc = services[name]
        assert svc["build"]["dockerfile"] == "compose/Dockerfile"
        assert (COMPOSE_DIR / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        module = "services.ws_gateway" if name.startswith("gateway") else "services.ai_worker"
        assert svc["command"][:3] == ["python", "-m", module], name
        assert "--port" in svc["command"] and "8000" in svc["command"], name


def test_app_environment(services: dict[str, dict[str, Any]]) -> None:
    node_ids = []
    for name in _app_services(services):
        env = services[name]["environment"]
        node_ids.append(env["NODE_ID"])
        assert env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
        assert env["REDIS_URL"].endswith("@redis:6379/0")
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["WORKER_URL"] == "http://nginx:8081"
        assert "ALLOWED_ORIGINS" in env
        assert services[name]["env_file"] in (".env", [".env"])
    assert len(set(node_ids)) == len(node_ids), node_ids


def test_internal_worker_listener_is_not_published(
    services: dict[str, dict[str, Any]],
) -> None:
    assert _published_ports(services["nginx"]) == {8080, 8090, 3000}
    for name, svc in services.items():
        assert 8081 not in _published_ports(svc), name


def test_nginx_mounts(services: dict[str, dict[str, Any]]) -> None:
    volumes = services["nginx"]["volumes"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in volumes
    assert "../frontend:/usr/share/nginx/html/frontend:ro" in volumes


def test_redis_requires_a_password(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD")
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ping" in redis["healthcheck"]["test"]


def test_kafka_is_single_node_kraft(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert "healthcheck" in kafka


def test_env_file_has_placeholder_secrets() -> None:
    lines = (COMPOSE_DIR / ".env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert env["REDIS_PASSWORD"] == "change-me"
    assert env["JWT_SECRET"] == "change-me"
    assert env["AUTH_DEV_MODE"] == "false"


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install --no-cache-dir ." in text
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.M), "must not run as root"
    assert re.search(r"^EXPOSE 8000\b", text, re.M)
    assert not re.search(r"^HEALTHCHECK\b", text, re.M)
    assert re.search(r"^COPY services/ ", text, re.M)
    # The modules the images run; their __main__.py may land later, so check names only.
    assert "services.ws_gateway" in text
    assert (ROOT / "services" / "ws_gateway").is_dir()
    assert (ROOT / "services" / "ai_worker").is_dir()


def test_every_variable_and_path_the_compose_file_names_exists() -> None:
    """What `docker compose config` would resolve, checked without a Docker engine:
    every ${VAR} has a value in compose/.env and every mounted or built path exists."""
    text = COMPOSE_FILE.read_text()
    env_names = {
        line.split("=", 1)[0].strip()
        for line in (COMPOSE_FILE.parent / ".env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    for name in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text):
        assert name in env_names, f"${{{name}}} has no value in compose/.env"
    for src in re.findall(r"^\s*-\s*(\.{1,2}/[^:\s]+):", text, re.M):
        assert (COMPOSE_FILE.parent / src).resolve().exists(), f"missing mount source {src}"
