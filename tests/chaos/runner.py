"""The chaos run: N clients chatting through nginx while a seeded fault injector hurts
the cluster, then a Kafka consumer reads the topic. Produces a ChaosRecord for
checker.check. Every wait has a deadline; everything started here is stopped here
(the cluster itself belongs to the caller)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis
from redis.exceptions import RedisError
from websockets.exceptions import ConnectionClosed

from deploy.cluster import Cluster
from deploy.rollout import reload_nginx
from services.common.keys import Keys
from tests.bench.targets import source_ip
from tests.chaos.checker import AnswerRecord, ChaosRecord, FaultRecord, required_events
from tests.chat_client import Answer, ChatClient, Frame

FAULT_KINDS = (
    "gateway-kill9",
    "gateway-sigterm",
    "worker-kill9",
    "worker-sigterm",
    "redis-kill9",
    "kafka-kill9",
    "nginx-reload",
)


def chaos_env(recovery_timeout: float) -> dict[str, str]:
    """Settings for a chaos cluster: answers of one to a few seconds, so that faults
    hit answers mid-stream, and no chat limit in the way (nginx's per-address limit
    stays: every client has its own address)."""
    return {
        "STREAM_RECOVERY_TIMEOUT": str(recovery_timeout),
        "SIM_MIN_TOKENS": "30",
        "SIM_MAX_TOKENS": "150",
        "SIM_TOKENS_PER_SECOND": "60",
        "CHAT_RATE_PER_MINUTE": "1000",
        "USER_CHATS_PER_MINUTE": "1000",
    }


@dataclass
class ChaosConfig:
    clients: int = 100
    duration: float = 180.0
    seed: int = 7
    recovery_timeout: float = 10.0
    """The cluster's STREAM_RECOVERY_TIMEOUT (the silence limit is this + the margin)."""
    silence_margin: float = 5.0
    kinds: tuple[str, ...] = FAULT_KINDS
    interval: tuple[float, float] = (2.0, 6.0)
    """Seconds between two faults, drawn uniformly from the seeded RNG."""
    broker_window: float = 0.7
    """The broker is killed only in this first part of the run, so that the chats of
    the rest must all have their events on the topic."""
    heal_timeout: float = 60.0
    """A hurt node must be healthy again within this."""
    first_octet: int = 10
    """Client n connects from `source_ip(n, first_octet)`."""
    topic: str = "chat.events"
    log: Callable[[str], None] = print

    @property
    def answer_timeout(self) -> float:
        """The longest any one answer may take before its client gives up on it."""
        return 3 * self.recovery_timeout + 60.0


class Restart(Exception):
    """The chat could not be placed in this session (busy, refused): use a new one."""


