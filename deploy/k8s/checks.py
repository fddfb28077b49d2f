"""What a rendered overlay must hold; each check returns its problems as sentences.

`problems(docs)` runs them all. They read the values they compare against from the
code where the code has them: the Settings' defaults (SHUTDOWN_TIMEOUT,
WORKER_DRAIN_TIMEOUT), the metric names the nodes export, the image's user.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kubernetes_validate
from prometheus_client import CollectorRegistry

from deploy.k8s.render import Doc
from services.ai_worker.metrics import WorkerMetrics
from services.common.settings import Settings
from services.ws_gateway.metrics import GatewayMetrics

#: The Kubernetes API the manifests are validated against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30.0"
#: The node Deployments and their commands, as in compose/docker-compose.yml.
NODES = {
    "gateway": ["python", "-m", "services.ws_gateway", "--host", "0.0.0.0", "--port", "8000"],
    "worker": ["python", "-m", "services.ai_worker", "--host", "0.0.0.0", "--port", "8000"],
}
NODE_PORT = 8000
#: The metric each node's autoscaler follows.
SCALING_METRICS = {"gateway": "gateway_connections_open", "worker": "worker_generations_in_flight"}
#: The `app` user of compose/Dockerfile.
IMAGE_UID = 10001
CONFIG_MAP = "chat-config"
SECRET = "chat-secrets"
#: Settings that are secrets: never in a ConfigMap or a literal `value:`.
SECRET_SETTINGS = frozenset({"JWT_SECRET", "REDIS_URL", "REDIS_PASSWORD", "OPENAI_API_KEY"})
INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"
STICKY_ANNOTATION = "nginx.ingress.kubernetes.io/upstream-hash-by"
SOCKET_TIMEOUTS = (
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/proxy-send-timeout",
)
NS_LABEL = "kubernetes.io/metadata.name"


def code_metric_names() -> frozenset[str]:
    """Every metric name the gateway and the worker export (their own registries)."""
    names: set[str] = set()
    for metrics in (GatewayMetrics, WorkerMetrics):
        registry = CollectorRegistry()
        metrics(registry)
        names.update(family.name for family in registry.collect())
    return frozenset(names)


def problems(docs: list[Doc], metric_names: frozenset[str] | None = None) -> list[str]:
    """Every problem of a rendered overlay (empty: it holds all the properties)."""
    names = code_metric_names() if metric_names is None else metric_names
    return [
        *node_problems(docs),
        *security_problems(docs),
        *secret_problems(docs),
        *service_problems(docs),
        *budget_problems(docs),
        *autoscaler_problems(docs, names),
        *ingress_problems(docs),
        *network_policy_problems(docs),
    ]


def schema_problems(docs: list[Doc], version: str = KUBERNETES_VERSION) -> list[str]:
    """Each document against the Kubernetes API `version`, strictly (no unknown fields)."""
    found = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            found.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            found.append(f"{where}: {exc.message}")
    return found


# --- lookups ---------------------------------------------------------------------------


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: Iterable[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in of_kind(docs, kind) if d["metadata"]["name"] == name), None)


def pod_labels(deployment: Doc) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"].get("labels", {})
    return labels


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects `labels`."""
    if selector is None:
        return False
    for label, value in selector.get("matchLabels", {}).items():
        if labels.get(label) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def config_value(docs: list[Doc], name: str) -> str | None:
    config = find(docs, "ConfigMap", CONFIG_MAP)
    if config is None:
        return None
    value = config.get("data", {}).get(name)
    return None if value is None else str(value)


def _seconds(docs: list[Doc], setting: str, field: str) -> float:
    """A setting's value in the ConfigMap, else its default in Settings."""
    value = config_value(docs, setting)
    return float(value) if value is not None else float(Settings.model_fields[field].default)


# --- checks ----------------------------------------------------------------------------


