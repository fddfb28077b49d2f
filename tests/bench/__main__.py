"""`make bench`: ours side by side with a bare ceiling and a python-socketio peer.

Scenarios (each on targets started fresh on free loopback ports, driven by the same
load generator, tests/bench/loadgen.py, from many 127.x.y.1 sources):

- `paced`: N concurrent streams of 200-token answers at 40 tokens/s (25 ms / 16-token
  batching): time to first chunk, gaps, duration / ideal, chunks/s, CPU per 1,000 chunks.
- `fullspeed`: N streams of 1,000 one-token chunks as fast as they go.
- `idle`: N connections held open: RSS per connection by process kind.
- `failover` (ours only): kill -9 of a gateway mid-answer (resume to the next chunk) and
  of the generating worker (takeover to the next chunk).
- `overload` (ours only): N paced streams, far past what the machine serves at pace:
  every answer must still end exactly once with exact usage, none silent for long;
  the run counts what admission refused (`busy` + `retry_after`, sent again by the
  clients) and how long that made them wait.
- `http`: the Durable Streams HTTP interface, ours (`/streams/` through nginx) next to
  the reference server (`@durable-streams/server`, Node): appends/s of N writers, and
  SSE messages delivered/s to M readers while writers append, every message exactly
  once and in order (tests/bench/http_streams.py).

Results go to bench-results/<timestamp>/: results.json, summary.md and PNG plots.
`BENCH_QUICK=1` (or --quick) runs small sizes in about a minute or two; `--smoke` the
smallest, for `make test` (no timing is asserted anywhere), with shorter answers, two
gateways and two workers, and each system started once for all the scenarios that run
on it with the same model (`--reuse-targets`; a full run starts every system afresh
for each scenario). Traffic goes to 127.0.0.0/8 only; every target is stopped at the
end, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from deploy.cluster import Cluster, ClusterSpec
from deploy.tokens import mint, resolve_secret
from services.common.keys import Keys
from tests.bench import procstats
from tests.bench.baselines.launch import start_bare, start_socketio
from tests.bench.http_streams import HttpSizes, http_run, reference_version, start_reference
from tests.bench.loadgen import StreamsResult, Summary, hold_idle, run_streams, summarize
from tests.bench.report import write_report
from tests.bench.targets import (
    CHAT_V1,
    DURABLE_STREAMS,
    FULL_SPEED,
    PACED,
    ModelShape,
    Target,
)
from tests.chat_client import Answer, ChatClient
from tests.conftest import ClusterHandle

SCENARIOS = ("paced", "fullspeed", "idle", "failover", "overload", "http")
#: Ours only: the baselines have no failover, and no admission to measure under overload.
OURS_ONLY = ("failover", "overload")
#: An answer silent this long (before its first chunk once accepted, or between two
#: chunks) counts as stalled in the overload scenario.
STALL_S = 5.0
TARGETS = ("ours", "bare", "socketio", "reference")
#: The WebSocket chat systems, and the Durable Streams HTTP servers (`http` only).
CHAT_TARGETS = ("ours", "bare", "socketio")
HTTP_TARGETS = ("ours", "reference")
#: ours' process kinds that serve the Durable Streams HTTP interface (CPU counted).
HTTP_KINDS = ("gateway", "nginx", "redis")


@dataclass(frozen=True)
class Sizes:
    paced_streams: int
    fullspeed_streams: int
    idle_connections: int
    idle_hold_s: float
    failover_rounds: int
    overload_streams: int
    http: HttpSizes
    nodes: int = 3
    """Gateways and workers of ours (and servers and workers of the socket.io peer)."""
    paced: ModelShape = PACED
    fullspeed: ModelShape = FULL_SPEED


FULL = Sizes(1000, 100, 10_000, 10.0, 10, 3000, HttpSizes(16, 10.0, 1_000_000, 16, 64, 1000))
QUICK = Sizes(100, 20, 1000, 3.0, 3, 300, HttpSizes(8, 3.0, 1_000_000, 8, 32, 300))
SMOKE = Sizes(
    4,
    2,
    20,
    0.5,
    1,
    6,
    HttpSizes(2, 0.5, 200, 2, 4, 40),
    nodes=2,
    # Answers of about a second: the code path is the same, the waits are shorter.
    paced=replace(PACED, min_tokens=40, max_tokens=40),
    fullspeed=replace(FULL_SPEED, min_tokens=300, max_tokens=300),
)


# --- targets ---------------------------------------------------------------------------


def _kind(name: str) -> str:
    """gateway-2 -> gateway; nginx, redis, kafka stay."""
    return name.split("-")[0] if re.fullmatch(r"(gateway|worker)-\d+", name) else name


def cluster_pids(cluster: Cluster) -> dict[str, list[int]]:
    """The cluster's running processes by kind (now: a killed node comes back anew)."""
    pids: dict[str, list[int]] = {}
    for name, pid in cluster.pids().items():
        if pid:
            pids.setdefault(_kind(name), []).append(pid)
    return pids