class ChaosClient(ChatClient):
    """A careful client that also times itself: the longest wait for the next frame of
    the answer it follows, and from each resume to the next frame."""

    def __init__(self, url: str, local_ip: str, errors: list[str]) -> None:
        super().__init__(url, local_ip=local_ip)
        self.errors = errors
        self.record: AnswerRecord | None = None
        self.answer: Answer | None = None
        self.last_frame = 0.0
        self.resume_sent: float | None = None

    # --- timing and the frames a careful client acts on ------------------------------

    async def recv(self, timeout: float = 20.0) -> Frame:
        while True:
            frame = await super().recv(timeout)
            rec, answer = self.record, self.answer
            if rec is None or answer is None or frame.get("message_id") != rec.message_id:
                return frame
            if frame["type"] not in ("chunk", "done", "error"):
                return frame
            now = time.monotonic()
            rec.longest_silence = max(rec.longest_silence, now - self.last_frame)
            self.last_frame = now
            if self.resume_sent is not None:
                rec.resume_latencies.append(now - self.resume_sent)
                self.resume_sent = None
            if frame["type"] == "error" and frame.get("code") == "internal":
                # "replay failed; resume again" (docs/protocol.md, section 4).
                await self._resume(answer)
                continue
            if frame["type"] == "error" and frame.get("code") == "not_found":
                # The record is gone (Redis lost it): no done will come.
                rec.not_found = True
                answer.done = {"type": "done", "finish_reason": "not_found", "synthetic": True}
                return {"type": "ignored", "message_id": rec.message_id}
            return frame

    def watch(self, record: AnswerRecord | None, answer: Answer | None) -> None:
        self.record, self.answer = record, answer
        self.last_frame = time.monotonic()
        self.resume_sent = None

    # --- connections -----------------------------------------------------------------

    async def connect(self) -> Frame:
        kept, self.backlog = self.backlog, []  # frames of the old socket stay queued
        try:
            return await super().connect()
        finally:
            self.backlog = kept + self.backlog

    # Also an assertion of `connect`: a 1013 close at connect has no welcome.
    RETRYABLE_CONNECT = (*ChatClient.RETRYABLE_CONNECT, AssertionError)
    LOST_DURING_CHAT = (ConnectionClosed, TimeoutError)

    async def _resume(self, answer: Answer) -> None:
        await self.send(
            {"type": "resume", "message_id": answer.message_id, "after_seq": answer.last_seq}
        )
        self.resume_sent = time.monotonic()

    async def _reconnect_and_resume(self, answer: Answer) -> None:
        # follow_resilient's step, made robust: a close during the resume retries it.
        while True:
            await self.reconnect()
            try:
                await self._resume(answer)
                break
            except ConnectionClosed:
                continue
        answer.reconnects += 1

    # --- requests --------------------------------------------------------------------

    async def ask(self, text: str, client_msg_id: str) -> Answer:
        """`ChatClient.ask`, given up (Restart) after 120 s without an ack."""
        try:
            async with asyncio.timeout(120):
                return await super().ask(text, client_msg_id)
        except TimeoutError as exc:
            raise Restart("no ack within 120 s") from exc

    def is_reply(self, frame: Frame, client_msg_id: str) -> bool:
        # "storage unavailable" comes without the client_msg_id.
        return super().is_reply(frame, client_msg_id) or (
            frame["type"] == "error" and frame.get("code") == "internal"
        )

    async def refused(self, frame: Frame) -> bool:
        code = frame.get("code")
        if code == "rate_limited":
            return await super().refused(frame)
        if code == "internal":  # storage unavailable: try again shortly
            await asyncio.sleep(0.5)
            return True
        if code == "busy":
            raise Restart(f"busy: {frame}")
        self.errors.append(f"{self.local_ip}: chat refused: {frame}")
        raise Restart(str(frame))

    async def history_text(self, message_id: str) -> tuple[bool, str | None]:
        """(read, text of message_id in history)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                await self.send({"type": "history", "limit": 20})
                frame = await self.recv_until(
                    lambda f: (
                        f["type"] == "history" or (f["type"] == "error" and "message_id" not in f)
                    )
                )
            except (ConnectionClosed, TimeoutError):
                await self.reconnect()
                continue
            if frame["type"] == "history":
                texts = {m["message_id"]: m["text"] for m in frame["messages"]}
                return True, texts.get(message_id)
            await asyncio.sleep(0.5)
        return False, None


async def chatter(
    cfg: ChaosConfig,
    n: int,
    url_for: Callable[[str, str], str],
    records: list[AnswerRecord],
    errors: list[str],
    stop: asyncio.Event,
) -> None:
    """Chat until `stop`, each answer followed to its end through every close."""
    rng = random.Random(cfg.seed * 100_003 + n)
    user = f"chaos{n}"
    ip = source_ip(n, cfg.first_octet)
    client: ChaosClient | None = None
    asked = 0
    try:
        while not stop.is_set():
            session = f"chaos-{n}-{uuid.uuid4().hex[:10]}"
            client = ChaosClient(url_for(session, user), ip, errors)
            await client.reconnect()
            while not stop.is_set():
                asked += 1
                sent_at = time.monotonic()
                try:
                    answer = await client.ask(f"Question {asked} from {user}", f"q{asked}")
                except Restart:
                    break
                rec = AnswerRecord(n, session, answer.message_id, time.monotonic(), sent_at)
                records.append(rec)
                client.watch(rec, answer)
                try:
                    await client.follow_resilient(answer, timeout=cfg.answer_timeout)
                except TimeoutError:
                    rec.failure = f"no done within {cfg.answer_timeout:.0f}s"
                finally:
                    _finish(rec, answer, client)
                    client.watch(None, None)
                if rec.finish_reason == "stop":
                    rec.history_checked, rec.history_text = await client.history_text(
                        rec.message_id
                    )
                elif rec.done is not None or rec.not_found:
                    break  # an answer lost to a fault: go on in a new session
                else:
                    break
                await asyncio.sleep(rng.uniform(0.0, 0.5))
            await client.close()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported by the checker, never hidden
        errors.append(f"client {n} ({ip}): {exc!r}")
    finally:
        if client is not None and client.ws is not None:
            await client.ws.close()


def _finish(rec: AnswerRecord, answer: Answer, client: ChaosClient) -> None:
    rec.seqs = list(answer.seqs)
    rec.text = answer.text
    rec.done = None if rec.not_found else answer.done
    rec.error_codes = [str(e.get("code")) for e in answer.errors]
    rec.reconnects = answer.reconnects
    if answer.done is None:
        rec.longest_silence = max(rec.longest_silence, time.monotonic() - client.last_frame)


class Injector:
    """Faults at random intervals from a seeded RNG, kinds dealt from shuffled decks (so
    each kind comes up about equally often). A node hurt is not hurt again before it is
    healthy again."""

    def __init__(self, cluster: Cluster, cfg: ChaosConfig) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.faults: list[FaultRecord] = []
        self.healing: dict[str, asyncio.Task[None]] = {}
        self.deck: list[str] = []
        self.broker_until = 0.0
        self.broken: set[str] = set()
        """Nodes that did not heal: never hurt again (the checker reports them)."""

    def _next_kind(self) -> str:
        if not self.deck:
            self.deck = list(self.cfg.kinds)
            self.rng.shuffle(self.deck)
        return self.deck.pop()

    async def redis_target(self) -> str:
        """The Redis to kill: the single `redis`, or with REDIS_HA=sentinel the current
        primary as the Sentinels name it (the hook for docs/redis-ha.md)."""
        spec = self.cluster.spec
        if not getattr(spec, "ha", False):
            return "redis"
        from tests.sentinel_helpers import primary_port

        for port in spec.sentinel_ports:
            primary = await primary_port(port)
            if primary is not None:
                return "redis-2" if primary == spec.redis_replica_port else "redis"
        return "redis"

    def _free(self, names: list[str]) -> list[str]:
        return [n for n in names if n not in self.healing and n not in self.broken]

    async def run(self, stop: asyncio.Event) -> None:
        self.broker_until = time.monotonic() + self.cfg.duration * self.cfg.broker_window
        while not stop.is_set():
            pause = self.rng.uniform(*self.cfg.interval)
            try:
                await asyncio.wait_for(stop.wait(), pause)
                return
            except TimeoutError:
                pass
            kind = self._next_kind()
            if kind == "kafka-kill9" and time.monotonic() > self.broker_until:
                continue  # the broker lives through the end: those events must all arrive
            spec = self.cluster.spec
            if kind.startswith("gateway"):
                names = self._free(spec.gateway_names)
            elif kind.startswith("worker"):
                names = self._free(spec.worker_names)
            elif kind == "redis-kill9":
                names = self._free([await self.redis_target()])
            elif kind == "kafka-kill9":
                names = self._free(["kafka"])
            else:
                names = self._free(["nginx"])
            if not names:
                self.deck.insert(0, kind)  # its turn comes again later
                continue
            await self.inject(kind, sorted(names)[self.rng.randrange(len(names))])

    async def inject(self, kind: str, name: str) -> None:
        pids = await asyncio.to_thread(self.cluster.pids)
        pid = pids.get(name, 0)
        fault = FaultRecord(kind, name, time.monotonic())
        if not pid:
            fault.error = "not running when its turn came"
            self.faults.append(fault)
            return
        self.faults.append(fault)
        self.cfg.log(f"  fault {len(self.faults):>3}: {kind:<15} {name}")
        if kind == "nginx-reload":
            task = asyncio.create_task(self._reload(fault, pid))
        else:
            if kind.endswith("sigterm"):
                os.kill(pid, signal.SIGTERM)
            else:
                os.killpg(pid, signal.SIGKILL)
            task = asyncio.create_task(self._heal(fault, pid))
        self.healing[name] = task
        task.add_done_callback(partial(self._healed, name))

    def _healed(self, name: str, _task: asyncio.Task[None]) -> None:
        self.healing.pop(name, None)

    async def _reload(self, fault: FaultRecord, master: int) -> None:
        try:
            await asyncio.to_thread(reload_nginx, master, self.cfg.heal_timeout)
            fault.recovered_in = time.monotonic() - fault.at
        except Exception as exc:  # noqa: BLE001 - reported by the checker
            fault.error = f"reload failed: {exc!r}"

    async def _heal(self, fault: FaultRecord, old_pid: int) -> None:
        """Until supervisor runs a new process for the node and its probe passes."""
        deadline = fault.at + self.cfg.heal_timeout
        while time.monotonic() < deadline:
            pid = (await asyncio.to_thread(self.cluster.pids)).get(fault.target, 0)
            if pid and pid != old_pid and await asyncio.to_thread(self._ok, fault.target):
                fault.recovered_in = time.monotonic() - fault.at
                return
            await asyncio.sleep(0.2)
        fault.error = f"not healthy within {self.cfg.heal_timeout:.0f}s (pid was {old_pid})"
        self.broken.add(fault.target)
        self.cfg.log(f"  {fault.target} did not heal after {fault.kind}")

    def _ok(self, name: str) -> bool:
        return self.cluster.probe(name).ok

    async def settle(self) -> None:
        """Wait for every hurt node to heal (each bounded by heal_timeout)."""
        while self.healing:
            await asyncio.gather(*list(self.healing.values()), return_exceptions=True)


async def wait_outbox_empty(redis_url: str, timeout: float) -> bool:
    redis = Redis.from_url(redis_url)
    key = Keys().events_outbox()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if await redis.xlen(key) == 0:
                    return True
            except (RedisError, OSError):  # Redis restarting: ask again
                pass
            await asyncio.sleep(0.25)
        return False
    finally:
        await redis.aclose()


async def consume_topic(
    bootstrap: str, topic: str, wanted: set[str], timeout: float
) -> list[dict[str, Any]]:
    """Every record of the topic from the start: until every wanted message id has its
    message.accepted and nothing new came for a second, or the deadline."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    got: list[dict[str, Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        quiet = 0
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=250)
            fresh = [json.loads(r.value) for recs in batch.values() for r in recs]
            got += fresh
            seen |= {str(e.get("message_id")) for e in fresh if e.get("type") == "message.accepted"}
            quiet = 0 if fresh else quiet + 1
            if quiet >= 4 and wanted <= seen:
                break
    finally:
        await consumer.stop()
    return got


