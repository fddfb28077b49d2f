"""The nginx renderer: pure text checks, no nginx process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nginx.render import (
    COMPOSE_CONF,
    NginxLayout,
    compose_layout,
    render,
)
from tests.nginx_confs import block as _block
from tests.nginx_confs import local_conf, servers

pytestmark = pytest.mark.unit


def _local(
    tmp_path: Path, gateways: int = 3, workers: int = 3, sticky: str = "ip_hash", **kw: str
) -> str:
    return local_conf(tmp_path, gateways, workers, sticky=sticky, **kw)


def _server(conf: str, listen: str) -> str:
    """The server block with `listen <listen>;`."""
    (server,) = [s for s in servers(conf) if f"listen {listen};" in s]
    return server


def test_committed_compose_config_is_a_fresh_render() -> None:
    assert COMPOSE_CONF.read_text() == render(compose_layout())


@pytest.mark.parametrize(("gateways", "workers"), [(1, 1), (3, 3), (5, 2)])
def test_one_server_line_per_node(tmp_path: Path, gateways: int, workers: int) -> None:
    conf = _local(tmp_path, gateways, workers)
    gw = _block(conf, "upstream ws_gateway")
    ai = _block(conf, "upstream ai_worker")
    assert gw.count("server 127.0.0.1:") == gateways
    assert ai.count("server 127.0.0.1:") == workers
    assert "server 127.0.0.1:9001 max_fails=0;" in gw
    assert "least_conn;" in ai
    assert "{{" not in conf


def test_sticky_methods(tmp_path: Path) -> None:
    assert "ip_hash;" in _block(_local(tmp_path), "upstream ws_gateway")
    consistent = _block(_local(tmp_path, sticky="consistent"), "upstream ws_gateway")
    assert "hash $remote_addr consistent;" in consistent
    assert "ip_hash" not in consistent
    with pytest.raises(ValueError, match="sticky"):
        _local(tmp_path, sticky="round_robin")


def test_ai_upstream_only_on_the_loopback_internal_listener(tmp_path: Path) -> None:
    conf = _local(tmp_path)
    public = _server(conf, "127.0.0.1:9080")
    internal = _server(conf, "127.0.0.1:9081")
    assert "ai_worker" not in public
    assert "proxy_pass http://ai_worker;" in internal
    for line in (
        "proxy_buffering off;",
        "proxy_request_buffering on;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_read_timeout 3600s;",
        "proxy_next_upstream error timeout http_502 http_503 non_idempotent;",
        "proxy_next_upstream_tries 3;",
    ):
        assert line in internal
    # Only /ws/, /api/, /streams/ and /health go to the gateways; the rest is 404 (and
    # the named location answers refusals of the per-address limits).
    locations = re.findall(r"location ([^{]+) \{", public)
    assert [loc.strip() for loc in locations] == [
        "/ws/",
        "/api/",
        "/streams/",
        "= /health",
        "/",
        "@rate_limited",
    ]
    assert "return 404;" in _block(public, "location / {")


def test_public_server_proxies_websockets(tmp_path: Path) -> None:
    conf = _local(tmp_path)
    public = _server(conf, "127.0.0.1:9080")
    assert "map $http_upgrade $connection_upgrade" in conf
    for line in (
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_buffering off;",
    ):
        assert line in public
    ws = _block(public, "location /ws/")
    assert "proxy_read_timeout 3600s;" in ws and "proxy_send_timeout 3600s;" in ws


def test_sized_for_many_sockets_and_logs_the_upstream(tmp_path: Path) -> None:
    conf = render(compose_layout())
    assert "worker_processes auto;" in conf
    assert "worker_rlimit_nofile 65535;" in conf
    assert "worker_connections 20000;" in conf
    assert "$upstream_addr" in conf and "$upstream_status" in conf
    local = _local(tmp_path)
    assert f'access_log "{tmp_path}/logs/nginx-access.log" upstream;' in local


def test_status_and_frontend_servers(tmp_path: Path) -> None:
    conf = _local(tmp_path)
    status = _server(conf, "127.0.0.1:9090")
    assert "stub_status;" in _block(status, "location = /nginx-status")
    assert "proxy_pass http://127.0.0.1:9102/health;" in status
    frontend = _server(conf, "127.0.0.1:9300")
    dist = Path(__file__).resolve().parents[2] / "frontend" / "dist"
    assert f'root "{dist}";' in frontend


def test_local_paths_stay_in_the_run_dir(tmp_path: Path) -> None:
    conf = _local(tmp_path)
    for directive in ("pid", "error_log", "client_body_temp_path", "proxy_temp_path"):
        lines = [ln for ln in conf.splitlines() if ln.strip().startswith(directive + " ")]
        assert lines and all(str(tmp_path) in line for line in lines), lines
    assert "/var/" not in conf and "daemon" not in conf


def test_the_public_server_logs_no_error_line_that_would_quote_a_token(tmp_path: Path) -> None:
    """nginx's error lines quote the request line with its query string."""
    public = _server(_local(tmp_path), "127.0.0.1:9080")
    (line,) = [ln.strip() for ln in public.splitlines() if ln.strip().startswith("error_log ")]
    assert line.endswith(" crit;"), line


