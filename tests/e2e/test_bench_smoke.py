"""`make bench`'s whole code path once, at the smallest sizes (issue 8): every scenario
on every target, the report written. No timing is asserted: speed is what `make bench`
measures, side by side, not what a test pins.

`--smoke` keeps it short: answers of about a second, two gateways and two workers, and
each system started once for all its scenarios with the same model (`--reuse-targets`).
The `http` scenario needs the reference Durable Streams server installed
(`npm ci` in tests/durable_streams)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(420)
def test_bench_smoke_runs_every_scenario_on_every_target(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = tmp_path.iterdir()
    results = json.loads((run / "results.json").read_text())
    assert results["failed_runs"] == []
    scenarios = results["scenarios"]
    for scenario in ("paced", "fullspeed"):
        targets = scenarios[scenario]["targets"]
        assert set(targets) == {"ours", "bare", "socketio"}
        for name, r in targets.items():
            # Every answer complete and exactly once, on each system.
            assert (r["ok"], r["failed"], r["not_exactly_once"]) == (r["answers"], 0, 0), name
            assert r["chunks"] > 0 and r["cpu_s_per_1000_chunks"]["total"] > 0, name
        assert targets["ours"]["usage_wrong"] == 0
        assert targets["ours"]["chunk_delay_ms"]["n"] > 0
    for name, r in scenarios["idle"]["targets"].items():
        assert (r["connected"], r["dropped"]) == (r["requested"], 0), name
    http = scenarios["http"]["targets"]
    assert set(http) == {"ours", "reference"}
    for name, r in http.items():
        appends, sse = r["appends"], r["sse"]
        # Appends: some, every acknowledged one read back once and in order.
        assert appends["appends"] > 0 and appends["appends_per_s"] > 0, name
        assert appends["cpu_s"]["total"] > 0, name
        checks = ("lost", "duplicated", "out_of_order", "unacknowledged")
        assert [appends[k] for k in checks] == [0] * 4, (name, appends)
        assert (appends["errors"], appends["rate_limited"]) == ({}, 0), name
        # SSE: every message to every reader exactly once, in order.
        every = sse["readers"] * sse["messages_per_writer"]
        assert sse["expected"] == sse["delivered"] == every, (name, sse)
        assert [sse[k] for k in (*checks, "readers_incomplete")] == [0] * 5, (name, sse)
        assert (sse["errors"], sse["rate_limited"]) == ({}, 0), name
    over = scenarios["overload"]["targets"]["ours"]
    assert (over["ok"], over["failed"], over["stalled"]) == (over["answers"], 0, 0)
    assert over["answers"] == results["sizes"]["overload_streams"]
    failover = scenarios["failover"]["targets"]["ours"]
    assert failover["gateway_kill_resume_ms"]["n"] == failover["rounds"]
    assert failover["worker_kill_takeover_ms"]["n"] == failover["rounds"]
    summary = (run / "summary.md").read_text()
    assert "| full speed: chunks/s |" in summary and "socket.io peer" in summary
    assert "| SSE: messages delivered/s |" in summary and "reference server" in summary
    assert {p.name for p in run.glob("*.png")} >= {
        "throughput-paced.png",
        "cpu-fullspeed.png",
        "latency-paced.png",
    }