@contextmanager
def ours(shape: ModelShape, run_root: Path, nodes: int = 3) -> Iterator[tuple[Target, Cluster]]:
    spec = ClusterSpec.on_free_ports(
        Path(tempfile.mkdtemp(prefix="ours-", dir=run_root)),
        nodes,
        nodes,
        extra_env={"AUTH_DEV_MODE": "true", **shape.env()},
    )
    cluster = Cluster(spec, out=lambda _line: None)
    try:
        if not cluster.up():
            raise RuntimeError(f"our cluster did not come up (logs in {spec.run_dir}/logs)")
        url = f"ws://127.0.0.1:{spec.public_port}/ws/chat"
        yield Target("ours", CHAT_V1, url, cluster_pids(cluster)), cluster
    finally:
        cluster.stop()


def ours_http(cluster: Cluster) -> Target:
    """ours as a Durable Streams server: `/streams` through nginx, a JWT of the
    cluster's secret, CPU of the gateways, nginx and Redis."""
    spec = cluster.spec
    secret, _ = resolve_secret(spec.run_dir, explicit=spec.extra_env.get("JWT_SECRET"))
    pids = {k: v for k, v in cluster_pids(cluster).items() if k in HTTP_KINDS}
    url = f"http://127.0.0.1:{spec.public_port}/streams"
    return Target("ours", DURABLE_STREAMS, url, pids, token=mint(secret, "bench", ttl=3600))


@contextmanager
def started(
    name: str, shape: ModelShape, run_root: Path, nodes: int = 3, storage: str = "memory"
) -> Iterator[tuple[Target, Cluster | None]]:
    if name == "ours":
        with ours(shape, run_root, nodes) as (target, cluster):
            yield target, cluster
        return
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=run_root))
    if name == "reference":
        with start_reference(run_dir, storage) as reference:
            yield reference.target, None
        return
    if name == "bare":
        baseline = start_bare(shape, run_dir)
    else:
        baseline = start_socketio(shape, run_dir, nodes, nodes)
    with baseline:
        yield baseline.target, None


class Systems:
    """Starts the system each run needs; with `reuse`, the one running is kept for the
    next run that wants the same system with the same model (the reference server has
    no model), instead of being stopped and started again."""

    def __init__(self, run_root: Path, sizes: Sizes, reuse: bool, storage: str) -> None:
        self.run_root, self.sizes, self.reuse, self.storage = run_root, sizes, reuse, storage
        self._stack: ExitStack | None = None
        self._key: tuple[str, ModelShape | None] | None = None
        self._running: tuple[Target, Cluster | None] | None = None

    def get(self, name: str, shape: ModelShape) -> tuple[Target, Cluster | None]:
        key = (name, None if name == "reference" else shape)
        if self._running is not None and self._key == key:
            target, cluster = self._running
            if cluster is not None:  # failover replaces nodes: count the ones running now
                target = replace(target, pids=cluster_pids(cluster))
            return target, cluster
        self.close()
        stack = ExitStack()
        try:
            context = started(name, shape, self.run_root, self.sizes.nodes, self.storage)
            self._running = stack.enter_context(context)
        except BaseException:
            stack.close()
            raise
        self._stack, self._key = stack, key
        return self._running

    def done(self, failed: bool) -> None:
        """After a run: stop the system unless it is kept (a run that failed may have
        left it broken, so it is never kept)."""
        if failed or not self.reuse:
            self.close()

    def close(self) -> None:
        stack, self._stack, self._key, self._running = self._stack, None, None, None
        if stack is not None:
            stack.close()


