"""Static checks of the compose deployment (there is no Docker daemon in CI)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.ai_worker.metrics import WorkerMetrics
from services.common import kafka as kafka_module
from services.common.event_outbox import EventOutbox
from services.common.kafka import EventDrainer, build_producer
from services.common.keys import Keys
from services.common.metrics import node_registry
from services.common.settings import Settings
from services.usage.settings import UsageSettings
from services.ws_gateway.metrics import GatewayMetrics

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


#: The Kafka cluster's nodes (broker and controller each).
KAFKA_BROKERS = ["kafka-1", "kafka-2", "kafka-3"]


def _bootstrap_hosts(value: str) -> list[str]:
    """The hosts of a bootstrap list (`host:9092,...`), sorted; every port must be 9092."""
    hosts = []
    for address in value.split(","):
        host, port = address.strip().rsplit(":", 1)
        assert port == "9092", address
        hosts.append(host)
    return sorted(hosts)


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
        for dep in ("redis", *KAFKA_BROKERS):
            assert svc["depends_on"][dep]["condition"] == "service_healthy", (name, dep)
        ready = svc["depends_on"]["kafka-init"]["condition"]
        assert ready == "service_completed_successfully", name


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
        assert env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert env["JWT_SECRET"].startswith("${JWT_SECRET:?")
        assert env["REDIS_URL"].endswith("@redis:6379/0")
        assert _bootstrap_hosts(env["KAFKA_BOOTSTRAP_SERVERS"]) == KAFKA_BROKERS, name
        assert env["KAFKA_IDEMPOTENCE"] == "true"  # Apache Kafka supports it
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


def test_nginx_publishes_on_loopback_unless_public_bind_says_otherwise() -> None:
    default = _resolved({**SECRETS})["services"]["nginx"]["ports"]
    assert sorted(default) == ["127.0.0.1:3000:3000", "127.0.0.1:8080:8080", "127.0.0.1:8090:8090"]
    public = _resolved({**SECRETS, "PUBLIC_BIND": "0.0.0.0"})["services"]["nginx"]["ports"]
    assert all(port.startswith("0.0.0.0:") for port in public), public


def test_nginx_mounts(services: dict[str, dict[str, Any]]) -> None:
    volumes = services["nginx"]["volumes"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in volumes
    assert "frontend-dist:/usr/share/nginx/html/frontend:ro" in volumes


def test_the_app_is_built_before_nginx_serves_it(services: dict[str, dict[str, Any]]) -> None:
    """frontend-build runs `npm ci` and the build from the committed lockfile into the
    volume nginx serves; it copies every file the build reads from a read-only mount."""
    build = services["frontend-build"]
    assert build["image"].startswith("node:20")
    assert "../frontend:/src:ro" in build["volumes"]
    assert "frontend-dist:/dist" in build["volumes"]
    script = build["command"][-1]
    assert "npm ci" in script and "npm run build -- --outDir /dist" in script
    for name in ("package.json", "package-lock.json", "index.html", "tsconfig.json"):
        assert name in script and (ROOT / "frontend" / name).exists(), name
    assert "vite.config.ts" in script and (ROOT / "frontend" / "vite.config.ts").exists()
    for folder in ("src", "public"):
        assert f" {folder} " in script and (ROOT / "frontend" / folder).is_dir(), folder
    ready = services["nginx"]["depends_on"]["frontend-build"]
    assert ready == {"condition": "service_completed_successfully"}


def test_redis_requires_a_password(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert "ping" in redis["healthcheck"]["test"]


def test_redis_is_a_primary_a_replica_and_three_sentinels(
    services: dict[str, dict[str, Any]],
) -> None:
    """The topology of REDIS_HA=sentinel (docs/redis-ha.md): both data nodes keep an
    append-only file in a volume of their own and can serve as either role; three
    Sentinels with quorum 2 monitor the primary; the nodes find it through them."""
    data_nodes = {"redis": None, "redis-replica": ["redis", "6379"]}
    volumes = set()
    for name, replicaof in data_nodes.items():
        command = services[name]["command"]
        assert command[command.index("--appendonly") + 1] == "yes", name
        assert command[command.index("--masterauth") + 1].startswith("${REDIS_PASSWORD:?"), name
        assert command[command.index("--replica-announce-ip") + 1] == name, name
        if replicaof:
            at = command.index("--replicaof")
            assert command[at + 1 : at + 3] == replicaof
        else:
            assert "--replicaof" not in command
        volumes.add(services[name]["volumes"][0].split(":")[0])
    sentinels = _replicas(services, "sentinel")
    assert sentinels == ["sentinel-1", "sentinel-2", "sentinel-3"]
    for name in sentinels:
        svc = services[name]
        script = " ".join(svc["command"])
        assert "sentinel monitor chat redis 6379 2" in script, name
        assert "sentinel auth-pass chat ${REDIS_PASSWORD:?" in script, name
        assert "--sentinel" in script and "/data/sentinel.conf" in script, name
        assert "get-master-addr-by-name" in svc["healthcheck"]["test"], name
        assert svc["hostname"] == name
        volumes.add(svc["volumes"][0].split(":")[0])
    assert len(volumes) == 5, volumes  # nobody shares a data dir
    for name in _app_services(services):
        svc = services[name]
        env = svc["environment"]
        assert env["REDIS_SENTINELS"].split(",") == [f"{s}:26379" for s in sentinels], name
        assert env["REDIS_SENTINEL_MASTER"] == "chat", name
        for dep in ("redis-replica", *sentinels):
            assert svc["depends_on"][dep]["condition"] == "service_healthy", (name, dep)
    resolved = _resolved({**SECRETS})["services"]
    for name in sentinels:
        script = " ".join(resolved[name]["command"])
        assert f"sentinel auth-pass chat {SECRETS['REDIS_PASSWORD']}'" in script, name
        assert "$(hostname)" in script, name  # `$$` reaches the shell as `$`


def test_kafka_is_a_three_node_kraft_cluster(services: dict[str, dict[str, Any]]) -> None:
    """Three combined broker+controller nodes with distinct ids, one cluster id, a
    quorum naming all three, each advertising itself, with a volume of its own."""
    assert sorted(n for n in services if re.fullmatch(r"kafka-\d+", n)) == KAFKA_BROKERS
    assert "kafka" not in services  # the single broker is gone
    node_ids, cluster_ids, volumes = set(), set(), set()
    for number, name in enumerate(KAFKA_BROKERS, start=1):
        kafka = services[name]
        assert re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka["image"]), name
        assert kafka["hostname"] == name
        assert kafka["restart"] == "unless-stopped", name
        assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"]), name
        assert "ports" not in kafka, name  # reached on the compose network only
        env = kafka["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert env["KAFKA_NODE_ID"] == number, name
        node_ids.add(env["KAFKA_NODE_ID"])
        cluster_ids.add(env["CLUSTER_ID"])
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert voters == [f"{i}@{n}:9093" for i, n in enumerate(KAFKA_BROKERS, start=1)], name
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092", name
        assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(","), name
        data_dir = env["KAFKA_LOG_DIRS"]
        (volume,) = kafka["volumes"]
        source, target = volume.split(":")
        assert target == data_dir, name
        volumes.add(source)
    assert node_ids == {1, 2, 3}
    assert len(cluster_ids) == 1
    assert volumes == {f"{name}-data" for name in KAFKA_BROKERS}
    assert volumes <= set(yaml.safe_load(COMPOSE_FILE.read_text())["volumes"])


def test_kafka_replicates_every_topic_three_times(services: dict[str, dict[str, Any]]) -> None:
    """RF 3 and min ISR 2 by default and for the internal topics (consumer offsets,
    transaction state); no unclean leader; no topic created by a stray write."""
    for name in KAFKA_BROKERS:
        env = services[name]["environment"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3, name
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == 2, name
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3, name
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 3, name
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == 2, name
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false", name
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", name


def test_chat_events_is_created_with_rf_3_and_min_isr_2(
    services: dict[str, dict[str, Any]],
) -> None:
    init = services["kafka-init"]
    assert init["image"] == services["kafka-1"]["image"]
    assert init["restart"] == "no"
    for name in KAFKA_BROKERS:
        assert init["depends_on"][name] == {"condition": "service_healthy"}, name
    script = init["command"][-1]
    assert "/opt/kafka/bin/kafka-topics.sh" in script and "--create --if-not-exists" in script
    bootstrap = re.search(r"--bootstrap-server (\S+)", script)
    assert bootstrap and _bootstrap_hosts(bootstrap[1]) == KAFKA_BROKERS
    assert re.search(r"--topic (\S+)", script)[1] == Settings().kafka_topic  # type: ignore[index]
    assert re.search(r"--replication-factor 3\b", script)
    assert re.search(r"--config min\.insync\.replicas=2\b", script)
    partitions = re.search(r"--partitions (\d+)", script)
    assert partitions and int(partitions[1]) >= 3
    assert script.rstrip().endswith("exit 1")  # gives up with a failure, never silently


def test_producers_use_acks_all_and_idempotence(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drainer's producer: acks=all always, idempotence as KAFKA_IDEMPOTENCE says
    (compose turns it on: Apache Kafka supports it), every broker to bootstrap from."""
    built: list[dict[str, Any]] = []
    monkeypatch.setattr(kafka_module, "AIOKafkaProducer", lambda **kw: built.append(kw))
    env = services["gateway-1"]["environment"]
    build_producer(
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            kafka_idempotence=env["KAFKA_IDEMPOTENCE"],
            kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        )
    )
    (options,) = built
    assert options["acks"] == "all"
    assert options["enable_idempotence"] is True
    assert _bootstrap_hosts(options["bootstrap_servers"]) == KAFKA_BROKERS
    for name in _app_services(services):
        assert services[name]["environment"]["KAFKA_IDEMPOTENCE"] == "true", name


