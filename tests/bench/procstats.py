"""CPU time and memory of a target's processes, by kind (gateway, worker, nginx...).

Read from /proc through psutil: a kind's pids and all their children (nginx's
workers, uvicorn's), CPU as user + system seconds, memory as RSS. The orchestrator
takes a `Snapshot` before and after a load and divides the difference by what was
delivered (CPU per 1,000 chunks, RSS per connection).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds and RSS bytes per kind, at one moment."""

    cpu_s: dict[str, float]
    rss: dict[str, int]
    processes: dict[str, int]

    def cpu_since(self, before: Snapshot) -> dict[str, float]:
        """CPU seconds each kind spent between `before` and this snapshot."""
        return {k: max(0.0, v - before.cpu_s.get(k, 0.0)) for k, v in self.cpu_s.items()}

    def rss_since(self, before: Snapshot) -> dict[str, int]:
        return {k: v - before.rss.get(k, 0) for k, v in self.rss.items()}


def _family(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def snapshot(pids: dict[str, list[int]]) -> Snapshot:
    """CPU and RSS of each kind's processes and their children (each counted once).

    A process that exits between two snapshots takes its CPU time with it, so compare
    snapshots of a target whose processes all lived through the measurement."""
    cpu: dict[str, float] = {}
    rss: dict[str, int] = {}
    count: dict[str, int] = {}
    seen: set[int] = set()
    for kind, roots in pids.items():
        cpu[kind], rss[kind], count[kind] = 0.0, 0, 0
        for root in roots:
            for proc in _family(root):
                if proc.pid in seen:
                    continue
                seen.add(proc.pid)
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        cpu[kind] += times.user + times.system
                        rss[kind] += proc.memory_info().rss
                        count[kind] += 1
                except psutil.NoSuchProcess:
                    continue
    return Snapshot(cpu, rss, count)
