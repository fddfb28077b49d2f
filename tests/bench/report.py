"""The bench's report: a markdown summary with ours as ratios to both baselines, and
PNG plots (latency distributions, throughput over time, CPU by component).

Reads only the results dict that __main__ writes to results.json, so a report can be
made again from a saved run: `python -m tests.bench.report bench-results/<run>`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BASELINES = ("bare", "socketio")
LABEL = {
    "ours": "this project",
    "bare": "bare uvicorn (ceiling)",
    "socketio": "socket.io peer",
    "reference": "reference server (Node)",
}


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def _ratio(ours: Any, other: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(other, int | float) or not other:
        return "-"
    return f"{ours / other:.2f}x"


#: (row label, scenario, path in a target's result, unit, digits)
ROWS: list[tuple[str, str, tuple[str, ...], str, int]] = [
    ("answers ok / total", "paced", ("ok",), "", 0),
    ("time to first chunk p50", "paced", ("ttfc_ms", "p50"), " ms", 0),
    ("time to first chunk p95", "paced", ("ttfc_ms", "p95"), " ms", 0),
    ("gap between chunks p99", "paced", ("gap_ms", "p99"), " ms", 0),
    ("answer duration / ideal p50", "paced", ("duration_ratio", "p50"), "", 2),
    ("answer duration / ideal p95", "paced", ("duration_ratio", "p95"), "", 2),
    ("worker write -> gateway send p95", "paced", ("chunk_delay_ms", "p95"), " ms", 1),
    ("worker write -> gateway send p99", "paced", ("chunk_delay_ms", "p99"), " ms", 1),
    ("chunks/s delivered", "paced", ("chunks_per_s",), "", 0),
    ("text delivered, characters/s", "paced", ("text_per_s",), "", 0),
    ("server CPU per 1,000 chunks", "paced", ("cpu_s_per_1000_chunks", "total"), " s", 3),
    ("server CPU per 10,000 characters", "paced", ("cpu_s_per_10k_chars",), " s", 3),
    ("full speed: answers ok", "fullspeed", ("ok",), "", 0),
    ("full speed: chunks/s", "fullspeed", ("chunks_per_s",), "", 0),
    ("full speed: CPU per 1,000 chunks", "fullspeed", ("cpu_s_per_1000_chunks", "total"), " s", 3),
    ("full speed: characters/s", "fullspeed", ("text_per_s",), "", 0),
    ("idle: connections held", "idle", ("connected",), "", 0),
    ("idle: dropped", "idle", ("dropped",), "", 0),
    ("idle: KiB per connection, edge", "idle", ("rss_kib_per_connection", "edge_total"), "", 1),
    ("idle: KiB per connection, all", "idle", ("rss_kib_per_connection", "all_total"), "", 1),
]


#: The `http` scenario: (row label, path in a target's result, unit, digits).
HTTP_ROWS: list[tuple[str, tuple[str, ...], str, int]] = [
    ("appends/s", ("appends", "appends_per_s"), "", 0),
    ("append latency p50", ("appends", "latency_ms", "p50"), " ms", 2),
    ("append latency p99", ("appends", "latency_ms", "p99"), " ms", 2),
    ("server CPU per 1,000 appends", ("appends", "cpu_s_per_1000_appends", "total"), " s", 3),
    ("SSE: messages delivered/s", ("sse", "delivered_per_s"), "", 0),
    ("SSE: appends/s while followed", ("sse", "appends_per_s"), "", 0),
    ("SSE: append -> delivery p50", ("sse", "delivery_ms", "p50"), " ms", 1),
    ("SSE: append -> delivery p99", ("sse", "delivery_ms", "p99"), " ms", 1),
    ("SSE: server CPU per 1,000 delivered", ("sse", "cpu_s_per_1000_delivered", "total"), " s", 3),
    ("load generator CPU, appends", ("appends", "client_cpu_s"), " s", 2),
    ("load generator CPU, SSE", ("sse", "client_cpu_s"), " s", 2),
]


def _shape_text(shape: dict[str, Any] | None) -> str:
    if not shape:
        return "-"
    tokens, pace = shape.get("max_tokens"), shape.get("tokens_per_second") or 0
    if not pace:
        return f"{tokens:,} one-token chunks as fast as they go"
    return (
        f"{tokens:,}-token answers at {pace:g} tokens/s, {shape.get('batch_flush_ms'):g} ms / "
        f"{shape.get('batch_max_tokens')}-token batches"
    )


def http_markdown(scen: dict[str, Any]) -> list[str]:
    """The `http` scenario: ours and the reference server side by side."""
    http = _get(scen, "http") or {}
    targets = http.get("targets") or {}
    if not targets:
        return []
    names = ("ours", "reference")
    lines = [
        "",
        "**Durable Streams over HTTP** (`http`: ours at `/streams/` through nginx, the "
        f"reference server's storage: {http.get('storage')}):",
        "",
        "| | " + " | ".join(LABEL[t] for t in names) + " | ours / reference |",
        "|---|---|---|---|",
    ]
    for label, path, unit, digits in HTTP_ROWS:
        values = [_get(targets.get(t), *path) for t in names]
        cells = [_fmt(v, unit, digits) for v in values]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_ratio(*values)} |")
    for name in names:
        r = targets.get(name)
        if not r:
            continue
        if "error" in r:
            lines += ["", f"**http, {name}: failed:** {r['error'][:500]}"]
            continue
        a, e = r.get("appends", {}), r.get("sse", {})
        lines += [
            "",
            f"**http, {name}** ({r.get('server')}): {a.get('writers')} writers, "
            f"{a.get('appends'):,} appends in {a.get('measured_s')} s, read back: "
            f"lost {a.get('lost')}, duplicated {a.get('duplicated')}, out of order "
            f"{a.get('out_of_order')}. SSE: {e.get('writers')} writers x "
            f"{e.get('messages_per_writer')} messages, {e.get('readers')} readers: "
            f"{e.get('delivered'):,} delivered of {e.get('expected'):,}, lost {e.get('lost')}, "
            f"duplicated {e.get('duplicated')}, out of order {e.get('out_of_order')}, "
            f"unacknowledged {e.get('unacknowledged')}, readers incomplete "
            f"{e.get('readers_incomplete')}, reconnects {e.get('reconnects')}. Rate limited "
            f"(429) {a.get('rate_limited')} + {e.get('rate_limited')}; errors "
            f"{json.dumps(a.get('errors'))} {json.dumps(e.get('errors'))}; CPU of "
            f"{', '.join(r.get('cpu_of', []))}.",
        ]
    return lines


def summary_markdown(results: dict[str, Any]) -> str:
    scen = results.get("scenarios", {})
    sizes = results.get("sizes", {})
    models = [
        f"{title}: {_shape_text(_get(scen, scenario, 'shape'))}"
        for title, scenario in (("Paced", "paced"), ("full speed", "fullspeed"))
        if _get(scen, scenario, "shape")
    ]
    lines = [
        f"# make bench, {results.get('started')} ({results.get('mode')} mode)",
        "",
        f"{results.get('machine', {}).get('cpus')} CPUs, Python "
        f"{results.get('machine', {}).get('python')}; sizes: {json.dumps(sizes)}. "
        + ("; ".join(models) + ". " if models else "")
        + "Each client on its own loopback address; load generator on the same machine.",
    ]
    table = []
    for label, scenario, path, unit, digits in ROWS:
        targets = _get(scen, scenario, "targets") or {}
        if not targets:
            continue
        values = [_get(targets.get(t), *path) for t in ("ours", *BASELINES)]
        if path == ("ok",):
            totals = [_get(targets.get(t), "answers") for t in ("ours", *BASELINES)]
            cells = [
                "-" if v is None else f"{v:,} / {n:,}" for v, n in zip(values, totals, strict=True)
            ]
        else:
            cells = [_fmt(v, unit, digits) for v in values]
        table.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {_ratio(values[0], values[1])} | {_ratio(values[0], values[2])} |"
        )
    if table:
        lines += [
            "",
            "| | " + " | ".join(LABEL[t] for t in ("ours", *BASELINES)) + " | ours / bare | "
            "ours / socket.io |",
            "|---|---|---|---|---|---|",
            *table,
        ]
    for scenario in ("paced", "fullspeed"):
        ours = _get(scen, scenario, "targets", "ours")
        if ours:
            lines += [
                "",
                f"**{scenario}, ours:** CPU per 1,000 chunks by process kind "
                f"{json.dumps(ours.get('cpu_s_per_1000_chunks'))}; failed "
                f"{ours.get('failed')}, not exactly once {ours.get('not_exactly_once')}, "
                f"usage wrong {ours.get('usage_wrong')}, refusals "
                f"{json.dumps(ours.get('refusals'))}, errors {json.dumps(ours.get('errors'))}.",
            ]
    over = _get(scen, "overload", "targets", "ours")
    if over and "error" not in over:
        wait = over.get("refused_wait_ms") or {}
        lines += [
            "",
            f"**overload, ours** ({over.get('streams'):,} paced streams at once): "
            f"{over.get('ok'):,} / {over.get('answers'):,} answers ok, failed "
            f"{over.get('failed')}, not exactly once {over.get('not_exactly_once')}, "
            f"usage wrong {over.get('usage_wrong')}, stalled (silent > 5 s) "
            f"{over.get('stalled')}; {over.get('refused_answers'):,} answers refused at "
            f"least once ({json.dumps(over.get('refusals'))} refusals), sent again after "
            f"`retry_after`: their wait p50 {_fmt(wait.get('p50'), ' ms', 0)}, p95 "
            f"{_fmt(wait.get('p95'), ' ms', 0)}, max {_fmt(wait.get('max'), ' ms', 0)}. "
            f"Once accepted: first chunk p50 {_fmt(_get(over, 'ttfc_ms', 'p50'), ' ms', 0)}, "
            f"p95 {_fmt(_get(over, 'ttfc_ms', 'p95'), ' ms', 0)}; duration / ideal p50 "
            f"{_fmt(_get(over, 'duration_ratio', 'p50'), '', 2)}, p95 "
            f"{_fmt(_get(over, 'duration_ratio', 'p95'), '', 2)}; "
            f"{_fmt(over.get('chunks_per_s'), '', 0)} chunks/s; errors "
            f"{json.dumps(over.get('errors'))}.",
        ]
    failover = _get(scen, "failover", "targets", "ours")
    if failover:
        g, w = (
            failover.get("gateway_kill_resume_ms") or {},
            failover.get("worker_kill_takeover_ms") or {},
        )
        lines += [
            "",
            f"**failover** ({failover.get('rounds')} rounds): kill -9 of the client's gateway "
            f"-> next chunk p50 {_fmt(g.get('p50'), ' ms', 0)}, p99 {_fmt(g.get('p99'), ' ms', 0)};"
            f" kill -9 of the generating worker -> next chunk p50 {_fmt(w.get('p50'), ' ms', 0)},"
            f" p99 {_fmt(w.get('p99'), ' ms', 0)} (lease {failover.get('lease_ttl_ms')} ms).",
        ]
    idle = _get(scen, "idle", "targets", "ours")
    if idle:
        lines += [
            "",
            f"**idle, ours:** KiB per connection by kind "
            f"{json.dumps(idle.get('rss_kib_per_connection'))}.",
        ]
    lines += http_markdown(scen)
    failed = results.get("failed_runs") or []
    if failed:
        lines += ["", f"**Runs that failed** (error in results.json): {', '.join(failed)}."]
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots of what the results hold; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    scen = results.get("scenarios", {})
    for scenario in ("paced", "fullspeed"):
        targets = _get(scen, scenario, "targets") or {}
        if not targets:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        for name, r in targets.items():
            series = r.get("throughput") or []
            if series:
                ax.plot([t for t, _ in series], [c for _, c in series], label=LABEL[name])
        ax.set(title=f"{scenario}: chunks delivered per second", xlabel="s", ylabel="chunks/s")
        ax.legend()
        path = out / f"throughput-{scenario}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(targets)
        kinds = sorted({k for r in targets.values() for k in r.get("cpu_s_per_1000_chunks", {})})
        kinds = [k for k in kinds if k != "total"]
        bottom = [0.0] * len(names)
        for kind in kinds:
            heights = [targets[n].get("cpu_s_per_1000_chunks", {}).get(kind, 0.0) for n in names]
            ax.bar([LABEL[n] for n in names], heights, bottom=bottom, label=kind)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set(title=f"{scenario}: server CPU seconds per 1,000 chunks", ylabel="s")
        ax.legend()
        path = out / f"cpu-{scenario}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    targets = _get(scen, "paced", "targets") or {}
    if targets:
        fig, ax = plt.subplots(figsize=(8, 4))
        metrics = [("ttfc_ms", "first chunk"), ("gap_ms", "gap")]
        qs = ("p50", "p95", "p99")
        width = 0.8 / max(1, len(targets))
        xs = range(len(metrics) * len(qs))
        for i, (name, r) in enumerate(targets.items()):
            values = [(_get(r, m, q) or 0.0) for m, _ in metrics for q in qs]
            ax.bar([x + i * width for x in xs], values, width, label=LABEL[name])
        ax.set_xticks(
            [x + width * (len(targets) - 1) / 2 for x in xs],
            [f"{label} {q}" for _, label in metrics for q in qs],
        )
        ax.set(title="paced: latency distribution", ylabel="ms")
        ax.legend()
        path = out / "latency-paced.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(summary_markdown(results))
    plots(results, out)


if __name__ == "__main__":
    run = Path(sys.argv[1])
    write_report(json.loads((run / "results.json").read_text()), run)
    print((run / "summary.md").read_text())  # noqa: T201
