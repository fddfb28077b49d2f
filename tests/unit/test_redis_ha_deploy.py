"""REDIS_HA=sentinel in the deploy: opt-in programs, configs and node settings; the
default deploy is what it was (one `redis`, no Sentinel anywhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.cluster import Cluster
from deploy.spec import SENTINEL_MASTER, ClusterSpec
from deploy.supervisor import Binaries, build_processes, ha_configs, render_conf

pytestmark = pytest.mark.unit

BINS = Binaries(nginx="nginx", redis_server="redis-server", tansu="tansu")


def test_the_default_deploy_has_one_redis_and_no_sentinel(tmp_path: Path) -> None:
    spec = ClusterSpec(run_dir=tmp_path)
    procs = build_processes(spec, BINS)
    assert [p.name for p in procs if "redis" in p.name or "sentinel" in p.name] == ["redis"]
    (redis,) = [p for p in procs if p.name == "redis"]
    assert redis.command[:3] == ["redis-server", "--port", "6379"]
    assert "appendonly" not in render_conf(spec, procs).split("[program:kafka]")[1]
    assert "redis-2" not in spec.all_ports() and spec.sentinel_ports == []
    env = spec.app_env("gateway-1")
    assert "REDIS_SENTINELS" not in env and "REDIS_SENTINEL_MASTER" not in env
    assert ClusterSpec.from_env({}).redis_ha == "none"
    assert ha_configs(spec) == {}


def test_sentinel_mode_runs_a_primary_a_replica_and_three_sentinels(tmp_path: Path) -> None:
    spec = ClusterSpec(run_dir=tmp_path, redis_ha="sentinel")
    bins = Binaries("nginx", "redis-server", "tansu", redis_sentinel="/usr/bin/redis-sentinel")
    procs = {p.name: p for p in build_processes(spec, bins)}
    assert {"redis", "redis-2", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(procs)
    assert procs["redis"].command == ["redis-server", str(tmp_path / "redis" / "redis.conf")]
    assert procs["sentinel-2"].command == [
        "/usr/bin/redis-sentinel",
        str(tmp_path / "sentinel-2" / "sentinel.conf"),
    ]
    assert procs["sentinel-1"].probe == "sentinel"
    assert [procs[n].port for n in ("redis", "redis-2")] == [6379, 6380]
    assert [procs[f"sentinel-{i}"].port for i in (1, 2, 3)] == [26379, 26380, 26381]
    # Without Debian's binary, redis-server runs as a Sentinel.
    plain = {p.name: p for p in build_processes(spec, BINS)}
    assert plain["sentinel-1"].command[-1] == "--sentinel"

    configs = {
        path.relative_to(tmp_path).as_posix(): text for path, text in ha_configs(spec).items()
    }
    for name in ("redis", "redis-2"):
        text = configs[f"{name}/redis.conf"]
        assert "appendonly yes" in text and "appendfsync everysec" in text
        assert f"dir {tmp_path / name}" in text and "bind 127.0.0.1" in text
    assert "replicaof" not in configs["redis/redis.conf"]
    assert "replicaof 127.0.0.1 6379" in configs["redis-2/redis.conf"]
    for i in (1, 2, 3):
        text = configs[f"sentinel-{i}/sentinel.conf"]
        assert f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 6379 2" in text
        assert f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000" in text
        assert f"port {26378 + i}" in text
    env = spec.app_env("worker-1")
    assert env["REDIS_SENTINELS"] == "127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381"
    assert env["REDIS_SENTINEL_MASTER"] == SENTINEL_MASTER
    # Every program, and so `status` and the busy-port check, knows the new ports.
    assert {"redis-2", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(spec.all_ports())


def test_redis_ha_from_the_environment(tmp_path: Path) -> None:
    spec = ClusterSpec.from_env({"REDIS_HA": "sentinel", "RUN_DIR": str(tmp_path)})
    assert spec.ha and spec.sentinel_ports == [26379, 26380, 26381]
    with pytest.raises(ValueError, match="REDIS_HA"):
        ClusterSpec.from_env({"REDIS_HA": "cluster", "RUN_DIR": str(tmp_path)})


def test_free_ports_cover_the_ha_programs(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(tmp_path, 1, 1, redis_ha="sentinel")
    ports = list(spec.all_ports().values())
    assert len(ports) == len(set(ports)) == 6 + 2 + 4
    saved = ClusterSpec.on_free_ports(tmp_path, 1, 1, redis_ha="sentinel")
    saved.save()
    assert ClusterSpec.load(tmp_path) == saved


def test_a_config_sentinel_rewrote_is_kept_and_another_topology_is_not(tmp_path: Path) -> None:
    spec = ClusterSpec(run_dir=tmp_path, redis_ha="sentinel")
    cluster = Cluster(spec, out=lambda line: None)
    for name in spec.redis_data_names + spec.sentinel_names:
        (tmp_path / name).mkdir()
    cluster._render_ha()
    conf = tmp_path / "sentinel-1" / "sentinel.conf"
    rewritten = conf.read_text().replace("127.0.0.1 6379 2", "127.0.0.1 6380 2")
    conf.write_text(rewritten)
    cluster._render_ha()
    assert conf.read_text() == rewritten  # after a failover: go on from the new primary
    other = Cluster(ClusterSpec(run_dir=tmp_path, redis_ha="sentinel", redis_port=7000))
    other._out = lambda line: None
    other._render_ha()
    assert "127.0.0.1 7000 2" in conf.read_text()


def test_redis_mode_cluster_from_the_environment(tmp_path: Path) -> None:
    spec = ClusterSpec.from_env({"REDIS_MODE": "cluster", "RUN_DIR": str(tmp_path)})
    assert spec.cluster and not spec.ha
    assert spec.cluster_node_ports == [6379, 7001, 7002, 7003, 7004, 7005]
    assert spec.cluster_bus_ports == [16379, 17001, 17002, 17003, 17004, 17005]
    assert spec.app_env("gateway-1")["REDIS_MODE"] == "cluster"
    seeds = spec.app_env("gateway-1")["REDIS_CLUSTER_NODES"].split(",")
    assert seeds == [f"127.0.0.1:{p}" for p in (6379, 7001, 7002, 7003, 7004, 7005)]
    assert spec.redis_data_names == ["redis", *(f"redis-{i}" for i in range(2, 7))]
    with pytest.raises(ValueError, match="REDIS_MODE=cluster with REDIS_HA"):
        ClusterSpec.from_env({"REDIS_MODE": "cluster", "REDIS_HA": "sentinel"})
    with pytest.raises(ValueError, match="REDIS_MODE"):
        ClusterSpec.from_env({"REDIS_MODE": "sharded"})


def test_free_ports_cover_the_cluster_nodes_and_their_bus(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(tmp_path, 1, 1, redis_ha="cluster")
    ports = [*spec.all_ports().values(), *spec.cluster_bus_ports]
    assert len(ports) == len(set(ports)) == 6 + 2 + 5 + 6
    spec.save()
    assert ClusterSpec.load(tmp_path) == spec


def test_cluster_nodes_are_configured_apart_and_the_nodes_wait_for_them(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(tmp_path, 1, 1, redis_ha="cluster")
    configs = ha_configs(spec)
    assert len(configs) == 6
    for (path, text), port, bus in zip(
        sorted(configs.items(), key=lambda kv: spec.redis_data_names.index(kv[0].parent.name)),
        spec.cluster_node_ports,
        spec.cluster_bus_ports,
        strict=True,
    ):
        # Apart from the single Redis's data (run/redis): a node with keys cannot join.
        assert path.parent.parent == tmp_path / "redis-cluster"
        for line in (f"port {port}", f"cluster-port {bus}", "cluster-enabled yes"):
            assert line in text.splitlines(), (path, line)
        assert f"dir {path.parent}" in text
    procs = build_processes(spec, BINS)
    started_first = {p.name for p in procs if p.autostart}
    assert started_first == {*spec.redis_data_names, "kafka"}
