"""The Kubernetes manifests (`base/`, `overlays/`) and their checks, with no cluster.

`render` builds an overlay as kustomize would, for the few kustomize features the
manifests use; `checks` says what a rendered overlay must hold (probes, draining,
security, secrets, autoscaling metrics that exist in the code, network policies,
ingress stickiness). `python -m deploy.k8s check` (make lint) renders every overlay,
compares the result with `kustomize build` when given one, validates every document
against the pinned Kubernetes API and runs the checks. See docs/kubernetes.md.
"""