def plan(scenarios: list[str], targets: list[str], reuse: bool) -> list[tuple[str, str]]:
    """(scenario, target) runs, in scenario order; with `reuse`, grouped so that runs on
    the same system with the same model follow each other: by target, paced model first,
    failover last on its cluster (it kills nodes)."""
    runs = [
        (s, t)
        for s in scenarios
        for t in targets
        if t in (("ours",) if s in OURS_ONLY else HTTP_TARGETS if s == "http" else CHAT_TARGETS)
    ]
    if reuse:
        runs.sort(
            key=lambda r: (
                TARGETS.index(r[1]),
                r[0] == "fullspeed",
                r[0] == "failover",
                SCENARIOS.index(r[0]),
            )
        )
    return runs


# --- scenarios -------------------------------------------------------------------------


def _summary(s: Summary | None, scale: float = 1.0) -> dict[str, float] | None:
    if s is None:
        return None
    return {k: round(v * scale, 4) for k, v in asdict(s).items() if k != "n"} | {"n": s.n}


def streams_run(
    target: Target,
    shape: ModelShape,
    streams: int,
    procs: int,
    progress: bool,
    delays: Callable[[], dict[float, float]] | None = None,
) -> dict[str, Any]:
    """Drive `streams` answers at once; client figures, CPU by process kind, and (ours)
    the delay from a worker's write to the gateway's send, from `delays`."""
    before = procstats.snapshot(target.pids)
    delay_before = delays() if delays else None
    result = run_streams(
        target,
        streams=streams,
        procs=procs,
        timeout=run_timeout(shape, streams),
        progress=progress,
        first_octet=10,
    )
    after = procstats.snapshot(target.pids)
    cpu = after.cpu_since(before)
    chunks = result.chunks
    per_1000 = {k: round(v / chunks * 1000, 4) for k, v in cpu.items()} if chunks else {}
    if per_1000:
        per_1000["total"] = round(sum(per_1000.values()), 4)
    text = sum(a.text_len for a in result.answers)
    return {
        "streams": streams,
        "answers": result.total,
        "ok": result.ok,
        "failed": result.failed,
        "not_exactly_once": result.not_exactly_once,
        "errors": result.errors,
        "refusals": result.refusals,
        "refused_answers": sum(1 for a in result.answers if a.refusals),
        "resumes": sum(a.resumes for a in result.answers),
        "refused_wait_ms": _summary(result.refused_waits(), 1000),
        "stalled": result.stalled(STALL_S),
        "connect_failures": result.connect_failures,
        "usage_wrong": usage_wrong(result, shape),
        "chunks": chunks,
        "measured_s": round(result.measured_s, 3),
        "chunks_per_s": round(result.chunks_per_second, 1),
        "text_per_s": round(result.text_per_second, 1),
        "ttfc_ms": _summary(result.ttfc(), 1000),
        "gap_ms": _summary(result.gaps(), 1000),
        "duration_ratio": _summary(result.duration_ratio(shape)),
        "chunk_delay_ms": chunk_delay_summary(delay_before, delays() if delays else None),
        "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_s_per_1000_chunks": per_1000,
        # Chunks may carry several tokens (adaptive batching): CPU per text is the fair
        # comparison with a peer that sends a token per message.
        "cpu_s_per_10k_chars": round(sum(cpu.values()) / text * 10_000, 4) if text else None,
        "rss_mib": {k: round(v / 2**20, 1) for k, v in after.rss.items()},
        "throughput": [(round(t, 2), round(r, 1)) for t, r in result.throughput(1.0)],
    }


