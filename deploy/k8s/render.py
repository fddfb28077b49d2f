"""Building a kustomization as `kustomize build` does, for the features ours use.

Fields: `resources` (files, or directories with a kustomization of their own),
`namespace`, `patches` (each a `path:` to one strategic-merge document naming its
target by apiVersion, kind and name; `$patch: delete` removes the target, a null
removes a field), `replicas` and `images`. Any other field is refused, so that an
overlay never renders differently here than in kustomize without an error; make lint
also compares the two outputs when it has the kustomize binary.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

KUSTOMIZATION = "kustomization.yaml"
OVERLAYS_DIR = Path(__file__).resolve().parent / "overlays"

_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "patches", "replicas", "images"}
)
#: Kinds without a namespace that the namespace transformer leaves alone.
_CLUSTER_SCOPED = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "IngressClass", "PriorityClass"}
)
#: Lists that a strategic merge merges item by item (by this key). Every other list is
#: replaced whole, as the Kubernetes API marks the lists our patches touch (Ingress
#: rules and tls, an autoscaler's metrics).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
_SCALABLE = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})


class KustomizeError(ValueError):
    """A kustomization this renderer cannot build (or kustomize would refuse)."""


def overlays() -> dict[str, Path]:
    """Every overlay under deploy/k8s/overlays, by directory name."""
    return {p.name: p for p in sorted(OVERLAYS_DIR.iterdir()) if (p / KUSTOMIZATION).is_file()}


def load_documents(path: Path) -> list[Doc]:
    """The non-empty YAML documents of a file; each must be a mapping."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise KustomizeError(f"{path}: a document is not a mapping")
    return docs


def key(doc: Doc) -> tuple[str, str, str]:
    """(kind, namespace, name): what identifies a resource in a build."""
    meta = doc.get("metadata", {})
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def build(directory: Path) -> list[Doc]:
    """The resources of the kustomization in `directory`, transformed as kustomize does."""
    spec = load_documents(directory / KUSTOMIZATION)[0]
    unknown = sorted(set(spec) - _FIELDS)
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {unknown}")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        docs.extend(build(path) if path.is_dir() else load_documents(path))
    seen: set[tuple[str, str, str]] = set()
    for doc in docs:
        if key(doc) in seen:
            raise KustomizeError(f"{directory}: {key(doc)} is defined twice")
        seen.add(key(doc))
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{directory}: only `path:` patches are supported")
        docs = apply_patch(docs, directory / patch["path"])
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for entry in spec.get("replicas", []):
        set_replicas(docs, entry["name"], entry["count"])
    for entry in spec.get("images", []):
        set_image(docs, entry)
    return docs


def apply_patch(docs: list[Doc], path: Path) -> list[Doc]:
    """`docs` with the one strategic-merge document in `path` applied to its target."""
    patches = load_documents(path)
    if len(patches) != 1:
        raise KustomizeError(f"{path}: a patch file holds exactly one document")
    patch = patches[0]
    meta = patch.get("metadata", {})
    matches = [
        doc
        for doc in docs
        if doc["apiVersion"] == patch.get("apiVersion")
        and doc["kind"] == patch.get("kind")
        and doc["metadata"]["name"] == meta.get("name")
        and meta.get("namespace", doc["metadata"].get("namespace"))
        == doc["metadata"].get("namespace")
    ]
    if len(matches) != 1:
        raise KustomizeError(f"{path}: the patch matches {len(matches)} resources, not one")
    target = matches[0]
    directive = patch.get("$patch")
    if directive == "delete":
        return [doc for doc in docs if doc is not target]
    if directive is not None:
        raise KustomizeError(f"{path}: unsupported $patch: {directive}")
    merge(target, {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")})
    return docs


def merge(base: Doc, patch: Doc) -> None:
    """Merge `patch` into `base` in place (a strategic merge, for the lists we patch)."""
    for field, value in patch.items():
        current = base.get(field)
        if value is None:
            base.pop(field, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            merge(current, value)
        elif isinstance(value, list) and isinstance(current, list) and field in _MERGE_KEYS:
            _merge_list(current, value, _MERGE_KEYS[field])
        else:
            base[field] = _without_nulls(copy.deepcopy(value))


def _merge_list(base: list[Any], patch: list[Any], merge_key: str) -> None:
    for item in patch:
        same = [b for b in base if isinstance(b, dict) and b.get(merge_key) == item[merge_key]]
        if same:
            merge(same[0], item)
        else:
            base.append(_without_nulls(copy.deepcopy(item)))


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def set_replicas(docs: list[Doc], name: str, count: int) -> None:
    """kustomize's `replicas:`: the count of the workload `name`, which must exist."""
    targets = [d for d in docs if d["kind"] in _SCALABLE and d["metadata"]["name"] == name]
    if not targets:
        raise KustomizeError(f"replicas: no workload named {name}")
    for doc in targets:
        doc["spec"]["replicas"] = count


def set_image(docs: list[Doc], entry: dict[str, str]) -> None:
    """kustomize's `images:`: every container image named `name` (any tag) gets
    `newName` and `newTag` (or `digest`); what the entry leaves out stays."""
    for container in _containers(docs):
        image = container["image"]
        name, tag = split_image(image)
        if name != entry["name"]:
            continue
        new_name = entry.get("newName", name)
        if "digest" in entry:
            container["image"] = f"{new_name}@{entry['digest']}"
        elif "newTag" in entry:
            container["image"] = f"{new_name}:{entry['newTag']}"
        else:
            container["image"] = new_name + tag


def split_image(image: str) -> tuple[str, str]:
    """("registry/name", ":tag" or "@digest" or "") of an image reference."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    head, sep, tail = image.rpartition(":")
    if sep and "/" not in tail:
        return head, ":" + tail
    return image, ""


def _containers(docs: list[Doc]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for field, value in node.items():
                if field in ("containers", "initContainers") and isinstance(value, list):
                    found.extend(c for c in value if isinstance(c, dict) and "image" in c)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(docs)
    return found
