"""The rules of Durable Streams subscriptions (PROTOCOL.md sections 6, 7, 12.8-12.10) as
pure functions: request validation and the configuration's hash, glob patterns, webhook
URL safety (SSRF), ack offsets, wake tokens, the Ed25519 webhook signature and its JWK
Set, retry backoff. No I/O: `subscriptions.py` uses them,
`tests/unit/test_durable_subscriptions.py` pins them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.common.settings import Settings
from services.durable import protocol as p

WEBHOOK = "webhook"
PULL_WAKE = "pull-wake"
TYPES = (WEBHOOK, PULL_WAKE)
DEFAULT_LEASE_MS = 30_000
MIN_LEASE_MS = 1_000
MAX_LEASE_MS = 600_000
MAX_PATTERN = 1024
MAX_DESCRIPTION = 1024
MAX_URL = 2048
MAX_SUB_ID = 256
MAX_WORKER = 256
RETRY_BASE_MS = 1_000
RETRY_MAX_MS = 60_000
RETRY_JITTER = 0.2
TOKEN_TTL_S = 24 * 3600
"""A wake token's own expiry: a bound only, the generation fences it much sooner."""
RESERVED = "__ds"
_ENCODE_URI_SAFE = "-_.!~*'()"

# --- errors -------------------------------------------------------------------------------