def run_timeout(shape: ModelShape, streams: int) -> float:
    """How long a streams run may take before its unfinished answers count as failed
    ("timeout"): generous (a system that cannot keep up still finishes, slowly), but
    bounded, so one that stalls does not hold the whole bench."""
    return 120.0 + 4 * shape.ideal_duration + 0.1 * streams


def usage_wrong(result: StreamsResult, shape: ModelShape) -> int | None:
    """Completed answers whose reported completion tokens are not the model's own count
    (known only when every answer has the same length)."""
    if shape.min_tokens != shape.max_tokens:
        return None
    return sum(
        1
        for a in result.answers
        if a.error is None
        and (a.usage or {}).get("completion_tokens", shape.max_tokens) != shape.max_tokens
    )


def chunk_delay_summary(
    before: dict[float, float] | None, after: dict[float, float] | None
) -> dict[str, float] | None:
    """p50/p95/p99 (ms) of the histogram's growth, interpolated within buckets."""
    if before is None or after is None:
        return None
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    out: dict[str, float] = {"n": total}
    for q in (50, 95, 99):
        rank = total * q / 100
        lower_le, lower_n = 0.0, 0.0
        for le, n in counts:
            if n >= rank:
                span = n - lower_n
                frac = (rank - lower_n) / span if span else 0.0
                upper = le if le != float("inf") else lower_le
                out[f"p{q}"] = round((lower_le + (upper - lower_le) * frac) * 1000, 2)
                break
            lower_le, lower_n = le, n
    return out


_BUCKET = re.compile(r'^gateway_chunk_delay_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\} (\S+)$')


def gateway_delays(cluster: Cluster) -> dict[float, float]:
    """The gateways' histogram of worker write -> gateway send, summed (le -> count)."""
    total: dict[float, float] = {}
    for name in cluster.spec.gateway_names:
        url = f"http://127.0.0.1:{cluster.spec.node_port(name)}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if m := _BUCKET.match(line):
                    le = float(m[1])
                    total[le] = total.get(le, 0.0) + float(m[2])
    return total


def idle_run(
    target: Target, connections: int, hold_s: float, procs: int, progress: bool
) -> dict[str, Any]:
    """Hold `connections` sockets; RSS growth per connection by process kind."""
    before = procstats.snapshot(target.pids)
    during: list[procstats.Snapshot] = []

    def measure() -> None:
        time.sleep(min(2.0, hold_s / 2))  # let allocators settle (a measurement, not a sync)
        during.append(procstats.snapshot(target.pids))

    result = hold_idle(
        target,
        connections=connections,
        hold_s=hold_s,
        procs=procs,
        progress=progress,
        on_connected=measure,
        first_octet=10,
    )
    grown = during[0].rss_since(before) if during else {}
    held = max(result.connected, 1)
    per_conn = {k: round(v / held / 1024, 2) for k, v in grown.items()}
    edge = {"ours": ("gateway", "nginx"), "socketio": ("server", "nginx"), "bare": ("server",)}
    per_conn["edge_total"] = round(sum(per_conn.get(k, 0.0) for k in edge[target.name]), 2)
    per_conn["all_total"] = round(sum(v for k, v in per_conn.items() if k != "edge_total"), 2)
    return {
        "requested": connections,
        "connected": result.connected,
        "dropped": result.dropped,
        "connect_failures": result.connect_failures,
        "connect_s": result.connect_s,
        "rss_kib_per_connection": per_conn,
    }


