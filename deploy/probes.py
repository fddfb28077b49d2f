"""Health probes over plain sockets and urllib, so they run before any client library."""

from __future__ import annotations

import socket
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass

from deploy.spec import SENTINEL_MASTER, Process

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when something accepts connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(port: int, timeout: float = 1.0) -> ProbeResult:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return ProbeResult(False, str(exc))
    return ProbeResult(reply.startswith(b"+PONG"), reply.decode(errors="replace").strip())


def sentinel_master(port: int, timeout: float = 1.0) -> ProbeResult:
    """The Sentinel answers and names a primary for SENTINEL_MASTER (detail: its address)."""
    command = f"SENTINEL get-master-addr-by-name {SENTINEL_MASTER}\r\n".encode()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(command)
            reply = b""
            # *2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n, or *-1 / -ERR: one small reply.
            while reply.count(b"\r\n") < 5 and not reply.startswith((b"-", b"*-1")):
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        return ProbeResult(False, str(exc))
    parts = reply.split(b"\r\n")
    if not reply.startswith(b"*2") or len(parts) < 5:
        return ProbeResult(False, reply.decode(errors="replace").strip()[:200])
    return ProbeResult(True, f"primary {parts[2].decode()}:{parts[4].decode()}")


def kafka_api_versions(port: int, timeout: float = 1.0) -> ProbeResult:
    """An ApiVersions v0 round trip: the broker is up and speaks the Kafka protocol."""
    client_id = b"deploy"
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id.
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exactly(sock, 10)
    except OSError as exc:
        return ProbeResult(False, str(exc))
    _size, correlation_id, error_code = struct.unpack(">iih", head)
    ok = correlation_id == 7 and error_code == 0
    return ProbeResult(ok, f"ApiVersions error_code={error_code}")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return data


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body); status 0 with the error text when there is no HTTP answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ValueError) as exc:
        return 0, str(exc)


def probe(proc: Process) -> ProbeResult:
    """Is this process healthy right now?"""
    if proc.probe == "redis":
        return redis_ping(proc.port)
    if proc.probe == "sentinel":
        return sentinel_master(proc.port)
    if proc.probe == "kafka":
        return kafka_api_versions(proc.port)
    host = f"[{proc.host}]" if ":" in proc.host else proc.host
    status, body = http_get(f"http://{host}:{proc.port}{proc.probe_path}", timeout=1.0)
    return ProbeResult(status == 200, f"{status} {body.strip()[:200]}")