class SubscriptionError(Exception):
    """Answered as `{"error": {"code", "message", ...}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def invalid(message: str) -> SubscriptionError:
    return SubscriptionError(400, "INVALID_REQUEST", message)


# --- paths and patterns -------------------------------------------------------------------


def normalize_path(raw: str, what: str = "stream path") -> str:
    """A stream-root-relative path: slashes around it dropped, URL-safe segments, not
    under the reserved `__ds`."""
    path = raw.strip("/")
    try:
        p.check_path(path)
    except p.BadRequest as exc:
        raise invalid(f"{what} {raw!r}: segments of URL-safe characters, no . or ..") from exc
    if path.split("/", 1)[0] == RESERVED:
        raise invalid(f"{what} {raw!r}: {RESERVED} is reserved")
    return path


def normalize_pattern(raw: str) -> str:
    """A glob over root-relative paths: `*` is one segment, `**` zero or more."""
    pattern = raw.strip("/")
    if not pattern or len(pattern) > MAX_PATTERN:
        raise invalid(f"pattern: 1-{MAX_PATTERN} characters")
    for segment in pattern.split("/"):
        if segment in ("*", "**"):
            continue
        try:
            p.check_path(segment)
        except p.BadRequest as exc:
            raise invalid(f"pattern {raw!r}: segments are *, ** or URL-safe names") from exc
    return pattern


def glob_match(pattern: str, path: str) -> bool:
    """Whether root-relative `path` matches `pattern` (`*` one segment, `**` any number,
    `%2A` a literal `*`)."""
    return _match(pattern.strip("/").split("/"), 0, path.strip("/").split("/"), 0)


def _match(pat: list[str], pi: int, parts: list[str], si: int) -> bool:
    while pi < len(pat):
        seg = pat[pi]
        if seg == "**":
            # Consecutive ** are one; then try every split point.
            while pi < len(pat) and pat[pi] == "**":
                pi += 1
            if pi == len(pat):
                return True
            return any(_match(pat, pi, parts, i) for i in range(si, len(parts) + 1))
        if si >= len(parts):
            return False
        if seg != "*" and re.sub("%2[Aa]", "*", seg) != parts[si]:
            return False
        pi += 1
        si += 1
    return si == len(parts)


def relative_path(path: str, root: str) -> str | None:
    """`path` (below /streams/) relative to a subscription's `root`, or None when it is
    not under it (or under the reserved `__ds`)."""
    if root:
        if not path.startswith(root + "/"):
            return None
        path = path[len(root) + 1 :]
    if not path or path.split("/", 1)[0] == RESERVED:
        return None
    return path


def full_path(root: str, relative: str) -> str:
    return f"{root}/{relative}" if root else relative


# --- the configuration --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """A subscription's configuration, normalized: what its hash covers."""

    type: str
    pattern: str | None
    streams: tuple[str, ...]
    """Explicit links: sorted, without duplicates."""
    webhook_url: str | None
    wake_stream: str | None
    lease_ttl_ms: int
    description: str | None

    def canonical(self) -> dict[str, object]:
        return {
            "type": self.type,
            "pattern": self.pattern,
            "streams": list(self.streams),
            "webhook": {"url": self.webhook_url} if self.webhook_url is not None else None,
            "wake_stream": self.wake_stream,
            "lease_ttl_ms": self.lease_ttl_ms,
            "description": self.description,
        }

    def hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def parse_config(body: object, *, max_streams: int) -> Config:
    """A PUT body as a configuration; raises SubscriptionError (400 INVALID_REQUEST)."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    kind = body.get("type")
    if kind not in TYPES:
        raise invalid('type: "webhook" or "pull-wake"')
    pattern = body.get("pattern")
    if pattern is not None and not isinstance(pattern, str):
        raise invalid("pattern: a string")
    norm_pattern = normalize_pattern(pattern) if pattern else None
    streams = body.get("streams")
    if streams is None:
        streams = []
    if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
        raise invalid("streams: an array of stream paths")
    norm_streams = tuple(sorted({normalize_path(s) for s in streams}))
    if len(norm_streams) > max_streams:
        raise invalid(f"streams: at most {max_streams} (DS_MAX_SUBSCRIPTION_STREAMS)")
    if norm_pattern is None and not norm_streams:
        raise invalid("give a pattern, streams, or both")
    lease = body.get("lease_ttl_ms", DEFAULT_LEASE_MS)
    if isinstance(lease, float) and lease.is_integer():
        lease = int(lease)
    if (
        isinstance(lease, bool)
        or not isinstance(lease, int)
        or not MIN_LEASE_MS <= lease <= MAX_LEASE_MS
    ):
        raise invalid(f"lease_ttl_ms: an integer from {MIN_LEASE_MS} to {MAX_LEASE_MS}")
    description = body.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        raise invalid(f"description: a string of at most {MAX_DESCRIPTION} characters")
    webhook_url = wake_stream = None
    if kind == WEBHOOK:
        webhook = body.get("webhook")
        url = webhook.get("url") if isinstance(webhook, dict) else None
        if not isinstance(url, str) or not url:
            raise invalid("webhook subscriptions need webhook.url")
        webhook_url = url
    else:
        wake = body.get("wake_stream")
        if not isinstance(wake, str) or not wake:
            raise invalid("pull-wake subscriptions need wake_stream")
        wake_stream = normalize_path(wake, "wake_stream")
    return Config(
        kind,
        norm_pattern,
        norm_streams,
        webhook_url,
        wake_stream,
        lease,
        description,
    )


def check_sub_id(sub_id: str) -> str:
    if not sub_id or len(sub_id) > MAX_SUB_ID:
        raise SubscriptionError(404, "SUBSCRIPTION_NOT_FOUND", "no such subscription")
    return sub_id


def parse_stream_list(body: object, *, max_streams: int) -> list[str]:
    """`{"streams": [...]}` of POST .../streams: normalized, without duplicates."""
    streams = body.get("streams") if isinstance(body, dict) else None
    if (
        not isinstance(streams, list)
        or not streams
        or not all(isinstance(s, str) and s for s in streams)
    ):
        raise invalid("streams: a non-empty array of stream paths")
    out = sorted({normalize_path(s) for s in streams})
    if len(out) > max_streams:
        raise invalid(f"streams: at most {max_streams} (DS_MAX_SUBSCRIPTION_STREAMS)")
    return out


def parse_worker(body: object) -> str:
    worker = body.get("worker") if isinstance(body, dict) else None
    if not isinstance(worker, str) or not worker or len(worker) > MAX_WORKER:
        raise invalid(f"worker: a non-empty string of at most {MAX_WORKER} characters")
    return worker


@dataclass(frozen=True, slots=True)
class WakeRequest:
    """The body of a callback, ack or release."""

    wake_id: str
    generation: int
    acks: tuple[tuple[str, int], ...]
    """(root-relative path, acked position)."""
    done: bool


def parse_wake_request(body: object) -> WakeRequest:
    """Shape errors are 400; an ack offset that is not one of ours (or -1) is 409
    INVALID_OFFSET, as the protocol's reference server answers."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    wake_id = body.get("wake_id")
    generation = body.get("generation")
    # A missing or malformed wake id or generation cannot match the current wake.
    wake = wake_id if isinstance(wake_id, str) else ""
    gen = generation if isinstance(generation, int) and not isinstance(generation, bool) else -1
    acks_raw = body.get("acks")
    if acks_raw is None:
        acks_raw = []
    if not isinstance(acks_raw, list):
        raise invalid("acks: an array of {stream, offset}")
    acks: list[tuple[str, int]] = []
    for ack in acks_raw:
        if not isinstance(ack, dict):
            raise invalid("acks: an array of {stream, offset}")
        stream = ack.get("stream", ack.get("path"))
        offset = ack.get("offset")
        if not isinstance(stream, str) or not stream or not isinstance(offset, str):
            raise invalid("acks: each needs stream and offset")
        acks.append((stream.strip("/"), parse_ack_offset(offset)))
    return WakeRequest(wake, gen, tuple(acks), body.get("done") is True)


_OFFSET = re.compile(r"^[0-9]{16}_([0-9]{16})$")