async def _kill_and_time(pid: int, client: ChatClient, answer: Answer) -> float:
    killed = time.monotonic()
    os.killpg(pid, signal.SIGKILL)
    before = len(answer.seqs)
    follow = asyncio.create_task(client.follow_resilient(answer, timeout=120))
    while len(answer.seqs) == before and not follow.done():  # noqa: ASYNC110 - a probe
        await asyncio.sleep(0.002)
    gap = time.monotonic() - killed
    await follow
    answer.assert_exactly_once()
    return gap


async def failover_run(cluster: Cluster, rounds: int) -> dict[str, Any]:
    """kill -9 the client's gateway, then the generating worker, mid-answer."""
    url = f"ws://127.0.0.1:{cluster.spec.public_port}/ws/chat?token=dev-token&user_id=fo"
    gateway, worker = [], []
    redis = Redis.from_url(cluster.spec.redis_url, decode_responses=True)
    try:
        for r in range(rounds):
            client = ChatClient(f"{url}&session_id=fo-g{r}", local_ip=f"127.9.{r + 1}.1")
            welcome = await client.connect()
            ack = await client.chat("A question whose answer outlives its gateway")
            answer = await client.read_answer(Answer(ack["message_id"]), stop_after=3)
            pid = cluster.pids()[welcome["node_id"]]
            gateway.append(await _kill_and_time(pid, client, answer))
            await client.close()
            ClusterHandle(cluster).wait_healthy(welcome["node_id"], timeout=60.0)

            client = ChatClient(f"{url}&session_id=fo-w{r}", local_ip=f"127.9.{r + 101}.1")
            await client.connect()
            ack = await client.chat("A question whose answer outlives its worker")
            mid = ack["message_id"]
            answer = await client.read_answer(Answer(mid), stop_after=3)
            holder = await redis.get(Keys().message_lease(mid))
            name = str(holder).split(":")[0]
            worker.append(await _kill_and_time(cluster.pids()[name], client, answer))
            await client.close()
            ClusterHandle(cluster).wait_healthy(name, timeout=60.0)
    finally:
        await redis.aclose()
    return {
        "rounds": rounds,
        "gateway_kill_resume_ms": _summary(summarize(gateway), 1000),
        "worker_kill_takeover_ms": _summary(summarize(worker), 1000),
        "lease_ttl_ms": 2000,
    }


