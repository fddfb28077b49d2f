"""The measurements behind docs/scaling.md: what one answer and one idle connection cost.

`paced`: a cluster (N gateways and N workers, nginx, Redis, the broker) on free ports;
S clients each ask one question of T tokens at 40 tokens/s. Prints CPU by process
kind, Redis `INFO commandstats` for the run (calls and time per command, so commands
per chunk and per answer), and `MEMORY USAGE` of the keys left behind, by key pattern.

`xread`: a bare redis-server on a free port: Redis's time per XREAD by the number of
streams it names (nothing new, and blocked then woken by one entry), and the CPU a
redis-py asyncio client spends per XREAD (what a gateway's relay lane pays per read).

`idle`: the same cluster; C clients connect and stay idle. Prints the CPU of the
connect phase, the CPU while held (against the same time with no client: the cost of
keepalive pings), descriptors and resident memory by process kind, and the Redis
commands of each phase.

    .venv/bin/python -m tests.bench.capacity paced --streams 200 --tokens 400 \\
        --max-chunks-per-s 100 --relay-batch-ms 50
    .venv/bin/python -m tests.bench.capacity idle --connections 3000 --hold 20
    .venv/bin/python -m tests.bench.capacity xread

JSON on stdout. Traffic stays on 127.0.0.0/8; the cluster is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import redis
import redis.asyncio as aredis

from deploy.cluster import Cluster, ClusterSpec
from deploy.spec import free_ports
from tests.bench import procstats
from tests.bench.loadgen import hold_idle, run_streams
from tests.bench.targets import CHAT_V1, ModelShape, Target

#: Ids in key names, folded so that keys group by kind.
_IDS = re.compile(r"m_[0-9a-f]+|bench-[0-9a-z]+-\d+|b\d+|[0-9a-f]{16,}")


def _kind(name: str) -> str:
    return name.split("-")[0] if re.fullmatch(r"(gateway|worker)-\d+", name) else name


@contextmanager
def cluster(
    shape: ModelShape, nodes: int, env: dict[str, str]
) -> Iterator[tuple[Target, redis.Redis]]:
    spec = ClusterSpec.on_free_ports(
        Path(tempfile.mkdtemp(prefix="capacity-")),
        nodes,
        nodes,
        extra_env={"AUTH_DEV_MODE": "true", **shape.env(), **env},
    )
    running = Cluster(spec, out=lambda _line: None)
    try:
        if not running.up():
            raise RuntimeError(f"the cluster did not come up (logs in {spec.run_dir}/logs)")
        pids: dict[str, list[int]] = {}
        for name, pid in running.pids().items():
            if pid:
                pids.setdefault(_kind(name), []).append(pid)
        url = f"ws://127.0.0.1:{spec.public_port}/ws/chat"
        r = redis.Redis.from_url(spec.redis_url, decode_responses=True)
        time.sleep(3)  # let start-up work settle before anything is counted
        yield Target("ours", CHAT_V1, url, pids), r
    finally:
        running.stop()


def commandstats(r: redis.Redis) -> dict[str, dict[str, float]]:
    stats = r.info("commandstats")
    return {
        k.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]}
        for k, v in sorted(stats.items(), key=lambda kv: -kv[1]["calls"])
    }


def descriptors(pids: dict[str, list[int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind, roots in pids.items():
        out[kind] = 0
        for root in roots:
            for proc in procstats._family(root):
                try:
                    out[kind] += proc.num_fds()
                except psutil.Error:
                    continue
    return out


def memory_by_pattern(r: redis.Redis) -> dict[str, dict[str, int]]:
    """MEMORY USAGE of every key, grouped by name with ids folded (a small private
    Redis: SCAN over all of it is fine here)."""
    sizes: dict[str, list[int]] = {}
    for key in r.scan_iter(count=1000):
        pattern = _IDS.sub("*", key)
        pattern = re.sub(r":cmsg:.*", ":cmsg:*", pattern)
        sizes.setdefault(pattern, []).append(r.memory_usage(key, samples=0) or 0)
    return {
        p: {"keys": len(v), "bytes_each": round(sum(v) / len(v))} for p, v in sorted(sizes.items())
    }


def _cpu(after: procstats.Snapshot, before: procstats.Snapshot) -> dict[str, float]:
    return {k: round(v, 3) for k, v in after.cpu_since(before).items()}


def paced(args: argparse.Namespace) -> dict[str, Any]:
    shape = ModelShape(min_tokens=args.tokens, max_tokens=args.tokens)
    env = {
        "WORKER_MAX_CHUNKS_PER_S": str(args.max_chunks_per_s),
        "RELAY_BATCH_MS": str(args.relay_batch_ms),
    }
    with cluster(shape, args.nodes, env) as (target, r):
        r.config_resetstat()
        before = procstats.snapshot(target.pids)
        result = run_streams(target, streams=args.streams, timeout=300, progress=False)
        cpu = _cpu(procstats.snapshot(target.pids), before)
        return {
            "settings": vars(args) | env,
            "answers_ok": result.ok,
            "answers": result.total,
            "chunks": result.chunks,
            "measured_s": round(result.measured_s, 2),
            "cpu_s": cpu,
            "cpu_ms_per_answer": {k: round(v / result.total * 1000, 2) for k, v in cpu.items()},
            "commandstats": commandstats(r),
            "memory_by_pattern": memory_by_pattern(r),
        }


def idle(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"settings": vars(args)}
    with cluster(ModelShape(), args.nodes, {}) as (target, r):
        out["fds_before"] = descriptors(target.pids)
        quiet = procstats.snapshot(target.pids)
        time.sleep(args.hold)
        out["cpu_s_no_client"] = _cpu(procstats.snapshot(target.pids), quiet)
        out["redis_used_memory_before"] = r.info("memory")["used_memory"]
        r.config_resetstat()
        started = procstats.snapshot(target.pids)
        connect_from = time.monotonic()

        def measure() -> None:
            out["connect_s"] = round(time.monotonic() - connect_from, 2)
            out["cpu_s_connect"] = _cpu(procstats.snapshot(target.pids), started)
            out["commandstats_connect"] = commandstats(r)
            time.sleep(3)  # let the connect burst's work drain before the held window
            r.config_resetstat()
            held = procstats.snapshot(target.pids)
            time.sleep(args.hold)
            after = procstats.snapshot(target.pids)
            out["cpu_s_held"] = _cpu(after, held)
            out["rss_mib"] = {k: round(v / 2**20, 1) for k, v in after.rss.items()}
            out["fds_held"] = descriptors(target.pids)
            out["commandstats_held"] = commandstats(r)
            out["redis_used_memory_held"] = r.info("memory")["used_memory"]
            out["redis_clients"] = r.info("clients")["connected_clients"]

        result = hold_idle(
            target,
            connections=args.connections,
            hold_s=args.hold + 5,
            progress=False,
            on_connected=measure,
        )
        out["connected"] = result.connected
        out["dropped"] = result.dropped
        return out


def _xread_usec(r: redis.Redis) -> float:
    return float(r.info("commandstats")["cmdstat_xread"]["usec_per_call"])


async def _client_cpu_us(port: int, streams: dict[str, str], calls: int) -> float:
    client = aredis.Redis(port=port, decode_responses=True)
    try:
        await client.xread(streams, count=512)
        start = time.process_time()
        for _ in range(calls):
            await client.xread(streams, count=512)
        return (time.process_time() - start) / calls * 1e6
    finally:
        await client.aclose()


def xread(args: argparse.Namespace) -> dict[str, Any]:
    port = free_ports(1)[0]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    out: dict[str, Any] = {"by_keys": {}}
    try:
        r = redis.Redis(port=port, decode_responses=True)
        for _ in range(50):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        names = [f"{{b0}}:msg:m_{i:04d}:stream" for i in range(max(args.keys))]
        with r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.xadd(name, {"d": "some text of a chunk", "t": "1764288000000"}, id="0-1")
            pipe.execute()
        blocking = redis.Redis(port=port, decode_responses=True)
        for n in args.keys:
            streams = {name: "0-1" for name in names[:n]}
            r.config_resetstat()
            for _ in range(200):
                r.xread(streams, count=512)
            idle_us = _xread_usec(r)
            r.config_resetstat()
            for seq in range(2, 102):
                waiting = dict(streams) | {names[0]: f"0-{seq - 1}"}
                wake = threading.Timer(
                    0.002, r.xadd, args=(names[0], {"d": "x", "t": "1"}), kwargs={"id": f"0-{seq}"}
                )
                wake.start()
                blocking.xread(waiting, count=512, block=1000)
                wake.join()
            woken_us = _xread_usec(r)
            r.delete(names[0])
            r.xadd(names[0], {"d": "some text of a chunk", "t": "1764288000000"}, id="0-1")
            out["by_keys"][n] = {
                "usec_nothing_new": idle_us,
                "usec_blocked_then_woken": woken_us,
            }
        moved = {name: "0-0" for name in names[:5]}
        out["client_cpu_us_per_xread_5_keys"] = round(
            asyncio.run(_client_cpu_us(port, moved, 2000)), 1
        )
        return out
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.capacity", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3, help="gateways, and as many workers")
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("paced", help="S answers of T tokens at 40 tokens/s, at once")
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--tokens", type=int, default=400)
    p.add_argument("--max-chunks-per-s", type=float, default=1500.0)
    p.add_argument("--relay-batch-ms", type=float, default=5.0)
    i = sub.add_parser("idle", help="C idle connections, held")
    i.add_argument("--connections", type=int, default=3000)
    i.add_argument("--hold", type=float, default=20.0, help="seconds")
    x = sub.add_parser("xread", help="XREAD's cost by streams named (a bare redis-server)")
    x.add_argument("--keys", type=int, nargs="+", default=[10, 100, 500, 2000])
    args = parser.parse_args(argv)
    run = {"paced": paced, "idle": idle, "xread": xread}[args.scenario]
    result = run(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