def parse_ack_offset(raw: str) -> int:
    """An acked offset: one this server gave (not `-1` or `now`), as a position."""
    m = _OFFSET.fullmatch(raw)
    if m is None:
        raise SubscriptionError(409, "INVALID_OFFSET", f"ack offset {raw[:40]!r}: not an offset")
    return int(m[1])


# --- webhook URLs (SSRF) ------------------------------------------------------------------


def is_dev_local_host(host: str) -> bool:
    """The development exception: `localhost` and 127.0.0.x."""
    return host == "localhost" or re.fullmatch(r"127\.0\.0\.\d{1,3}", host) is not None


def _rejected(message: str) -> SubscriptionError:
    return SubscriptionError(400, "WEBHOOK_URL_REJECTED", message)


def allow_localhost(settings: Settings) -> bool:
    return settings.ds_webhook_allow_localhost or settings.auth_dev_mode


def check_webhook_url(raw: str, *, allow_localhost: bool) -> None:
    """Refuse a webhook URL that could reach this machine or a private network (12.8):
    https only; http (or https) to localhost / 127.0.0.x only with the development
    exception; no literal address that is not global, in any notation; no credentials.
    Host names are checked again, resolved, at every call (`address_allowed`)."""
    if len(raw) > MAX_URL:
        raise _rejected(f"webhook.url: at most {MAX_URL} characters")
    try:
        parts = urlsplit(raw)
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise _rejected("webhook.url: not a valid URL") from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if scheme not in ("http", "https") or not host:
        raise _rejected("webhook.url: an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise _rejected("webhook.url: no credentials in the URL")
    if is_dev_local_host(host):
        if allow_localhost:
            return
        raise _rejected(
            "webhook.url: localhost is for development only (DS_WEBHOOK_ALLOW_LOCALHOST)"
        )
    if scheme != "https":
        raise _rejected("webhook.url: must use https (http only for localhost in development)")
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        raise _rejected("webhook.url: must not name a local host")
    literal = literal_address(host)
    if literal is not None and not address_allowed(literal, dev_local=False):
        raise _rejected("webhook.url: must not target a private, local or reserved address")


_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host written as one means, in any notation a resolver takes
    (`127.1`, `2130706433`, `0x7f.1` are all 127.0.0.1); None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, dev_local: bool) -> bool:
    """Whether a webhook may connect to `ip`: a global unicast address, or loopback when
    the URL named the development exception (and it is allowed)."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    if dev_local:
        return ip.is_loopback
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


# --- links in responses ---------------------------------------------------------------------


def request_base(headers: Mapping[str, str], public_url: str, prefix: str) -> str:
    """The URL of `/streams/` as the client reached it (or DS_PUBLIC_URL), ending in /."""
    if public_url:
        return public_url if public_url.endswith("/") else public_url + "/"
    scheme = headers.get("x-forwarded-proto", "http").split(",")[0].strip() or "http"
    host = headers.get("x-forwarded-host") or headers.get("host") or "localhost"
    return f"{scheme}://{host.split(',')[0].strip()}{prefix}"


def control_url(base: str, root: str, *parts: str) -> str:
    """`{base}{root}/__ds/...`, each part encoded as encodeURIComponent does."""
    tail = "/".join(quote(part, safe=_ENCODE_URI_SAFE) for part in parts)
    return f"{base}{full_path(root, RESERVED)}/{tail}"


def format_offset(position: int) -> str:
    return p.format_offset(position)


def stream_info(path: str, flags: str, acked: int, tail: int | None = None) -> dict[str, object]:
    info: dict[str, object] = {
        "path": path,
        "link_type": "explicit" if "e" in flags else "glob",
        "acked_offset": format_offset(acked),
    }
    if tail is not None:
        info["tail_offset"] = format_offset(tail)
        info["has_pending"] = tail > acked
    return info


# --- wake tokens (callback and claim) -------------------------------------------------------


CALLBACK = "cb"
CLAIM = "claim"


def derive_key(secret: str, purpose: str) -> bytes:
    """A key of its own for `purpose`, from the deployment's secret (HKDF-SHA256 with
    no salt: extract, then one block of expand)."""
    prk = hmac.new(b"\0" * 32, secret.encode(), hashlib.sha256).digest()
    return hmac.new(prk, purpose.encode() + b"\x01", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class WakeToken:
    kind: str
    user: str
    sub: str
    """The subscription's key (`Keys.ds_sub_id`)."""
    generation: int
    wake_id: str
    expires: int


def make_token(key: bytes, token: WakeToken) -> str:
    """`base64url(claims).base64url(HMAC-SHA256)`: scoped to one subscription, one wake
    and one generation; not a user's credential."""
    claims = {
        "k": token.kind,
        "u": token.user,
        "s": token.sub,
        "g": token.generation,
        "w": token.wake_id,
        "exp": token.expires,
    }
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    sig = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{sig}"


