"""The Kubernetes manifests (deploy/k8s), with no cluster: every overlay renders, is valid
for the pinned Kubernetes API and holds the properties of deploy/k8s/checks.py; each
check fails on a manifest that breaks its property; the renderer does what kustomize
does for the features the overlays use (make lint also compares it with kustomize)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.k8s import checks, render
from deploy.k8s.__main__ import differences
from deploy.k8s.render import Doc, KustomizeError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
NODES = ("gateway", "worker")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render.build(path) for name, path in render.overlays().items()}


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = checks.find(docs, kind, name)
    assert found is not None, f"no {kind} {name}"
    return found


def pod(docs: list[Doc], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


# --- the overlays as they are -------------------------------------------------------------


def test_the_overlays_are_dev_and_production() -> None:
    assert sorted(render.overlays()) == ["dev", "production"]


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_overlay_is_valid_kubernetes(rendered: dict[str, list[Doc]], overlay: str) -> None:
    assert checks.schema_problems(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_overlay_holds_every_property(rendered: dict[str, list[Doc]], overlay: str) -> None:
    assert checks.problems(rendered[overlay]) == []


def test_schema_validation_refuses_an_unknown_field(rendered: dict[str, list[Doc]]) -> None:
    docs = copy.deepcopy(rendered["dev"])
    pod(docs, "gateway")["containers"][0]["livenessProbes"] = {}
    assert any("livenessProbes" in p for p in checks.schema_problems(docs))


def test_dev_is_one_pod_of_each_without_autoscalers(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    for name in (*NODES, "frontend"):
        assert one(docs, "Deployment", name)["spec"]["replicas"] == 1
    assert checks.of_kind(docs, "HorizontalPodAutoscaler") == []
    assert pod(docs, "gateway")["containers"][0]["image"] == "chat-cluster:latest"


def test_production_autoscales_from_three(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["production"]
    for name in NODES:
        hpa = one(docs, "HorizontalPodAutoscaler", name)["spec"]
        assert hpa["minReplicas"] >= 3
        assert hpa["maxReplicas"] > hpa["minReplicas"]
        # The autoscaler owns the count: a re-apply must not scale the nodes back down.
        assert "replicas" not in one(docs, "Deployment", name)["spec"]
        resources = pod(docs, name)["containers"][0]["resources"]
        assert resources["requests"]["cpu"] == "1"
    assert one(docs, "Deployment", "frontend")["spec"]["replicas"] >= 3
    for name in NODES:
        image = pod(docs, name)["containers"][0]["image"]
        assert image.startswith("registry.example.com/chat-cluster:")


def test_production_origin_is_the_ingress_host(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["production"]
    ingress = one(docs, "Ingress", "chat-api")["spec"]
    host = ingress["rules"][0]["host"]
    assert host in ingress["tls"][0]["hosts"]
    assert checks.config_value(docs, "ALLOWED_ORIGINS") == f"https://{host}"


def test_node_commands_and_user_are_composes() -> None:
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    assert compose["x-gateway"]["command"] == checks.NODES["gateway"]
    assert compose["x-worker"]["command"] == checks.NODES["worker"]
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert f"--uid {checks.IMAGE_UID}" in dockerfile


def test_scaling_metrics_are_exported_by_the_nodes() -> None:
    names = checks.code_metric_names()
    assert set(checks.SCALING_METRICS.values()) <= names
    assert "gateway_chunks_sent" in names and "worker_chunks_written" in names


def test_everything_is_in_the_chat_namespace(rendered: dict[str, list[Doc]]) -> None:
    for docs in rendered.values():
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "chat", render.key(doc)


def test_frontend_server_has_the_apps_content_security_policy() -> None:
    csp = re.compile(r'add_header Content-Security-Policy "([^"]+)"')
    ours = csp.findall((K8S / "frontend" / "nginx.conf").read_text())
    template = csp.findall((ROOT / "nginx" / "nginx.conf.template").read_text())
    assert ours and template and set(ours) == set(template)


def test_docs_create_every_secret_the_nodes_need() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    command = text[text.index("kubectl -n chat create secret generic chat-secrets") :]
    command = command[: command.index("```")]
    for name in ("JWT_SECRET", "REDIS_URL"):
        assert f"--from-literal={name}=" in command


# --- each check fails when its property breaks ----------------------------------------------

Mutation = Callable[[list[Doc]], None]


def _container(name: str) -> Callable[[list[Doc]], dict[str, Any]]:
    return lambda docs: pod(docs, name)["containers"][0]


def _drop(kind: str, name: str) -> Mutation:
    def mutate(docs: list[Doc]) -> None:
        docs.remove(one(docs, kind, name))

    return mutate


def _no_prestop(docs: list[Doc]) -> None:
    del _container("gateway")(docs)["lifecycle"]


def _short_grace(docs: list[Doc]) -> None:
    # 5 s preStop + 10 s SHUTDOWN_TIMEOUT + 10 s WORKER_DRAIN_TIMEOUT = 25 s.
    pod(docs, "worker")["terminationGracePeriodSeconds"] = 25


def _longer_shutdown(docs: list[Doc]) -> None:
    one(docs, "ConfigMap", "chat-config")["data"]["SHUTDOWN_TIMEOUT"] = "40"


def _ready_on_health(docs: list[Doc]) -> None:
    _container("worker")(docs)["readinessProbe"]["httpGet"]["path"] = "/health"


def _literal_secret(docs: list[Doc]) -> None:
    _container("gateway")(docs)["env"].append({"name": "JWT_SECRET", "value": "x" * 40})


def _secret_in_config(docs: list[Doc]) -> None:
    one(docs, "ConfigMap", "chat-config")["data"]["REDIS_URL"] = "redis://:pw@redis:6379/0"


def _secret_with_data(docs: list[Doc]) -> None:
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "chat-secrets", "namespace": "chat"},
            "stringData": {"JWT_SECRET": "x" * 40},
        }
    )


def _writable_root(docs: list[Doc]) -> None:
    _container("worker")(docs)["securityContext"]["readOnlyRootFilesystem"] = False


def _root_user(docs: list[Doc]) -> None:
    pod(docs, "gateway")["securityContext"]["runAsUser"] = 0


def _capabilities_kept(docs: list[Doc]) -> None:
    del _container("frontend")(docs)["securityContext"]["capabilities"]


def _no_limits(docs: list[Doc]) -> None:
    del _container("worker")(docs)["resources"]["limits"]


def _token_mounted(docs: list[Doc]) -> None:
    one(docs, "ServiceAccount", "chat")["automountServiceAccountToken"] = True


def _wrong_worker_url(docs: list[Doc]) -> None:
    one(docs, "ConfigMap", "chat-config")["data"]["WORKER_URL"] = "http://nginx:8081"


def _unknown_metric(docs: list[Doc]) -> None:
    metrics = one(docs, "HorizontalPodAutoscaler", "worker")["spec"]["metrics"]
    metrics[0]["pods"]["metric"]["name"] = "worker_in_flight"


def _no_cpu_fallback(docs: list[Doc]) -> None:
    spec = one(docs, "HorizontalPodAutoscaler", "gateway")["spec"]
    spec["metrics"] = [m for m in spec["metrics"] if m["type"] != "Resource"]


def _fixed_count(docs: list[Doc]) -> None:
    one(docs, "Deployment", "gateway")["spec"]["replicas"] = 3


def _workers_open_to_all(docs: list[Doc]) -> None:
    del one(docs, "NetworkPolicy", "worker-from-gateways")["spec"]["ingress"][0]["from"]


def _workers_open_to_the_app(docs: list[Doc]) -> None:
    rule = one(docs, "NetworkPolicy", "worker-from-gateways")["spec"]["ingress"][0]
    rule["from"] = [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "chat-cluster"}}}]


def _no_redis_egress(docs: list[Doc]) -> None:
    for name in ("gateway-egress", "worker-egress"):
        for rule in one(docs, "NetworkPolicy", name)["spec"]["egress"]:
            rule["ports"] = [p for p in rule["ports"] if p["port"] != 6379]


def _not_sticky(docs: list[Doc]) -> None:
    del one(docs, "Ingress", "chat-api")["metadata"]["annotations"][checks.STICKY_ANNOTATION]


def _short_socket_timeout(docs: list[Doc]) -> None:
    notes = one(docs, "Ingress", "chat-api")["metadata"]["annotations"]
    notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] = "60"


def _no_ws_route(docs: list[Doc]) -> None:
    paths = one(docs, "Ingress", "chat-api")["spec"]["rules"][0]["http"]["paths"]
    paths[:] = [p for p in paths if p["path"] != "/ws/"]


MUTATIONS: list[tuple[Mutation, str]] = [
    (_no_prestop, "Deployment gateway: no preStop sleep"),
    (_short_grace, "Deployment worker: terminationGracePeriodSeconds 25 is not more"),
    (_longer_shutdown, "Deployment gateway: terminationGracePeriodSeconds 30 is not more"),
    (_ready_on_health, "Deployment worker: readinessProbe is '/health', not /ready"),
    (_literal_secret, "Deployment gateway: JWT_SECRET is a literal value"),
    (_secret_in_config, "ConfigMap chat-config holds secrets ['REDIS_URL']"),
    (_secret_with_data, "Secret chat-secrets holds literal values"),
    (_writable_root, "container worker: the root filesystem is writable"),
    (_root_user, "Deployment gateway: runAsUser is not the image's 10001"),
    (_capabilities_kept, "container frontend: capabilities are not all dropped"),
    (_no_limits, "container worker: no limits for ['cpu', 'memory']"),
    (_token_mounted, "ServiceAccount chat mounts its token"),
    (_wrong_worker_url, "WORKER_URL is 'http://nginx:8081', not the worker Service"),
    (_unknown_metric, "HorizontalPodAutoscaler worker: no node exports worker_in_flight"),
    (_no_cpu_fallback, "HorizontalPodAutoscaler gateway: no CPU fallback"),
    (_fixed_count, "Deployment gateway sets replicas although HorizontalPodAutoscaler"),
    (_drop("PodDisruptionBudget", "worker"), "no PodDisruptionBudget for Deployment worker"),
    (_drop("Service", "worker"), "no Service worker in front of Deployment worker"),
    (_drop("NetworkPolicy", "default-deny"), "no default-deny NetworkPolicy"),
    (_drop("NetworkPolicy", "dns-egress"), "NetworkPolicy: gateway pods cannot reach DNS"),
    (_drop("NetworkPolicy", "worker-from-gateways"), "gateways cannot reach workers"),
    (_drop("NetworkPolicy", "gateway-from-ingress"), "do not accept the ingress-nginx"),
    (_workers_open_to_all, "NetworkPolicy: workers accept anyone, not only gateways"),
    (_workers_open_to_the_app, "NetworkPolicy: workers accept {'podSelector'"),
    (_no_redis_egress, "NetworkPolicy: worker pods cannot reach Redis (port 6379)"),
    (_not_sticky, "Ingress chat-api: not sticky by client address"),
    (_short_socket_timeout, "proxy-read-timeout is under 3600 s"),
    (_no_ws_route, "no Ingress path /ws/ to the gateway Service"),
]


@pytest.mark.parametrize(
    ("mutate", "problem"), MUTATIONS, ids=[m.__name__.strip("_") for m, _ in MUTATIONS]
)
def test_check_finds_the_broken_property(
    rendered: dict[str, list[Doc]], mutate: Mutation, problem: str
) -> None:
    docs = copy.deepcopy(rendered["production"])
    mutate(docs)
    found = checks.problems(docs)
    assert any(problem in p for p in found), found


def test_selectors_match_labels_and_expressions() -> None:
    labels = {"app.kubernetes.io/name": "worker", "tier": "x"}
    assert checks.selects({}, labels)
    assert not checks.selects(None, labels)
    assert checks.selects({"matchLabels": {"tier": "x"}}, labels)
    assert not checks.selects({"matchLabels": {"tier": "y"}}, labels)
    expr = {"key": "app.kubernetes.io/name", "operator": "In", "values": ["gateway", "worker"]}
    assert checks.selects({"matchExpressions": [expr]}, labels)
    assert not checks.selects({"matchExpressions": [{**expr, "operator": "NotIn"}]}, labels)
    assert checks.selects(
        {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, labels
    )


# --- the renderer -------------------------------------------------------------------------


def write(directory: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        docs = content if isinstance(content, list) else [content]
        path.write_text(yaml.safe_dump_all(docs))
    return directory


def deployment(name: str, image: str) -> Doc:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "app", "image": image, "env": [{"name": "A", "value": "1"}]},
                        {"name": "side", "image": "busybox:1"},
                    ]
                }
            }
        },
    }


def kustomization(**fields: Any) -> Doc:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields}


def test_render_applies_namespace_patches_replicas_and_images(tmp_path: Path) -> None:
    base = write(
        tmp_path / "base",
        {
            "kustomization.yaml": kustomization(namespace="ns", resources=["app.yaml"]),
            "app.yaml": [
                deployment("app", "repo/app:1"),
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}},
            ],
        },
    )
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "app", "env": [{"name": "B", "value": "2"}], "image": None}
                    ]
                }
            }
        },
    }
    overlay = write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": kustomization(
                resources=["../base"],
                patches=[{"path": "patch.yaml"}],
                replicas=[{"name": "app", "count": 4}],
                images=[{"name": "busybox", "newName": "reg/busybox"}],
            ),
            "patch.yaml": patch,
        },
    )
    assert base.is_dir()
    docs = render.build(overlay)
    app = one(docs, "Deployment", "app")
    assert app["metadata"]["namespace"] == "ns"
    assert "namespace" not in one(docs, "Namespace", "ns")["metadata"]
    assert app["spec"]["replicas"] == 4
    main, side = app["spec"]["template"]["spec"]["containers"]
    assert main["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert "image" not in main  # a null in a patch removes the field
    assert side["image"] == "reg/busybox:1"  # newName alone keeps the tag


def test_render_deletes_with_patch_delete(tmp_path: Path) -> None:
    overlay = write(
        tmp_path,
        {
            "kustomization.yaml": kustomization(
                resources=["a.yaml"], patches=[{"path": "delete.yaml"}]
            ),
            "a.yaml": [deployment("a", "x"), deployment("b", "x")],
            "delete.yaml": {
                "$patch": "delete",
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "a"},
            },
        },
    )
    assert [d["metadata"]["name"] for d in render.build(overlay)] == ["b"]


@pytest.mark.parametrize(
    ("fields", "files", "error"),
    [
        ({"commonLabels": {"a": "b"}}, {}, "unsupported kustomization fields"),
        ({"replicas": [{"name": "nope", "count": 1}]}, {}, "no workload named nope"),
        ({"patches": [{"path": "p.yaml", "target": {"kind": "X"}}]}, {}, "only `path:`"),
        (
            {"patches": [{"path": "p.yaml"}]},
            {"p.yaml": [deployment("a", "x"), deployment("a", "y")]},
            "exactly one document",
        ),
        (
            {"patches": [{"path": "p.yaml"}]},
            {"p.yaml": deployment("other", "x")},
            "matches 0 resources",
        ),
        ({"resources": ["a.yaml", "a.yaml"]}, {}, "defined twice"),
    ],
)
def test_render_refuses_what_it_cannot_do_like_kustomize(
    tmp_path: Path, fields: Doc, files: dict[str, Any], error: str
) -> None:
    spec = kustomization(**{"resources": ["a.yaml"], **fields})
    write(tmp_path, {"kustomization.yaml": spec, "a.yaml": deployment("a", "x"), **files})
    with pytest.raises(KustomizeError, match=re.escape(error)):
        render.build(tmp_path)


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("app", ("app", "")),
        ("app:1.2", ("app", ":1.2")),
        ("registry:5000/team/app", ("registry:5000/team/app", "")),
        ("registry:5000/app:v1", ("registry:5000/app", ":v1")),
        ("app@sha256:abc", ("app", "@sha256:abc")),
    ],
)
def test_split_image(image: str, parts: tuple[str, str]) -> None:
    assert render.split_image(image) == parts


def test_differences_name_what_kustomize_renders_otherwise() -> None:
    ours = [deployment("a", "x"), deployment("b", "x")]
    theirs = copy.deepcopy(ours)
    assert differences(ours, theirs) == []
    theirs[0]["spec"]["replicas"] = 2
    theirs.append(deployment("c", "x"))
    del theirs[1]
    assert differences(ours, theirs) == [
        "('Deployment', '', 'c'): only in kustomize's output",
        "('Deployment', '', 'b'): missing from kustomize's output",
        "('Deployment', '', 'a'): differs from kustomize's",
    ]
