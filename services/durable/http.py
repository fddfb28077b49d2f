"""What the durable streams' ASGI handlers (server.py, subscriptions.py) share: the path
prefix, a request's headers, response header lists, and reading a bounded body."""

from __future__ import annotations

from starlette.types import Receive, Scope

#: Where the gateways serve durable streams (endpoint.py routes it here).
PREFIX = "/streams/"

Headers = list[tuple[bytes, bytes]]


class BodyTooLarge(Exception):
    """The request body is (or says it is) larger than the limit."""


class BodyCut(Exception):
    """The client went away before sending the whole body."""


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (repeated ones joined by ", "), made
    once per request and kept in the scope."""
    cached = scope.get("_ds_headers")
    if cached is None:
        cached = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            cached[key] = f"{cached[key]}, {text}" if key in cached else text
        scope["_ds_headers"] = cached
    return cached


def header_list(values: dict[str, str]) -> Headers:
    """Response headers as ASGI wants them."""
    return [(k.lower().encode(), v.encode("latin-1", "replace")) for k, v in values.items()]


async def read_body(headers: dict[str, str], receive: Receive, limit: int) -> bytes:
    """The whole body, buffered or chunked; raises BodyTooLarge past `limit` bytes (at
    once when Content-Length says so) and BodyCut if the client leaves first."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyCut()
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise BodyTooLarge()
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)