def read_token(key: bytes, raw: str, *, now_s: float) -> WakeToken:
    """The token's claims; raises SubscriptionError 401 TOKEN_INVALID / TOKEN_EXPIRED."""
    bad = SubscriptionError(401, "TOKEN_INVALID", "the token is not valid")
    payload, _, sig = raw.partition(".")
    if not payload or not sig or len(raw) > 4096:
        raise bad
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(sig, expected):
        raise bad
    try:
        claims = json.loads(_unb64(payload))
        token = WakeToken(
            str(claims["k"]),
            str(claims["u"]),
            str(claims["s"]),
            int(claims["g"]),
            str(claims["w"]),
            int(claims["exp"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise bad from exc
    if now_s > token.expires:
        raise SubscriptionError(401, "TOKEN_EXPIRED", "the token expired")
    return token


def bearer(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    return auth[7:].strip() or None


# --- webhook signatures ---------------------------------------------------------------------


class SigningKey:
    """The Ed25519 key webhooks are signed with; `kid` is `ds_` + its RFC 7638
    thumbprint (base64url SHA-256), stable for the key's life."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.x = _b64(public)
        thumbprint = json.dumps(
            {"crv": "Ed25519", "kty": "OKP", "x": self.x}, separators=(",", ":")
        ).encode()
        self.kid = "ds_" + _b64(hashlib.sha256(thumbprint).digest())

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningKey:
        """DS_WEBHOOK_SIGNING_KEY, else a key derived from JWT_SECRET; raises ValueError
        naming the setting when it is malformed."""
        raw = settings.ds_webhook_signing_key.strip()
        if not raw:
            return cls(derive_key(settings.jwt_secret, "durable-streams webhook signing key"))
        try:
            seed = _unb64(raw)
        except ValueError as exc:
            raise ValueError("DS_WEBHOOK_SIGNING_KEY: not base64url") from exc
        if len(seed) != 32:
            raise ValueError("DS_WEBHOOK_SIGNING_KEY: the seed must be 32 bytes (base64url)")
        return cls(seed)

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
            "x": self.x,
        }

    def signature(self, body: bytes, timestamp: int) -> str:
        """`Webhook-Signature`: Ed25519 over `<timestamp>.<raw body>`."""
        sig = self._key.sign(str(timestamp).encode() + b"." + body)
        return f"t={timestamp},kid={self.kid},ed25519={_b64(sig)}"


def signing_metadata(key: SigningKey, jwks_url: str) -> dict[str, str]:
    return {"alg": "ed25519", "kid": key.kid, "jwks_url": jwks_url}


# --- delivery -------------------------------------------------------------------------------


def retry_delay_ms(attempts: int, rng: random.Random | None = None) -> int:
    """The wait before retry number `attempts` (1, 2, ...): 1 s doubling to 60 s, +-20%."""
    base = min(RETRY_BASE_MS << max(0, min(attempts, 32) - 1), RETRY_MAX_MS)
    jitter = base * RETRY_JITTER * ((rng or random).random() * 2 - 1)
    return max(0, int(round(base + jitter)))


def webhook_done(body: bytes) -> bool:
    """Whether a webhook's answer finished the wake synchronously (`{"done": true}`)."""
    try:
        value: Any = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and value.get("done") is True


def wake_event(sub_id: str, stream: str, generation: int, ts_ms: int) -> bytes:
    return json.dumps(
        {
            "type": "wake",
            "subscription_id": sub_id,
            "stream": stream,
            "generation": generation,
            "ts": ts_ms,
        },
        separators=(",", ":"),
    ).encode()


def url_for_log(url: str) -> str:
    """A webhook URL as logs may show it: scheme and host only (its path or query may
    hold a secret of the receiver's)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or '?'}"
    except ValueError:
        return "(malformed)"


# --- start-up -------------------------------------------------------------------------------


def startup_problems(settings: Settings, host: str, *, loopback: bool) -> list[str]:
    """Why a gateway with these subscription settings, listening on `host` (`loopback`:
    reachable from this machine only), must not start; `services/common/safety.py`'s
    `startup_problems` adds them to its own."""
    problems = []
    if settings.ds_webhook_allow_localhost and not loopback:
        problems.append(
            "DS_WEBHOOK_ALLOW_LOCALHOST=true lets any user make this node call its own "
            f"machine; it is allowed only on a loopback bind, not --host {host or '(all)'}"
        )
    try:
        SigningKey.from_settings(settings)
    except ValueError as exc:
        problems.append(str(exc))
    if settings.ds_public_url:
        parts = urlsplit(settings.ds_public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append("DS_PUBLIC_URL: an absolute http(s) URL of /streams/")
        elif parts.scheme == "http" and not loopback:
            problems.append(
                "DS_PUBLIC_URL: https off loopback (webhook callback tokens travel to it)"
            )
    return problems