# --- main ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Path:
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    sizes = replace(
        sizes,
        paced_streams=args.paced_streams or sizes.paced_streams,
        fullspeed_streams=args.fullspeed_streams or sizes.fullspeed_streams,
        idle_connections=args.idle or sizes.idle_connections,
        failover_rounds=args.rounds or sizes.failover_rounds,
        overload_streams=args.overload_streams or sizes.overload_streams,
        http=replace(
            sizes.http,
            writers=args.http_writers or sizes.http.writers,
            sse_writers=args.http_writers or sizes.http.sse_writers,
            sse_readers=args.http_readers or sizes.http.sse_readers,
        ),
    )
    reuse = args.smoke if args.reuse_targets is None else args.reuse_targets
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / stamp
    out.mkdir(parents=True, exist_ok=True)
    run_root = Path(tempfile.mkdtemp(prefix="bench-"))
    progress = sys.stderr.isatty() and not args.smoke
    results: dict[str, Any] = {
        "started": stamp,
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "sizes": asdict(sizes),
        "reuse_targets": reuse,
        "scenarios": {},
    }
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    failures: list[str] = []
    for scenario in args.scenarios:
        shape = sizes.fullspeed if scenario == "fullspeed" else sizes.paced
        described = {"storage": args.ds_storage} if scenario == "http" else {"shape": asdict(shape)}
        results["scenarios"][scenario] = described | {"targets": {}}
    systems = Systems(run_root, sizes, reuse, args.ds_storage)
    try:
        for scenario, name in plan(args.scenarios, args.targets, reuse):
            got = results["scenarios"][scenario]["targets"]
            shape = sizes.fullspeed if scenario == "fullspeed" else sizes.paced
            say(f"bench: {scenario} on {name}")
            failed = False
            try:
                target, cluster = systems.get(name, shape)
                got[name] = one_run(scenario, target, cluster, shape, sizes, args, progress)
            except Exception as exc:  # noqa: BLE001 - one system failing is a result too
                # Recorded and reported; the other targets and scenarios still run.
                got[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                failures.append(f"{scenario} on {name}")
                failed = True
            systems.done(failed)
            say(f"bench: {scenario} on {name}: {_headline(got[name])}")
            results["failed_runs"] = failures
            (out / "results.json").write_text(json.dumps(results, indent=1))
    finally:
        systems.close()
    results["failed_runs"] = failures
    write_report(results, out)
    return out


def one_run(
    scenario: str,
    target: Target,
    cluster: Cluster | None,
    shape: ModelShape,
    sizes: Sizes,
    args: argparse.Namespace,
    progress: bool,
) -> dict[str, Any]:
    """One scenario on one running system."""
    if scenario == "failover":
        assert cluster is not None
        return asyncio.run(failover_run(cluster, sizes.failover_rounds))
    if scenario == "idle":
        return idle_run(target, sizes.idle_connections, sizes.idle_hold_s, args.procs, progress)
    if scenario == "http" and cluster is not None:
        server = f"{sizes.nodes} gateways behind nginx, Redis"
        return {"server": server} | http_run(ours_http(cluster), sizes.http)
    if scenario == "http":
        server = f"@durable-streams/server {reference_version()}, {args.ds_storage}"
        return {"server": server} | http_run(target, sizes.http)
    streams = {
        "paced": sizes.paced_streams,
        "fullspeed": sizes.fullspeed_streams,
        "overload": sizes.overload_streams,
    }[scenario]
    delays = partial(gateway_delays, cluster) if cluster else None
    return streams_run(target, shape, streams, args.procs, progress, delays)


def _headline(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED: {r['error'][:300]}"
    if "chunks_per_s" in r:
        return (
            f"{r['ok']}/{r['answers']} ok, {r['chunks_per_s']:,.0f} chunks/s, "
            f"cpu/1000 chunks {r['cpu_s_per_1000_chunks'].get('total', 0):.3f}s"
        )
    if "rss_kib_per_connection" in r:
        return f"{r['connected']}/{r['requested']} held, {r['rss_kib_per_connection']} KiB/conn"
    if "sse" in r:
        a, s = r["appends"], r["sse"]
        return (
            f"{a['appends_per_s']:,.0f} appends/s, {s['delivered_per_s']:,.0f} SSE messages/s; "
            f"lost {a['lost'] + s['lost']}, duplicated {a['duplicated'] + s['duplicated']}"
        )
    return json.dumps(r)[:200]


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("BENCH_QUICK")))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (make test)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--paced-streams", type=int, default=0)
    parser.add_argument("--fullspeed-streams", type=int, default=0)
    parser.add_argument("--idle", type=int, default=0, help="idle connections")
    parser.add_argument("--rounds", type=int, default=0, help="failover rounds")
    parser.add_argument("--overload-streams", type=int, default=0)
    parser.add_argument("--http-writers", type=int, default=0, help="http: writers (streams)")
    parser.add_argument("--http-readers", type=int, default=0, help="http: SSE readers")
    parser.add_argument(
        "--ds-storage",
        choices=("memory", "file"),
        default="memory",
        help="the reference server's storage (file: LMDB and logs in the run directory)",
    )
    parser.add_argument(
        "--reuse-targets",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start each system once for its scenarios with the same model (default: "
        "with --smoke only)",
    )
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)
    # A SIGTERM (`timeout`, a CI job cancelled) unwinds like Ctrl-C: every target started
    # is stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    out = run(args)
    print((out / "summary.md").read_text())
    print(f"results in {out}/ (results.json, summary.md, *.png)")
    failed = json.loads((out / "results.json").read_text()).get("failed_runs", [])
    if failed:
        print(f"runs that failed (their error is in results.json): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