async def run_chaos(cluster: Cluster, cfg: ChaosConfig) -> ChaosRecord:
    """Run the workload and the faults for cfg.duration, then let everything settle and
    read the topic. The caller owns (and stops) the cluster."""
    spec = cluster.spec

    def url_for(session: str, user: str) -> str:
        return (
            f"ws://127.0.0.1:{spec.public_port}/ws/chat?session_id={session}"
            f"&user_id={user}&token=dev-token"
        )

    records: list[AnswerRecord] = []
    errors: list[str] = []
    stop_clients = asyncio.Event()
    stop_faults = asyncio.Event()
    injector = Injector(cluster, cfg)
    clients = [
        asyncio.create_task(chatter(cfg, n, url_for, records, errors, stop_clients))
        for n in range(cfg.clients)
    ]
    faults: asyncio.Task[None] | None = None
    try:
        # Faults start once most clients have an answer going (bounded wait).
        deadline = time.monotonic() + 30
        while len(records) < cfg.clients * 0.8 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        cfg.log(f"chaos: {cfg.clients} clients chatting; faults for {cfg.duration:.0f}s")
        faults = asyncio.create_task(injector.run(stop_faults))
        await asyncio.sleep(cfg.duration)
        stop_faults.set()
        await faults
        await injector.settle()
        cfg.log("chaos: faults over, every node healthy; clients finish their answers")
        stop_clients.set()
        mark = time.monotonic()
        _, pending = await asyncio.wait(clients, timeout=cfg.answer_timeout + 60)
        for task in pending:
            task.cancel()
            errors.append("a client was still busy at the end (cancelled)")
        cfg.log(f"chaos: clients done in {time.monotonic() - mark:.1f}s")
    finally:
        stop_faults.set()
        stop_clients.set()
        for task in clients:
            task.cancel()
        if faults is not None:
            faults.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        if faults is not None:
            await asyncio.gather(faults, return_exceptions=True)
        await injector.settle()

    consumed = True
    events: list[dict[str, Any]] = []
    try:
        mark = time.monotonic()
        if not await wait_outbox_empty(spec.redis_url, 60):
            errors.append("the event outbox did not empty within 60 s")
        cfg.log(f"chaos: outbox empty in {time.monotonic() - mark:.1f}s")
        mark = time.monotonic()
        # Only the events that must be there: waiting for one the broker lost (it
        # is memory-only) would wait out the whole deadline.
        wanted = required_events(records, injector.faults)
        events = await consume_topic(spec.kafka_bootstrap, cfg.topic, wanted, 30)
        cfg.log(f"chaos: topic read in {time.monotonic() - mark:.1f}s")
    except Exception as exc:  # noqa: BLE001 - reported by the checker
        consumed = False
        errors.append(f"consuming {cfg.topic}: {exc!r}")
    return ChaosRecord(
        answers=records,
        faults=injector.faults,
        events=events,
        recovery_timeout=cfg.recovery_timeout,
        silence_margin=cfg.silence_margin,
        client_errors=errors,
        events_consumed=consumed,
    )