def node_problems(docs: list[Doc]) -> list[str]:
    """Commands, probes, draining and spreading of the gateway and worker Deployments."""
    found: list[str] = []
    shutdown = _seconds(docs, "SHUTDOWN_TIMEOUT", "shutdown_timeout")
    drain = _seconds(docs, "WORKER_DRAIN_TIMEOUT", "worker_drain_timeout")
    for name, command in NODES.items():
        deployment = find(docs, "Deployment", name)
        if deployment is None:
            found.append(f"no Deployment {name}")
            continue
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        if container.get("command") != command:
            found.append(f"Deployment {name}: command is not {command}")
        ports = [p.get("containerPort") for p in container.get("ports", [])]
        if NODE_PORT not in ports:
            found.append(f"Deployment {name}: no container port {NODE_PORT}")
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
            got = container.get(probe, {}).get("httpGet", {}).get("path")
            if got != path:
                found.append(f"Deployment {name}: {probe} is {got!r}, not {path}")
        sleep = prestop_sleep(container)
        if sleep is None or sleep <= 0:
            found.append(f"Deployment {name}: no preStop sleep before SIGTERM")
            sleep = 0.0
        needed = sleep + shutdown + (drain if name == "worker" else 0.0)
        grace = float(pod.get("terminationGracePeriodSeconds", 30))
        if grace <= needed:
            found.append(
                f"Deployment {name}: terminationGracePeriodSeconds {grace:g} is not more "
                f"than preStop + shutdown ({needed:g})"
            )
        sources = container.get("envFrom", [])
        if {"configMapRef": {"name": CONFIG_MAP}} not in sources:
            found.append(f"Deployment {name}: settings not from ConfigMap {CONFIG_MAP}")
        if not any(s.get("secretRef", {}).get("name") == SECRET for s in sources):
            found.append(f"Deployment {name}: secrets not from Secret {SECRET}")
        keys = {c.get("topologyKey") for c in pod.get("topologySpreadConstraints", [])}
        for spread in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
            if spread not in keys:
                found.append(f"Deployment {name}: not spread by {spread}")
    return found


def prestop_sleep(container: dict[str, Any]) -> float | None:
    """Seconds of the container's preStop `sleep N` (exec or sleep action), if any."""
    prestop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in prestop:
        return float(prestop["sleep"]["seconds"])
    command = prestop.get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        return float(command[1])
    return None


def security_problems(docs: list[Doc]) -> list[str]:
    """Every pod non-root, read-only, without capabilities, token or privilege escalation,
    with RuntimeDefault seccomp and resource requests and limits."""
    found: list[str] = []
    for account in of_kind(docs, "ServiceAccount"):
        if account.get("automountServiceAccountToken") is not False:
            found.append(f"ServiceAccount {account['metadata']['name']} mounts its token")
    for deployment in of_kind(docs, "Deployment"):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        context = pod.get("securityContext", {})
        if pod.get("automountServiceAccountToken") is not False:
            found.append(f"Deployment {name}: the service account token is mounted")
        if context.get("runAsNonRoot") is not True:
            found.append(f"Deployment {name}: runAsNonRoot is not set")
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            found.append(f"Deployment {name}: seccomp profile is not RuntimeDefault")
        if name in NODES and context.get("runAsUser") != IMAGE_UID:
            found.append(f"Deployment {name}: runAsUser is not the image's {IMAGE_UID}")
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"Deployment {name} container {container['name']}"
            sc = container.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                found.append(f"{where}: privilege escalation is allowed")
            if sc.get("readOnlyRootFilesystem") is not True:
                found.append(f"{where}: the root filesystem is writable")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                found.append(f"{where}: capabilities are not all dropped")
            if sc.get("privileged"):
                found.append(f"{where}: privileged")
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(bound, {}))
                if missing:
                    found.append(f"{where}: no {bound} for {sorted(missing)}")
    return found


def secret_problems(docs: list[Doc]) -> list[str]:
    """No secret value in the manifests: no Secret with data, no secret setting in a
    ConfigMap or as a literal environment value."""
    found: list[str] = []
    for secret in of_kind(docs, "Secret"):
        if secret.get("data") or secret.get("stringData"):
            found.append(f"Secret {secret['metadata']['name']} holds literal values")
    for config in of_kind(docs, "ConfigMap"):
        leaked = sorted(SECRET_SETTINGS & {k.upper() for k in config.get("data", {})})
        if leaked:
            found.append(f"ConfigMap {config['metadata']['name']} holds secrets {leaked}")
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            for env in container.get("env", []):
                if env["name"].upper() in SECRET_SETTINGS and "value" in env:
                    found.append(
                        f"Deployment {deployment['metadata']['name']}: {env['name']} is a "
                        "literal value, not from a Secret"
                    )
    return found


