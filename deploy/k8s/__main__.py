"""`python -m deploy.k8s check [--kustomize BIN] [--out DIR]` (make lint).

Renders every overlay (deploy/k8s/render.py); with `--kustomize`, also with that
binary, and fails where the two differ; validates every document against Kubernetes
KUBERNETES_VERSION (kubernetes-validate, strict) and runs the checks of checks.py.
`--out` writes each rendering to DIR/<overlay>.yaml. Exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from deploy.k8s import checks, render
from deploy.k8s.render import Doc


def kustomize_build(binary: str, directory: Path) -> list[Doc]:
    """`kustomize build directory`, parsed; raises CalledProcessError if it fails."""
    out = subprocess.run(
        [binary, "build", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d is not None]


def differences(ours: list[Doc], theirs: list[Doc]) -> list[str]:
    """Resources only one of two renderings has, or that differ between them."""
    mine = {render.key(d): d for d in ours}
    other = {render.key(d): d for d in theirs}
    found = [f"{k}: only in kustomize's output" for k in sorted(other.keys() - mine.keys())]
    found += [f"{k}: missing from kustomize's output" for k in sorted(mine.keys() - other.keys())]
    found += [
        f"{k}: differs from kustomize's"
        for k in sorted(mine.keys() & other.keys())
        if mine[k] != other[k]
    ]
    return found


def check(kustomize: str | None, out: Path | None) -> int:
    failed = False
    for name, directory in render.overlays().items():
        docs = render.build(directory)
        found = []
        if kustomize:
            try:
                found += differences(docs, kustomize_build(kustomize, directory))
            except subprocess.CalledProcessError as exc:
                found.append(f"kustomize build failed: {exc.stderr.strip()}")
        found += checks.schema_problems(docs)
        found += checks.problems(docs)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        for problem in found:
            print(f"deploy/k8s/overlays/{name}: {problem}", file=sys.stderr)
        failed = failed or bool(found)
        how = "same as kustomize, " if kustomize else ""
        print(
            f"deploy/k8s/overlays/{name}: {len(docs)} resources, {how}valid for Kubernetes "
            f"{checks.KUBERNETES_VERSION}" + (f", {len(found)} problems" if found else ", ok")
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.k8s")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("check", help="render, compare, validate and check every overlay")
    cmd.add_argument("--kustomize", help="a kustomize binary to compare the renderings with")
    cmd.add_argument("--out", type=Path, help="write each overlay's rendering here")
    args = parser.parse_args(argv)
    return check(args.kustomize, args.out)


if __name__ == "__main__":
    sys.exit(main())