# --- the usage consumer (services/usage) ------------------------------------------------


def test_usage_consumer_service(services: dict[str, dict[str, Any]]) -> None:
    """One replica of `python -m services.usage`, built like the nodes, supervised,
    unpublished, after the topic exists; every broker in its bootstrap list."""
    usage = services["usage"]
    assert not [n for n in services if re.fullmatch(r"usage-\d+", n)]  # one replica
    assert usage["build"] == services["gateway-1"]["build"]
    assert usage["command"][:3] == ["python", "-m", "services.usage"]
    assert usage["command"][usage["command"].index("--port") + 1] == "8000"
    assert (ROOT / "services" / "usage" / "__main__.py").is_file()
    assert "/health" in " ".join(usage["healthcheck"]["test"])
    assert usage["restart"] == "unless-stopped"
    assert "ports" not in usage  # its API has no authentication
    assert usage["depends_on"]["kafka-init"] == {"condition": "service_completed_successfully"}
    for dep in ("redis", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert usage["depends_on"][dep] == {"condition": "service_healthy"}, dep
    env = usage["environment"]
    assert _bootstrap_hosts(env["USAGE_KAFKA_BOOTSTRAP_SERVERS"]) == KAFKA_BROKERS
    assert env["USAGE_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert env["USAGE_GROUP_ID"] == "usage"
    fields = {f"USAGE_{name.upper()}" for name in UsageSettings.model_fields}
    assert set(env) <= fields, set(env) - fields  # no misspelt setting


def test_usage_settings_from_the_resolved_compose_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the usage container's settings come to, with the secrets set."""
    env = _resolved({**SECRETS})["services"]["usage"]["environment"]
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = UsageSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.group_id == "usage"
    assert settings.kafka_topic == "chat.events"
    assert _bootstrap_hosts(settings.kafka_bootstrap_servers) == KAFKA_BROKERS
    assert settings.redis_url.get_secret_value() == (
        f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    )
    assert SECRETS["REDIS_PASSWORD"] not in repr(settings)
    redis = settings.redis_settings()
    assert redis.redis_sentinel_master == "chat"
    assert redis.redis_sentinels == "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379"


def test_env_file_sets_no_secret() -> None:
    """compose/.env is committed: a secret in it would be the same on every install."""
    env = _env_file()
    assert "REDIS_PASSWORD" not in env
    assert "JWT_SECRET" not in env
    assert "GRAFANA_ADMIN_PASSWORD" not in env
    assert not [v for v in env.values() if "change-me" in v.lower()], env
    assert env["AUTH_DEV_MODE"] == "false"


def test_missing_secrets_are_refused() -> None:
    """What `docker compose config` does with only compose/.env: it refuses, naming
    both secrets; given both, every value resolves and reaches the services."""
    with pytest.raises(ComposeError) as refused:
        _resolved({})
    for name in SECRETS:
        assert name in str(refused.value), name
    for missing in SECRETS:
        with pytest.raises(ComposeError, match=missing):
            _resolved({k: v for k, v in SECRETS.items() if k != missing})
        with pytest.raises(ComposeError, match=missing):  # set but empty: `:?` refuses too
            _resolved({**SECRETS, missing: ""})
    data = _resolved({**SECRETS})
    for name in _app_services(data["services"]):
        env = data["services"][name]["environment"]
        assert env["JWT_SECRET"] == SECRETS["JWT_SECRET"], name
        assert env["REDIS_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0", name
    redis = data["services"]["redis"]
    assert SECRETS["REDIS_PASSWORD"] in redis["command"]
    assert redis["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert _interpolate("a${SET}b$SET$$", env) == "avbv$"
    assert _interpolate("${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:-d}", env) == "d  d v"
    assert _interpolate("${EMPTY?e}", env) == ""
    with pytest.raises(ComposeError, match="EMPTY: e"):
        _interpolate("${EMPTY:?e}", env)
    with pytest.raises(ComposeError, match="UNSET: e"):
        _interpolate("${UNSET?e}", env)


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
    every ${VAR} has a value in compose/.env or a default, except the required
    secrets, and every mounted or built path exists."""
    text = COMPOSE_FILE.read_text()
    env_names = set(_env_file())
    for name, operator in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?+]?)", text):
        if name in SECRETS:
            assert operator == ":?", f"${{{name}}} must be required with :?"
            continue
        assert name in env_names or operator in (":-", "-"), f"${{{name}}} has no value"
    for src in re.findall(r"^\s*-\s*(\.{1,2}/[^:\s]+):", text, re.M):
        assert (COMPOSE_FILE.parent / src).resolve().exists(), f"missing mount source {src}"


# --- monitoring: Prometheus and Grafana ------------------------------------------------

PROMETHEUS_FILE = COMPOSE_DIR / "prometheus" / "prometheus.yml"
GRAFANA_DIR = COMPOSE_DIR / "grafana"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "chat-cluster.json"
#: A metric name of ours or of the process collectors, inside a PromQL or JS string.
_METRIC = re.compile(r"\b(?:gateway|worker|kafka|process|python)_[a-z0-9_]+\b")


def _defined_metric_names() -> set[str]:
    """Every series name the gateway and worker registries export."""
    registry = node_registry()
    GatewayMetrics(registry)
    WorkerMetrics(registry)
    EventDrainer(EventOutbox(None, Keys()), Settings(), registry)  # only its metrics
    return {sample.name for metric in registry.collect() for sample in metric.samples}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source of each bind mount (`./x:/y[:ro]`)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        found[target] = source
    return found


def _loopback_only(service: dict[str, Any]) -> None:
    for port in service["ports"]:
        assert str(port).startswith("127.0.0.1:"), port


def test_prometheus_scrapes_every_gateway_and_worker(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v2\.\d+\.\d+", prometheus["image"])
    _loopback_only(prometheus)
    config_mount = _mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    assert (COMPOSE_DIR / config_mount).resolve() == PROMETHEUS_FILE
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    targets = []
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            targets += static["targets"]
    assert sorted(targets) == sorted(f"{name}:8000" for name in _app_services(services))
    for target in targets:
        assert target.split(":")[0] in services, target


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", grafana["image"])
    _loopback_only(grafana)
    mounts = _mounts(grafana)
    provisioning = (COMPOSE_DIR / mounts["/etc/grafana/provisioning"]).resolve()
    assert provisioning == GRAFANA_DIR / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    host_port = datasource["url"].removeprefix("http://")
    assert host_port.split(":")[0] in services and host_port.endswith(":9090")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "chat-cluster.yml").read_text())[
        "providers"
    ]
    dashboards = (COMPOSE_DIR / mounts[provider["options"]["path"]]).resolve()
    assert DASHBOARD_FILE.parent == dashboards
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD_FILE.name}"
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_every_dashboard_panel_names_metrics_the_code_defines() -> None:
    defined = _defined_metric_names()
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(_METRIC.findall(target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= defined, (panel["title"], names - defined)
            used |= names
    # The status page's numbers, with history.
    for name in (
        "gateway_connections_open",
        "gateway_answers_streaming",
        "gateway_chunks_sent_total",
        "gateway_chunk_delay_seconds_bucket",
        "worker_generations_in_flight",
        "worker_tokens_written_total",
        "gateway_time_to_first_chunk_seconds_bucket",
        "worker_time_to_first_token_seconds_bucket",
        "gateway_answer_duration_seconds_bucket",
        "worker_answer_duration_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert name in used, name


def test_the_status_page_reads_metrics_the_code_defines() -> None:
    defined = _defined_metric_names()
    script = (ROOT / "status" / "metrics.mjs").read_text()
    names = set(_METRIC.findall(script))
    # A histogram is named by its base; the page reads its _bucket series.
    wanted = {name if name in defined else f"{name}_bucket" for name in names}
    assert "gateway_chunk_delay_seconds_bucket" in wanted
    assert wanted <= defined, wanted - defined


# --- compose's variable interpolation, for the checks above ---------------------------

#: Random-looking stand-ins for the secrets an operator sets.
SECRETS = {
    "JWT_SECRET": "0123456789abcdef" * 4,
    "REDIS_PASSWORD": "p4ssw0rd-for-tests",
    "GRAFANA_ADMIN_PASSWORD": "grafana-for-tests",
}
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


class ComposeError(Exception):
    """Interpolation refused (a required variable is unset or empty)."""


def _env_file() -> dict[str, str]:
    """compose/.env as compose reads it: KEY=VALUE lines, # comments."""
    env = {}
    for line in (COMPOSE_DIR / ".env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def _interpolate(text: str, env: dict[str, str]) -> str:
    """compose-spec interpolation: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e},
    ${VAR?e}, ${VAR:+r}, ${VAR+r}; ComposeError lists every refused variable."""
    errors: list[str] = []

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["bare"] or match["name"]
        op, arg = match["op"] or "", match["arg"] or ""
        value = env.get(name)
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else str(value)
        if op.endswith("?"):
            if missing:
                errors.append(f"{name}: {arg}")
                return ""
            return str(value)
        if op.endswith("+"):
            return "" if missing else arg
        return value or ""

    result = _VARIABLE.sub(one, text)
    if errors:
        raise ComposeError("; ".join(errors))
    return result


def _resolved(shell: dict[str, str]) -> dict[str, Any]:
    """The compose file with every value interpolated from compose/.env and `shell`
    (the shell wins, as in compose); ComposeError names every refused variable."""
    env = {**_env_file(), **shell}
    errors: list[str] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, str):
            try:
                return _interpolate(node, env)
            except ComposeError as exc:
                errors.append(str(exc))
        return node

    data = walk(yaml.safe_load(COMPOSE_FILE.read_text()))
    if errors:
        raise ComposeError("; ".join(sorted(set(errors))))
    assert isinstance(data, dict)
    return data
