"""Refuse unsafe settings before a service listens (issue 7: safe by default).

`startup_problems` is pure: settings and the address the service binds in, a list
of reasons not to start out (empty when it is safe). `services/common/serve.py`
calls it at the edge, before uvicorn starts; `deploy/` calls `secret_problems` on
the secret it is about to hand out.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any
from urllib.parse import urlsplit

from services.common.settings import Settings
from services.durable import subscription_logic

MIN_SECRET_CHARS = 32
"""HS256 wants a key at least as long as its 256-bit output."""
PLACEHOLDER_MARK = "change-me"
"""Any secret containing this (case-insensitive) is a placeholder copied from an example."""


def is_loopback(host: str) -> bool:
    """True when a server bound to `host` is reachable from this machine only.

    `localhost` counts; an unspecified address (0.0.0.0, ::, "") or a host name does not.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def secret_problems(secret: str, name: str = "JWT_SECRET") -> list[str]:
    """Why `secret` must not sign client tokens (empty list: it is fine)."""
    if not secret:
        return [
            f"{name} is not set: set it to a random value of at least {MIN_SECRET_CHARS} "
            "characters (e.g. `openssl rand -hex 32`); `make deploy` generates one"
        ]
    if PLACEHOLDER_MARK in secret.lower():
        return [f"{name} is a placeholder ({PLACEHOLDER_MARK}...): set a random secret"]
    if len(secret) < MIN_SECRET_CHARS:
        return [
            f"{name} is too short ({len(secret)} characters; at least {MIN_SECRET_CHARS} "
            "required, e.g. `openssl rand -hex 32`)"
        ]
    return []


def startup_problems(settings: Settings, host: str) -> list[str]:
    """Every reason a service with `settings`, listening on `host`, must not start."""
    problems = secret_problems(settings.jwt_secret)
    if settings.auth_dev_mode and not is_loopback(host):
        problems.append(
            f"AUTH_DEV_MODE=true accepts `dev-token` as any user; it is allowed only on a "
            f"loopback bind, not --host {host or '(all interfaces)'}"
        )
    password = urlsplit(settings.redis_url).password or ""
    if PLACEHOLDER_MARK in password.lower():
        problems.append("REDIS_URL has a placeholder password (change-me...): set a real one")
    if settings.redis_mode == "cluster" and settings.redis_sentinels:
        problems.append(
            "REDIS_MODE=cluster with REDIS_SENTINELS: a Redis Cluster fails over by itself; "
            "set one of them"
        )
    if "{" in settings.redis_key_prefix or "}" in settings.redis_key_prefix:
        problems.append("REDIS_KEY_PREFIX must not contain { or } (they make hash tags)")
    problems += subscription_logic.startup_problems(settings, host, loopback=is_loopback(host))
    return problems


# --- no token in any log line ---------------------------------------------------------

_TOKEN_IN_QUERY = re.compile(r"(?i)([?&;]token=)[^&;#\s\"']+")
REDACTED = "[redacted]"


def redact_tokens(text: str) -> str:
    """`/ws/chat?session_id=s&token=eyJ...` -> `/ws/chat?session_id=s&token=[redacted]`."""
    if "token=" not in text.lower():
        return text
    return _TOKEN_IN_QUERY.sub(lambda m: m.group(1) + REDACTED, text)


def _redact_arg(value: object) -> object:
    return redact_tokens(value) if isinstance(value, str) else value


def install_log_redaction() -> None:
    """Redact query-string tokens from every log record this process creates.

    uvicorn logs each WebSocket handshake with its full query string
    (`"WebSocket /ws/chat?...&token=..." [accepted]`) on `uvicorn.error`, which the
    services' logging keeps at INFO; a record factory reaches those records and any
    other, whatever handlers the app installs later. Idempotent.
    """
    current = logging.getLogRecordFactory()
    if getattr(current, "redacts_tokens", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        return record

    factory.redacts_tokens = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