def test_compose_mode(tmp_path: Path) -> None:
    conf = render(compose_layout(gateways=4, workers=2))
    assert "server gateway-4:8000 max_fails=0;" in conf
    assert "server worker-2:8000" in conf and "worker-3" not in conf
    assert "listen 8081;" in conf and "127.0.0.1" not in conf
    assert 'root "/usr/share/nginx/html/frontend";' in conf
    assert "access_log /dev/stdout upstream;" in conf and "error_log /dev/stderr" in conf
    # The image passes `-g "daemon off;"`; a second one in the file is an error.
    assert "daemon" not in conf and not re.search(r"^pid ", conf, re.M)
    assert str(tmp_path) not in conf


def test_user_directive_only_when_given(tmp_path: Path) -> None:
    layout = compose_layout()
    assert not re.search(r"^user ", render(layout), re.M)
    as_root = NginxLayout(**{**layout.__dict__, "user": "alice alice"})
    assert re.search(r"^user alice alice;$", render(as_root), re.M)


def _log_format(conf: str) -> str:
    """The whole `log_format ...;` directive (it spans several quoted lines)."""
    start = conf.index("log_format ")
    return conf[start : conf.index(";", start) + 1]


@pytest.mark.parametrize("mode", ["local", "compose"])
def test_access_log_has_no_query_string(tmp_path: Path, mode: str) -> None:
    """Clients may send `?token=...`: the log names the path ($uri), never the raw
    request line ($request), the raw URI ($request_uri) or the arguments."""
    conf = _local(tmp_path) if mode == "local" else render(compose_layout())
    fmt = _log_format(conf)
    assert "$uri" in fmt and "$request_method" in fmt, fmt
    variables = set(re.findall(r"\$[a-z_]+", fmt))
    leaky = {"$request", "$request_uri", "$args", "$query_string", "$is_args"}
    leaky |= {v for v in variables if v.startswith(("$arg_", "$http_", "$cookie_"))}
    assert not variables & leaky, fmt
    # Every access_log uses this format (the default `combined` logs $request).
    for line in re.findall(r"^\s*access_log .*$", conf, re.M):
        assert line.rstrip().endswith(" upstream;") or line.strip() == "access_log off;", line


def test_public_listeners_bind_loopback_by_default(tmp_path: Path) -> None:
    listens = re.findall(r"^\s*listen (\S+);", _local(tmp_path), re.M)
    assert sorted(listens) == [f"127.0.0.1:{p}" for p in (9080, 9081, 9090, 9300)]
    everywhere = re.findall(r"^\s*listen (\S+);", _local(tmp_path, public_bind="0.0.0.0"), re.M)
    assert sorted(everywhere) == ["0.0.0.0:9080", "0.0.0.0:9090", "0.0.0.0:9300", "127.0.0.1:9081"]
    v6 = re.findall(r"^\s*listen (\S+);", _local(tmp_path, public_bind="::"), re.M)
    assert "[::]:9080" in v6 and "127.0.0.1:9081" in v6, "the AI upstream stays on loopback"
    with pytest.raises(ValueError, match="PUBLIC_BIND"):
        _local(tmp_path, public_bind="example.com")


