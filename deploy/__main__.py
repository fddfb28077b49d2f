"""`python -m deploy {up,stop,status,logs}`; GATEWAYS, WORKERS, STICKY from the environment."""

from __future__ import annotations

import argparse
import sys

from deploy.cluster import Cluster, ClusterSpec, DeployError
from deploy.prereqs import PrereqError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    parser.add_argument("command", choices=["up", "stop", "status", "logs"])
    args = parser.parse_args(argv)
    try:
        spec = ClusterSpec.from_env()
        if args.command != "up":
            spec = ClusterSpec.load(spec.run_dir) or spec
        cluster = Cluster(spec)
        if args.command == "up":
            cluster.up()
            return 0
        if args.command == "stop":
            return 0 if cluster.stop().clean else 1
        if args.command == "status":
            return 0 if cluster.status() else 1
        cluster.follow_logs()
        return 0
    except (DeployError, PrereqError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
