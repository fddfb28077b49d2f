"""The pure parts of `rolling-restart` and `scale`: nginx rendered with nodes `down`, the
spec of a scaled cluster, the restart plan, supervisord config comparison, and the
nginx-reload wait (against stand-in processes, no nginx)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.__main__ import main as deploy_main
from deploy.cluster import Cluster, DeployError
from deploy.rollout import (
    ReloadError,
    Step,
    changed_programs,
    children,
    program_sections,
    reload_nginx,
    restart_plan,
    union_spec,
)
from deploy.spec import ClusterSpec
from deploy.supervisor import Binaries, build_processes, render_conf
from tests.nginx_confs import local_conf

pytestmark = pytest.mark.unit

CHECKOUT = Path(__file__).resolve().parents[2]
BINS = Binaries(nginx="/usr/sbin/nginx", redis_server="/usr/bin/redis-server", tansu="tansu")
SECRET = "3f1c" * 16


def _conf(tmp_path: Path, down: set[str], gateways: int = 3, workers: int = 2) -> str:
    return local_conf(tmp_path, gateways, workers, down=down)


def _server_lines(conf: str) -> dict[str, str]:
    """node name -> its `server ...;` line in an upstream block."""
    return {
        m.group(2): m.group(1) for m in re.finditer(r"^\s*(server [^;]+;)\s+# (\S+)$", conf, re.M)
    }


# --- nginx: a node out of rotation ---------------------------------------------------------


def test_render_marks_only_the_named_nodes_down(tmp_path: Path) -> None:
    lines = _server_lines(_conf(tmp_path, {"gateway-2", "worker-1"}))
    assert lines["gateway-2"] == "server 127.0.0.1:9002 max_fails=0 down;"
    assert lines["worker-1"] == "server 127.0.0.1:9101 max_fails=1 fail_timeout=2s down;"
    for name in ("gateway-1", "gateway-3", "worker-2"):
        assert not lines[name].endswith(" down;"), lines[name]


def test_render_keeps_a_down_node_in_its_upstream(tmp_path: Path) -> None:
    """`down` rather than leaving it out: ip_hash keeps every other client where it was."""
    conf = _conf(tmp_path, {"gateway-1"})
    upstream = conf[conf.index("upstream ws_gateway {") : conf.index("upstream ds_gateway {")]
    assert upstream.count("server 127.0.0.1:") == 3
    assert "ip_hash;" in upstream
    # /streams/ (no stickiness) leaves the node out the same way.
    streams = conf[conf.index("upstream ds_gateway {") : conf.index("upstream ai_worker {")]
    assert streams.count("server 127.0.0.1:") == 3 and streams.count(" down;") == 1


def test_render_without_down_has_no_down_server(tmp_path: Path) -> None:
    assert " down;" not in _conf(tmp_path, set())


def test_render_refuses_unknown_or_every_node_down(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gateway-9"):
        _conf(tmp_path, {"gateway-9"})
    with pytest.raises(ValueError, match="every server"):
        _conf(tmp_path, {"worker-1", "worker-2"})


# --- the spec of a scaled cluster ----------------------------------------------------------


def test_scaling_a_default_cluster_continues_the_default_ports(tmp_path: Path) -> None:
    spec = ClusterSpec(run_dir=tmp_path, gateways=3, workers=3)
    up = spec.scaled(5, 4)
    assert (up.gateways, up.workers) == (5, 4)
    assert up.gateway_ports == [8001, 8002, 8003, 8004, 8005]
    assert up.worker_ports == [8101, 8102, 8103, 8104]
    assert up.gateway_names[-1] == "gateway-5"
    down = up.scaled(2, 1)
    assert (down.gateway_ports, down.worker_ports) == ([8001, 8002], [8101])
    assert down == ClusterSpec(run_dir=tmp_path, gateways=2, workers=1)


def test_scaling_a_free_port_cluster_takes_new_free_ports(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(tmp_path, 2, 2, extra_env={"JWT_SECRET": SECRET})
    up = spec.scaled(4, 3)
    assert up.gateway_ports[:2] == spec.gateway_ports
    assert up.worker_ports[:2] == spec.worker_ports
    every = list(up.all_ports().values())
    assert len(every) == len(set(every)), "a new node reuses a port"
    # Everything else stays: same stores, listeners, settings.
    assert (up.redis_port, up.public_port, up.extra_env) == (
        spec.redis_port,
        spec.public_port,
        spec.extra_env,
    )


def test_scaling_refuses_no_node_and_repeated_ports(tmp_path: Path) -> None:
    spec = ClusterSpec(run_dir=tmp_path, gateways=2, workers=2)
    with pytest.raises(ValueError, match="at least one gateway"):
        spec.scaled(0, 2)
    with pytest.raises(ValueError, match="reuse ports"):
        spec.scaled(101, 2)  # gateway-101 would be on 8101, worker-1's port


def test_scaled_spec_is_saved_and_loaded(tmp_path: Path) -> None:
    spec = ClusterSpec(run_dir=tmp_path, gateways=2, workers=2).scaled(3, 1)
    spec.save()
    assert ClusterSpec.load(tmp_path) == spec


def test_union_holds_every_node_of_both_specs(tmp_path: Path) -> None:
    old = ClusterSpec.on_free_ports(tmp_path, 3, 1)
    new = old.scaled(2, 3)
    union = union_spec(old, new)
    assert union.gateway_ports == old.gateway_ports
    assert union.worker_ports == new.worker_ports
    assert (union.gateways, union.workers) == (3, 3)
    with pytest.raises(ValueError, match="different ports"):
        union_spec(old, ClusterSpec.on_free_ports(tmp_path, 3, 1))


# --- the plan -------------------------------------------------------------------------------


def test_plan_restarts_gateways_then_workers_one_at_a_time(tmp_path: Path) -> None:
    plan = restart_plan(ClusterSpec(run_dir=tmp_path, gateways=3, workers=2))
    assert plan == [
        Step("restart", "gateway-1"),
        Step("restart", "gateway-2"),
        Step("restart", "gateway-3"),
        Step("restart", "worker-1"),
        Step("restart", "worker-2"),
    ]


def test_plan_for_a_single_node_adds_a_surge_node_first(tmp_path: Path) -> None:
    """nginx with its only gateway down answers 502: a second one serves meanwhile."""
    plan = restart_plan(ClusterSpec(run_dir=tmp_path, gateways=1, workers=3))
    assert plan[0] == Step("scale", gateways=2, workers=3)
    assert [s.name for s in plan[1:-1]] == ["gateway-1", "worker-1", "worker-2", "worker-3"]
    assert plan[-1] == Step("scale", gateways=1, workers=3)


# --- supervisord config ----------------------------------------------------------------------


def _supervisor_conf(spec: ClusterSpec, secret: str = SECRET) -> str:
    return render_conf(spec, build_processes(spec, BINS, secret))


def test_program_sections_split_a_rendered_config(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(tmp_path, 2, 1)
    sections = program_sections(_supervisor_conf(spec))
    assert sorted(sections) == sorted(
        ["redis", "kafka", "worker-1", "gateway-1", "gateway-2", "nginx"]
    )
    assert sections["gateway-2"].startswith("[program:gateway-2]")
    assert f"--port {spec.node_port('gateway-2')}" in sections["gateway-2"]
    assert "[program:" not in sections["gateway-2"][1:]


def test_scaling_changes_no_running_program(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(tmp_path, 2, 2)
    bigger = spec.scaled(3, 4)
    assert changed_programs(_supervisor_conf(spec), _supervisor_conf(bigger)) == []
    assert changed_programs(_supervisor_conf(bigger), _supervisor_conf(spec)) == []


def test_another_secret_changes_every_node(tmp_path: Path) -> None:
    """Run with another JWT_SECRET than the deploy, scale would start nodes that refuse
    the others' tokens: the comparison catches it."""
    spec = ClusterSpec.on_free_ports(tmp_path, 2, 1)
    changed = changed_programs(_supervisor_conf(spec), _supervisor_conf(spec, "9a" * 32))
    assert sorted(changed) == ["gateway-1", "gateway-2", "worker-1"]