def test_frontend_does_not_serve_dot_files(tmp_path: Path) -> None:
    frontend = _server(_local(tmp_path), "127.0.0.1:9300")
    (pattern,) = re.findall(r"location ~ (\S+) \{", frontend)
    assert "return 404;" in _block(frontend, f"location ~ {pattern}")
    nginx_regex = re.compile(pattern)
    for path in ("/.env", "/.git/config", "/assets/.hidden"):
        assert nginx_regex.search(path), path
    for path in ("/index.html", "/assets/index-3f2a.js", "/config.json"):
        assert not nginx_regex.search(path), path


def test_the_app_reaches_the_gateways_through_its_own_origin(tmp_path: Path) -> None:
    """/ws/ and /api/ on the frontend listener go to the same sticky gateway upstream as
    on the public one, under the same per-address limits: no port in the app, no CORS."""
    conf = _local(tmp_path, sticky="consistent")
    frontend = _server(conf, "127.0.0.1:9300")
    websocket = _block(frontend, "location /ws/")
    for line in (
        "proxy_pass http://ws_gateway;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_read_timeout 3600s;",
    ):
        assert line in websocket, line
    assert "proxy_pass http://ws_gateway;" in _block(frontend, "location /api/")
    assert "hash $remote_addr consistent;" in _block(conf, "upstream ws_gateway")
    for line in ("limit_conn per_ip_conn 256;", "limit_req zone=per_ip_req burst=100 nodelay;"):
        assert line in frontend
    config = _block(frontend, "location = /config.json")
    assert f'root "{tmp_path / "frontend"}";' in config
    assert "try_files /config.json @no_config;" in config
    assert "return 200 '{}';" in _block(frontend, "location @no_config")


def test_the_app_is_served_with_security_and_cache_headers(tmp_path: Path) -> None:
    conf = _local(tmp_path)
    frontend = _server(conf, "127.0.0.1:9300")
    (csp,) = re.findall(r'add_header Content-Security-Policy "([^"]+)" always;', frontend)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"  # no inline or foreign script
    assert directives["img-src"] == "'self' data:"  # model output cannot load other hosts
    assert directives["frame-ancestors"] == "'none'"
    assert "add_header X-Content-Type-Options nosniff always;" in frontend
    # A location's own add_header would drop the server's: only the 429 page has one.
    locations = re.findall(r"\n        location ([^{]+)\{", frontend)
    with_headers = [loc for loc in locations if "add_header" in _block(frontend, f"location {loc}")]
    assert with_headers == ["@rate_limited "]
    cache = _block(conf, "map $uri $frontend_cache")
    assert '~^/assets/     "public, max-age=31536000, immutable";' in cache
    assert 'default        "no-cache";' in cache


def test_public_listener_limits_each_client_address(tmp_path: Path) -> None:
    conf = _local(tmp_path)
    assert "limit_conn_zone $binary_remote_addr zone=per_ip_conn:10m;" in conf
    assert "limit_req_zone $binary_remote_addr zone=per_ip_req:10m rate=20r/s;" in conf
    public = _server(conf, "127.0.0.1:9080")
    for line in (
        "limit_conn per_ip_conn 256;",
        "limit_req zone=per_ip_req burst=100 nodelay;",
        "limit_conn_status 429;",
        "limit_req_status 429;",
        "error_page 429 = @rate_limited;",
    ):
        assert line in public
    refusal = _block(public, "location @rate_limited")
    assert "add_header Retry-After 1 always;" in refusal
    assert '"error": "rate_limited"' in refusal
    # The internal listener (gateway -> worker calls) is not limited per address.
    assert "limit_" not in _server(conf, "127.0.0.1:9081")