def service_problems(docs: list[Doc]) -> list[str]:
    """A ClusterIP Service on port 8000 in front of each node Deployment, and the
    gateways' WORKER_URL naming the workers' Service."""
    found: list[str] = []
    for name in NODES:
        service = find(docs, "Service", name)
        deployment = find(docs, "Deployment", name)
        if service is None or deployment is None:
            found.append(f"no Service {name} in front of Deployment {name}")
            continue
        spec = service["spec"]
        if spec.get("type", "ClusterIP") != "ClusterIP":
            found.append(f"Service {name} is {spec.get('type')}, not ClusterIP")
        if NODE_PORT not in [p["port"] for p in spec.get("ports", [])]:
            found.append(f"Service {name}: no port {NODE_PORT}")
        if not selects({"matchLabels": spec.get("selector", {})}, pod_labels(deployment)):
            found.append(f"Service {name} does not select the pods of Deployment {name}")
    url = config_value(docs, "WORKER_URL")
    if url != f"http://worker:{NODE_PORT}":
        found.append(f"WORKER_URL is {url!r}, not the worker Service")
    return found


def budget_problems(docs: list[Doc]) -> list[str]:
    """A PodDisruptionBudget for each node Deployment, letting one pod go at a time."""
    found: list[str] = []
    budgets = of_kind(docs, "PodDisruptionBudget")
    for name in NODES:
        deployment = find(docs, "Deployment", name)
        if deployment is None:
            continue
        mine = [b for b in budgets if selects(b["spec"].get("selector"), pod_labels(deployment))]
        if not mine:
            found.append(f"no PodDisruptionBudget for Deployment {name}")
        for budget in mine:
            spec = budget["spec"]
            if spec.get("maxUnavailable") != 1 and "minAvailable" not in spec:
                found.append(f"PodDisruptionBudget {budget['metadata']['name']}: not one at a time")
    return found


def autoscaler_problems(docs: list[Doc], metric_names: frozenset[str]) -> list[str]:
    """Each autoscaler scales a node Deployment that sets no count of its own, on a
    metric the node exports, with CPU as the fallback."""
    found: list[str] = []
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        name = hpa["metadata"]["name"]
        spec = hpa["spec"]
        target = find(docs, spec["scaleTargetRef"]["kind"], spec["scaleTargetRef"]["name"])
        if target is None:
            found.append(f"HorizontalPodAutoscaler {name}: its target does not exist")
            continue
        target_name = target["metadata"]["name"]
        if "replicas" in target["spec"]:
            found.append(
                f"Deployment {target_name} sets replicas although HorizontalPodAutoscaler "
                f"{name} owns its count"
            )
        if spec.get("minReplicas", 1) > spec["maxReplicas"]:
            found.append(f"HorizontalPodAutoscaler {name}: minReplicas > maxReplicas")
        pods_metrics = [m["pods"]["metric"]["name"] for m in spec["metrics"] if m["type"] == "Pods"]
        for metric in pods_metrics:
            if metric not in metric_names:
                found.append(f"HorizontalPodAutoscaler {name}: no node exports {metric}")
        wanted = SCALING_METRICS.get(target_name)
        if wanted is not None and wanted not in pods_metrics:
            found.append(f"HorizontalPodAutoscaler {name}: does not scale on {wanted}")
        if not any(
            m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in spec["metrics"]
        ):
            found.append(f"HorizontalPodAutoscaler {name}: no CPU fallback")
    return found


def ingress_problems(docs: list[Doc]) -> list[str]:
    """/ws/ and /api/ reach the gateway Service through an ingress-nginx Ingress that is
    sticky by client address and keeps sockets open for an hour."""
    found: list[str] = []
    routes: dict[str, Doc] = {}
    for ingress in of_kind(docs, "Ingress"):
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                service = path["backend"]["service"]
                if service["name"] == "gateway" and service["port"].get("number") == NODE_PORT:
                    routes[path["path"]] = ingress
    for prefix in ("/ws/", "/api/"):
        route = routes.get(prefix)
        if route is None:
            found.append(f"no Ingress path {prefix} to the gateway Service")
            continue
        where = f"Ingress {route['metadata']['name']}"
        notes = route["metadata"].get("annotations", {})
        if route["spec"].get("ingressClassName") != "nginx":
            found.append(f"{where}: not for ingress-nginx")
        if notes.get(STICKY_ANNOTATION) != "$remote_addr":
            found.append(f"{where}: not sticky by client address ({STICKY_ANNOTATION})")
        for note in SOCKET_TIMEOUTS:
            if int(notes.get(note, "60")) < 3600:
                found.append(f"{where}: {note} is under 3600 s")
    return list(dict.fromkeys(found))


