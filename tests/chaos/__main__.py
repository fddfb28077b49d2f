"""`make chaos`: N clients chat on a cluster of its own (free loopback ports) while a
seeded fault injector kills -9 / SIGTERMs gateways and workers, kills -9 Redis and the
Kafka broker, and reloads nginx; then the checker verifies every guarantee and prints a
table. Bounded in clients, faults and time; the cluster is always stopped at the end.
Exit status 1 if any check failed."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path

from deploy.cluster import Cluster, ClusterSpec
from tests.chaos.checker import check
from tests.chaos.runner import FAULT_KINDS, ChaosConfig, chaos_env, run_chaos


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--recovery-timeout", type=float, default=10.0)
    parser.add_argument(
        "--redis-ha",
        choices=("none", "sentinel"),
        default=os.environ.get("REDIS_HA") or "none",
        help="sentinel: primary + replica + 3 Sentinels; redis-kill9 kills the primary "
        "(default: $REDIS_HA, else none)",
    )
    parser.add_argument("--interval", type=float, nargs=2, default=(2.0, 6.0))
    parser.add_argument(
        "--kinds", default=",".join(FAULT_KINDS), help=f"comma-separated, of {FAULT_KINDS}"
    )
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the cluster is stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown or not 1 <= args.clients <= 2000 or not 0 < args.duration <= 3600:
        parser.error(f"bad --kinds {sorted(unknown)}, --clients or --duration")
    cfg = ChaosConfig(
        clients=args.clients,
        duration=args.duration,
        seed=args.seed,
        recovery_timeout=args.recovery_timeout,
        kinds=kinds,
        interval=(args.interval[0], args.interval[1]),
    )
    spec = ClusterSpec.on_free_ports(
        Path(tempfile.mkdtemp(prefix="chaos-")),
        args.gateways,
        args.workers,
        redis_ha=args.redis_ha,
        extra_env={
            "AUTH_DEV_MODE": "true",
            "JWT_SECRET": secrets.token_hex(16),
            **chaos_env(cfg.recovery_timeout),
        },
    )
    cluster = Cluster(spec, out=lambda _line: None)
    print(
        f"chaos: seed {cfg.seed}, {cfg.clients} clients, {cfg.duration:.0f}s of faults, "
        f"{args.gateways} gateways + {args.workers} workers, redis {args.redis_ha}, "
        f"in {spec.run_dir}"
    )
    started = time.monotonic()
    try:
        cluster.up()
        record = asyncio.run(run_chaos(cluster, cfg))
    finally:
        stopped = cluster.stop()
    record.stop_report = "" if stopped.clean else str(stopped)
    report = check(record)
    print(f"\nchaos run, seed {cfg.seed}, {time.monotonic() - started:.0f}s in all:")
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