# --- waiting for an nginx reload, against stand-ins ---------------------------------------------

# A stand-in master: children titled like nginx workers (argv[0] of `sleep`). On SIGHUP
# ("reload") it starts a new worker and turns the old one into one shutting down, as
# nginx does; "ignore" does nothing (a config nginx refused), "die" exits.
_MASTER = r"""
import signal, subprocess, sys, time

def child(title):
    # Returned once /proc shows the title (Popen may return before the exec).
    kid = subprocess.Popen([title, "30"], executable="sleep")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{kid.pid}/cmdline", "rb") as f:
            if f.read().startswith(title.encode()):
                break
        time.sleep(0.005)
    return kid

kids = [child("nginx: worker process")]

def hup(*_):
    kids[0].kill()
    kids.append(child("nginx: worker process is shutting down"))
    kids.append(child("nginx: worker process"))

if sys.argv[1] == "reload":
    signal.signal(signal.SIGHUP, hup)
elif sys.argv[1] == "ignore":
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
print("ready", flush=True)
try:
    time.sleep(30)
finally:
    for kid in kids:
        kid.kill()
"""


@pytest.fixture
def stand_in() -> Iterator[Callable[[str], int]]:
    """start(mode) -> the pid of a stand-in nginx master; all are stopped afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(mode: str) -> int:
        # Its own process group, so that its workers go with it, whatever it did.
        proc = subprocess.Popen(
            [sys.executable, "-c", _MASTER, mode],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc.pid

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_children_reads_titles_from_proc(stand_in: Callable[[str], int]) -> None:
    master = stand_in("reload")
    assert list(children(master).values()) == ["nginx: worker process"]
    assert master in children(os.getpid())


def test_reload_waits_until_only_new_workers_serve(stand_in: Callable[[str], int]) -> None:
    master = stand_in("reload")
    old = set(children(master))
    new = reload_nginx(master, timeout=10)
    assert len(new) == 1 and not new & old
    titles = sorted(children(master).values())
    assert titles == ["nginx: worker process", "nginx: worker process is shutting down"]


def test_reload_not_taken_fails_at_the_deadline(stand_in: Callable[[str], int]) -> None:
    with pytest.raises(ReloadError, match="did not switch"):
        reload_nginx(stand_in("ignore"), timeout=0.5)


def test_reload_fails_at_once_when_the_master_dies(stand_in: Callable[[str], int]) -> None:
    with pytest.raises(ReloadError, match="exited"):
        reload_nginx(stand_in("die"), timeout=30)


# --- the commands without a running cluster -------------------------------------------------


def test_commands_refuse_a_cluster_that_is_not_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    for argv in (["rolling-restart"], ["scale", "--gateways", "4", "--workers", "2"]):
        assert deploy_main(argv) == 1
        assert "cluster is not running" in capsys.readouterr().err
    cluster = Cluster(ClusterSpec(run_dir=tmp_path), out=lambda _line: None)
    with pytest.raises(DeployError, match="not running"):
        cluster.scale(4, 2)


def test_one_change_at_a_time(tmp_path: Path) -> None:
    cluster = Cluster(ClusterSpec(run_dir=tmp_path), out=lambda _line: None)
    with cluster._change_lock():
        with pytest.raises(DeployError, match="another rolling-restart or scale"):
            with cluster._change_lock():
                pass


def test_make_targets_call_the_commands() -> None:
    def dry(*args: str) -> str:
        out = subprocess.run(
            ["make", "-n", "-C", str(CHECKOUT), *args], capture_output=True, text=True, check=True
        )
        return out.stdout

    assert "-m deploy rolling-restart" in dry("rolling-restart")
    assert "-m deploy scale --gateways 4 --workers 2" in dry("scale", "GATEWAYS=4", "WORKERS=2")
    assert re.search(r"-m deploy scale\s*$", dry("scale", "GATEWAYS=", "WORKERS="), re.M)
