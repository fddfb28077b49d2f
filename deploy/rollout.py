"""The pieces of planned changes to a running cluster (`rolling-restart`, `scale`) that
need no cluster: the order of the steps, reading nginx's processes from /proc, and
comparing supervisord configs. Cluster (deploy/cluster.py) runs the steps."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from deploy.spec import ClusterSpec
from deploy.supervisor import pid_alive

_POLL = 0.05
WORKER_TITLE = "nginx: worker process"
"""A worker's process title; one that was told to stop appends " is shutting down"."""
_SECTION = re.compile(r"^\[([^\]]+)\]$", re.M)


class ReloadError(RuntimeError):
    """nginx did not take a new config (its error log usually says why)."""


@dataclass(frozen=True)
class Step:
    """One step of a rolling restart: restart a node, or change the node counts."""

    action: Literal["restart", "scale"]
    name: str = ""
    gateways: int = 0
    workers: int = 0


def restart_plan(spec: ClusterSpec) -> list[Step]:
    """Every gateway, then every worker, one at a time.

    A node that is the only one of its kind cannot be taken out of nginx without every
    request of that kind failing, so the plan first adds a second one (a surge node),
    and removes it again at the end.
    """
    restarts = [Step("restart", name) for name in spec.gateway_names + spec.worker_names]
    if spec.gateways > 1 and spec.workers > 1:
        return restarts
    surge = Step("scale", gateways=max(spec.gateways, 2), workers=max(spec.workers, 2))
    return [surge, *restarts, Step("scale", gateways=spec.gateways, workers=spec.workers)]


def union_spec(old: ClusterSpec, new: ClusterSpec) -> ClusterSpec:
    """The cluster while it changes from `old` to `new` (`new` from `old.scaled`): every
    node of either. Nodes that stay have the same ports in both."""

    def longer(a: list[int], b: list[int]) -> list[int]:
        long, short = (a, b) if len(a) >= len(b) else (b, a)
        if long[: len(short)] != short:
            raise ValueError(f"the two specs give nodes different ports: {a} and {b}")
        return list(long)

    gateway_ports = longer(old.gateway_ports, new.gateway_ports)
    worker_ports = longer(old.worker_ports, new.worker_ports)
    return dataclasses.replace(
        old,
        gateways=len(gateway_ports),
        workers=len(worker_ports),
        gateway_ports=gateway_ports,
        worker_ports=worker_ports,
    )


def children(pid: int) -> dict[int, str]:
    """pid -> process title of every live child of `pid`, from /proc."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rpartition(")")[2].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, IndexError, ValueError):
            continue  # it exited while we looked
        found[int(entry.name)] = title.decode(errors="replace").strip()
    return found


def serving_workers(master_pid: int) -> set[int]:
    """nginx workers that accept new connections (not those shutting down)."""
    return {pid for pid, title in children(master_pid).items() if title == WORKER_TITLE}


def reload_nginx(master_pid: int, timeout: float = 15.0) -> set[int]:
    """SIGHUP the master and wait until the new config is what serves: every worker
    that still accepts connections was started after the signal. The old workers go on
    with the connections they hold (WebSockets included) and exit when those close.
    Returns the new workers' pids; ReloadError at the deadline or if the master dies."""
    before = set(children(master_pid))
    os.kill(master_pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while True:
        serving = serving_workers(master_pid)
        if serving and not serving & before:
            return serving
        if not pid_alive(master_pid):
            raise ReloadError(f"the nginx master (pid {master_pid}) exited during the reload")
        if time.monotonic() >= deadline:
            raise ReloadError(
                f"nginx (pid {master_pid}) did not switch to the new config within "
                f"{timeout:.0f}s (workers serving: {sorted(serving)}, old: {sorted(before)})"
            )
        time.sleep(_POLL)


def program_sections(conf: str) -> dict[str, str]:
    """name -> the text of its `[program:name]` section in a supervisord.conf."""
    headers = list(_SECTION.finditer(conf))
    ends = [m.start() for m in headers[1:]] + [len(conf)]
    return {
        m.group(1).removeprefix("program:"): conf[m.start() : end].strip()
        for m, end in zip(headers, ends, strict=True)
        if m.group(1).startswith("program:")
    }


def changed_programs(old_conf: str, new_conf: str) -> list[str]:
    """Programs in both configs whose sections differ: supervisor would keep running
    them with the old settings, so a live change must not touch them."""
    old, new = program_sections(old_conf), program_sections(new_conf)
    return [name for name in new if name in old and old[name] != new[name]]
