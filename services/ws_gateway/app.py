"""The gateway's app factory: the lifespan builds the node and yields it as state.

Routes: `/ws/chat` (endpoint.py, served beside FastAPI's stack, see `ChatFastPath`),
Durable Streams at `/streams/` (services/durable, beside FastAPI's stack too),
the REST surface under `/api/` (rest.py), the ops routes, and `/status/deps` (deps.py)
for the status page. The node's long-lived loops (relay reader, stall watcher,
notifier, state audit, admission's loop-lag sampler, and the event drainer unless
KAFKA_ENABLED=false) run under a `TaskSupervisor`, so one that dies is restarted and
`/ready` says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.common.errors import StorageError
from services.common.event_outbox import EventOutbox
from services.common.kafka import EventDrainer
from services.common.keys import Keys
from services.common.logging import configure_logging
from services.common.message_store import MessageStore
from services.common.metrics import node_registry
from services.common.ops import NodeHealth, ops_router
from services.common.overload import Admission, LoopLag
from services.common.redis_client import redis_from_settings
from services.common.settings import Settings
from services.common.tasks import TaskSupervisor, on_drain, watch_shutdown
from services.durable.server import DurableStreams
from services.durable.store import DurableStore
from services.ws_gateway.audit import StateAudit
from services.ws_gateway.context import NodeContext
from services.ws_gateway.deps import DepsProbe, deps_router
from services.ws_gateway.driver import Driver, WorkerClient
from services.ws_gateway.endpoint import ChatFastPath
from services.ws_gateway.hub import Hub
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.notifier import Notifier
from services.ws_gateway.relay import Relay
from services.ws_gateway.rest import rest_router
from services.ws_gateway.sessions import SessionStore


def create_app(settings: Settings | None = None) -> ChatFastPath:
    settings = settings or Settings()
    configure_logging(settings.node_id, "ws_gateway", settings.log_level)
    registry = node_registry()
    metrics = GatewayMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        async with AsyncExitStack() as stack:
            redis = redis_from_settings(settings)
            stack.push_async_callback(redis.aclose)
            blocking = redis_from_settings(settings, blocking=True)
            stack.push_async_callback(blocking.aclose)
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    timeout=httpx.Timeout(connect=2.0, read=10.0, write=5.0, pool=5.0),
                    # Each answer holds a call for its whole life; keeping as many idle
                    # connections spares the next burst of answers their connects.
                    limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000),
                )
            )
            keys = Keys.from_settings(settings)
            store = MessageStore.from_settings(redis, settings)
            sessions = SessionStore.from_settings(redis, settings)
            hub = Hub()
            admission = Admission(
                settings.gateway_max_answers,
                settings.overload_lag_ms / 1000,
                settings.overload_retry_after,
                max_starting=settings.gateway_max_starting,
            )
            lag = LoopLag(on_sample=lambda value: admission.observe(value, driver.driving))
            metrics.loop_lag.set_function(lambda: lag.value)
            metrics.answer_limit.set_function(lambda: admission.limit)
            metrics.answers_streaming.set_function(lambda: hub.streams)
            driver = Driver(
                store,
                WorkerClient(http, settings.worker_url, settings.stream_recovery_timeout),
                node_id=settings.node_id,
                recovery_timeout=settings.stream_recovery_timeout,
                metrics=metrics,
                on_workers_busy=admission.workers_busy,
            )
            stack.push_async_callback(driver.close)
            metrics.answers_driving.set_function(lambda: driver.driving)
            audit = StateAudit(hub, store, grace_s=audit_grace(settings))
            relay = Relay(
                redis,
                blocking,
                keys,
                settings.node_id,
                hub,
                metrics,
                on_reconnect=audit.storage_reconnected,
                batch_s=settings.relay_batch_ms / 1000,
            )
            notifier = Notifier(
                redis,
                keys,
                on_message_started=hub.message_started,
                on_session_changed=sessions.invalidate,
            )
            # Durable streams' live reads are woken by a relay of their own (its own hub
            # and wake streams): no stall watch or audit applies to them.
            ds_relay = Relay(
                redis, blocking, keys, f"{settings.node_id}.ds", Hub(), metrics, batch_s=0.0
            )
            durable = DurableStreams(
                settings,
                DurableStore.from_settings(redis, settings),
                store,
                relay,
                ds_relay,
                metrics,
            )
            stack.callback(on_drain(durable.drain))
            durable.subscriptions.bind(redis)
            stack.push_async_callback(durable.subscriptions.close)
            loops = TaskSupervisor()
            stack.push_async_callback(loops.close)
            loops.start("relay-reader", relay.run)
            loops.start("durable-relay-reader", ds_relay.run)
            # Durable stream subscriptions: leases that end, webhook deliveries and
            # retries, wake events, sweeps (any node takes what is due).
            loops.start("durable-subscriptions", durable.subscriptions.run)
            loops.start(
                "stall-watcher", partial(driver.watch_stalls, hub, settings.stall_check_interval)
            )
            loops.start("notifier", notifier.run)
            loops.start("state-audit", audit.run)
            loops.start("loop-lag", lag.run)
            deps = DepsProbe(redis, settings.kafka_bootstrap_servers, None, [])
            if settings.kafka_enabled:
                outboxes = EventOutbox.every_bucket(redis, keys)
                drainer = EventDrainer(outboxes, settings, registry)
                loops.start("event-drainer", drainer.run)
                deps = DepsProbe(redis, settings.kafka_bootstrap_servers, drainer, outboxes)
            ctx = NodeContext(
                settings, store, sessions, hub, relay, driver, notifier, metrics, admission, lag
            )
            stack.push_async_callback(watch_shutdown, settings.shutdown_timeout / 2)
            yield {
                "ctx": ctx,
                "health": NodeHealth(redis, [loops.problem]),
                "deps": deps,
                "durable": durable,
            }

    app = FastAPI(lifespan=lifespan, title="ws_gateway")
    app.add_exception_handler(StorageError, storage_unavailable)
    app.include_router(rest_router())
    app.include_router(deps_router())
    app.include_router(
        ops_router(service="ws_gateway", node_id=settings.node_id, registry=registry)
    )
    return ChatFastPath(app)


async def storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """REST calls that hit a Redis failure answer 503, not a bare 500."""
    return JSONResponse({"detail": "storage unavailable"}, status_code=503)


def audit_grace(settings: Settings) -> float:
    """How long a followed answer may stay behind what clients were shown after Redis
    came back, for a worker to repair it from memory: a few leases, well inside the
    recovery timeout that bounds every silence."""
    return min(3 * settings.lease_ttl_ms / 1000 + 1.0, settings.stream_recovery_timeout / 2)
