"""`python -m deploy {up,stop,status,logs}`; GATEWAYS, WORKERS, STICKY, PUBLIC_BIND from
the environment. `python -m deploy token USER [--ttl S]` prints a client token.
`rolling-restart` and `scale --gateways N --workers M` change a running cluster without
failing a client. `up` first builds the browser app if its sources changed
(FRONTEND_BUILD=0 skips that) and writes its runtime settings (FRONTEND_WS_URL,
FRONTEND_API_BASE)."""

from __future__ import annotations

import argparse
import os
import sys

from deploy import frontend
from deploy.cluster import Cluster, ClusterSpec, DeployError
from deploy.frontend import FrontendError
from deploy.prereqs import PrereqError
from deploy.tokens import DEFAULT_TTL, mint, resolve_secret


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("up", help="start the cluster and wait until it is healthy")
    commands.add_parser("stop", help="stop every process")
    commands.add_parser("status", help="processes and node health")
    commands.add_parser("logs", help="follow every log")
    commands.add_parser(
        "rolling-restart",
        help="restart every gateway, then every worker, one at a time, failing no client",
    )
    scale = commands.add_parser(
        "scale",
        help="change the number of gateways and workers of the running cluster",
        description="New nodes join nginx once ready; removed ones (the highest numbers) "
        "leave nginx, then stop gracefully. An omitted count stays as it is.",
    )
    scale.add_argument("--gateways", type=int, metavar="N", help="gateways wanted")
    scale.add_argument("--workers", type=int, metavar="M", help="workers wanted")
    token = commands.add_parser(
        "token",
        help="print a JWT for USER signed with the deploy's secret",
        description="Print an HS256 JWT (sub=USER, exp=now+TTL) signed with JWT_SECRET, "
        "or with the secret `make deploy` generated into the run dir.",
    )
    token.add_argument("user", metavar="USER", help="the user id (the token's sub)")
    token.add_argument(
        "--ttl", type=int, default=DEFAULT_TTL, help=f"seconds it stays valid ({DEFAULT_TTL})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = ClusterSpec.from_env()
        if args.command == "token":
            secret, _source = resolve_secret(spec.run_dir)
            print(mint(secret, args.user, args.ttl))
            return 0
        if args.command != "up":
            spec = ClusterSpec.load(spec.run_dir) or spec
        cluster = Cluster(spec)
        if args.command == "up":
            # FRONTEND_BUILD=0 skips the app's build (nginx then serves a placeholder).
            if os.environ.get("FRONTEND_BUILD", "1") != "0":
                frontend.ensure_built()
            frontend.write_config(spec.run_dir)
            cluster.up()
            return 0
        if args.command == "stop":
            return 0 if cluster.stop().clean else 1
        if args.command == "status":
            return 0 if cluster.status() else 1
        if args.command == "rolling-restart":
            cluster.rolling_restart()
            return 0
        if args.command == "scale":
            cluster.scale(
                spec.gateways if args.gateways is None else args.gateways,
                spec.workers if args.workers is None else args.workers,
            )
            return 0
        cluster.follow_logs()
        return 0
    except (DeployError, PrereqError, FrontendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