def network_policy_problems(docs: list[Doc]) -> list[str]:
    """Default deny; gateways from the ingress controller; workers from gateways (and
    Prometheus) only; DNS for every pod; Redis and Kafka for the nodes."""
    found: list[str] = []
    policies = of_kind(docs, "NetworkPolicy")
    if not any(
        p["spec"].get("podSelector") == {}
        and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ):
        found.append("no default-deny NetworkPolicy (all pods, ingress and egress)")
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    if "gateway" not in deployments or "worker" not in deployments:
        return found
    gateway = pod_labels(deployments["gateway"])
    worker = pod_labels(deployments["worker"])
    others = [pod_labels(d) for n, d in deployments.items() if n != "gateway"]

    worker_peers = _ingress_peers(policies, worker)
    if not any(_is_pods_of(peer, gateway, others) for peer in worker_peers):
        found.append("NetworkPolicy: gateways cannot reach workers")
    for peer in worker_peers:
        if not (_is_pods_of(peer, gateway, others) or _is_prometheus(peer)):
            found.append(f"NetworkPolicy: workers accept {peer or 'anyone'}, not only gateways")
    if not any(_is_namespace(p, INGRESS_NAMESPACE) for p in _ingress_peers(policies, gateway)):
        found.append(f"NetworkPolicy: gateways do not accept the {INGRESS_NAMESPACE} namespace")
    for name, labels in (("gateway", gateway), ("worker", worker)):
        ports = _egress_ports(policies, labels)
        for port, what in ((6379, "Redis"), (9092, "Kafka")):
            if port not in ports:
                found.append(f"NetworkPolicy: {name} pods cannot reach {what} (port {port})")
        if 53 not in ports:
            found.append(f"NetworkPolicy: {name} pods cannot reach DNS")
    return found


def _applies(policy: Doc, labels: dict[str, str], direction: str) -> bool:
    """Whether `policy` governs `direction` ("Ingress", "Egress") of pods with `labels`
    (without policyTypes: Ingress, and Egress when it has egress rules)."""
    spec = policy["spec"]
    default = ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]
    return direction in spec.get("policyTypes", default) and selects(
        spec.get("podSelector"), labels
    )


def _ingress_peers(policies: list[Doc], labels: dict[str, str]) -> list[dict[str, Any]]:
    """Every `from` peer of the policies that select `labels`; {} for a rule open to all."""
    peers: list[dict[str, Any]] = []
    for policy in policies:
        if _applies(policy, labels, "Ingress"):
            for rule in policy["spec"].get("ingress", []):
                peers.extend(rule.get("from") or [{}])
    return peers


def _egress_ports(policies: list[Doc], labels: dict[str, str]) -> set[int]:
    ports: set[int] = set()
    for policy in policies:
        if _applies(policy, labels, "Egress"):
            for rule in policy["spec"].get("egress", []):
                ports.update(p["port"] for p in rule.get("ports", []) if "port" in p)
    return ports


def _is_pods_of(peer: dict[str, Any], labels: dict[str, str], others: list[dict[str, str]]) -> bool:
    """A peer of this namespace's pods with `labels` and of no other Deployment's pods."""
    selector = peer.get("podSelector")
    return (
        set(peer) == {"podSelector"}
        and selects(selector, labels)
        and not any(selects(selector, o) for o in others)
    )


def _is_namespace(peer: dict[str, Any], namespace: str) -> bool:
    labels: dict[str, str] = peer.get("namespaceSelector", {}).get("matchLabels", {})
    return labels.get(NS_LABEL) == namespace


def _is_prometheus(peer: dict[str, Any]) -> bool:
    return _is_namespace(peer, MONITORING_NAMESPACE) and bool(peer.get("podSelector"))
