"""The gateway's app factory: `/ws/chat`, a small REST surface and the ops routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.common.kafka import EventPublisher
from services.common.keys import Keys
from services.common.logging import configure_logging
from services.common.message_store import MessageStore
from services.common.ops import ops_router
from services.common.redis_client import redis_from_settings
from services.common.settings import Settings
from services.ws_gateway.context import Hub, NodeContext
from services.ws_gateway.driver import Driver
from services.ws_gateway.endpoint import chat_router
from services.ws_gateway.metrics import GatewayMetrics
from services.ws_gateway.notifier import Notifier
from services.ws_gateway.relay import Relay
from services.ws_gateway.rest import rest_router
from services.ws_gateway.sessions import SessionStore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.node_id, "ws_gateway", settings.log_level)
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    redis = redis_from_settings(settings)
    keys = Keys(settings.redis_key_prefix)
    hub = Hub()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(redis.aclose)
            blocking = redis_from_settings(settings, blocking=True)
            stack.push_async_callback(blocking.aclose)
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    timeout=httpx.Timeout(connect=2.0, read=10.0, write=5.0, pool=5.0),
                    limits=httpx.Limits(max_connections=2000, max_keepalive_connections=200),
                )
            )
            publisher = EventPublisher(settings, registry)
            await publisher.start()
            stack.push_async_callback(publisher.stop)
            store = MessageStore(
                redis,
                keys,
                stream_ttl=settings.stream_cache_ttl,
                meta_ttl=settings.message_meta_ttl,
                history_max=settings.history_max,
            )
            sessions = SessionStore(
                redis,
                keys,
                l2_ttl=settings.cache_l2_ttl,
                l1_max=settings.cache_l1_max_size,
                l1_ttl=settings.cache_l1_expire_write,
            )
            driver = Driver(http, redis, keys, store, settings, metrics)
            stack.push_async_callback(driver.close)
            relay = Relay(
                redis,
                blocking,
                keys,
                settings.node_id,
                metrics,
                on_stall=driver.adopt_if_orphaned,
                stall_check_interval=settings.stall_check_interval,
            )
            notifier = Notifier(
                redis,
                keys,
                on_message_started=hub.message_started,
                on_session_changed=sessions.invalidate,
            )
            ctx = NodeContext(
                settings=settings,
                store=store,
                sessions=sessions,
                relay=relay,
                driver=driver,
                notifier=notifier,
                publisher=publisher,
                metrics=metrics,
                hub=hub,
            )
            app.state.ctx = ctx
            tasks = [
                asyncio.create_task(relay.run(), name="relay-reader"),
                asyncio.create_task(relay.watch_stalls(), name="relay-stalls"),
                asyncio.create_task(notifier.run(), name="notifier"),
            ]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app = FastAPI(lifespan=lifespan, title="ws_gateway")
    app.include_router(chat_router())
    app.include_router(rest_router())
    app.include_router(
        ops_router(
            service="ws_gateway",
            node_id=settings.node_id,
            redis=lambda: redis,
            registry=registry,
            ready=lambda: None,
        )
    )
    return app
