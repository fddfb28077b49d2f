"""Safe by default (issue 7): services refuse placeholder secrets and dev mode off
loopback; the deploy binds loopback, generates its secret and mints tokens; Redis is
durable; no token reaches a log line."""

from __future__ import annotations

import io
import logging
import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from deploy.__main__ import main as deploy_main
from deploy.cluster import Cluster, DeployError
from deploy.spec import ClusterSpec
from deploy.supervisor import Binaries, build_processes, render_conf
from deploy.tokens import SecretError, mint, resolve_secret, secret_path
from services.common.safety import (
    install_log_redaction,
    is_loopback,
    redact_tokens,
    secret_problems,
    startup_problems,
)
from services.common.serve import refuse_unsafe
from services.common.settings import Settings
from services.ws_gateway.auth import authenticate

pytestmark = pytest.mark.unit

GOOD = "3f1c" * 16  # 64 hex characters, like a generated secret
BINS = Binaries(nginx="/usr/sbin/nginx", redis_server="/usr/bin/redis-server", tansu="tansu")


def _settings(**values: object) -> Settings:
    """Settings from these values only (no environment variable or .env can leak in
    for the fields given)."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --- the pure check at the services' edge ------------------------------------------------


def test_the_placeholder_default_is_gone() -> None:
    assert Settings.model_fields["jwt_secret"].default == ""
    problems = startup_problems(_settings(jwt_secret=""), "127.0.0.1")
    assert len(problems) == 1 and "JWT_SECRET is not set" in problems[0]


@pytest.mark.parametrize(
    "secret",
    [
        "change-me-in-production",  # the old default
        "change-me",  # compose's old placeholder
        "CHANGE-ME-" + "x" * 40,  # long, but still a placeholder
        "please-change-me-before-going-live-ok",
        "a" * 31,  # one short of 32
        "short",
    ],
)
def test_placeholder_or_short_secrets_are_refused(secret: str) -> None:
    problems = startup_problems(_settings(jwt_secret=secret), "127.0.0.1")
    assert problems and all("JWT_SECRET" in p for p in problems), problems
    assert secret_problems(secret)


@pytest.mark.parametrize("secret", [GOOD, "x" * 32, "Vb1-random_enough_32_characters.."])
def test_random_secrets_of_32_characters_are_accepted(secret: str) -> None:
    assert startup_problems(_settings(jwt_secret=secret), "127.0.0.1") == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_dev_mode_is_allowed_on_loopback(host: str) -> None:
    assert is_loopback(host)
    assert startup_problems(_settings(jwt_secret=GOOD, auth_dev_mode=True), host) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.1.2.3", "192.168.0.9", "gateway-1"])
def test_dev_mode_is_refused_off_loopback(host: str) -> None:
    assert not is_loopback(host)
    (problem,) = startup_problems(_settings(jwt_secret=GOOD, auth_dev_mode=True), host)
    assert "AUTH_DEV_MODE" in problem
    # Without dev mode any bind is fine (compose binds 0.0.0.0 inside its network).
    assert startup_problems(_settings(jwt_secret=GOOD, auth_dev_mode=False), host) == []


def test_every_problem_is_reported_at_once() -> None:
    settings = _settings(
        jwt_secret="change-me",
        auth_dev_mode=True,
        redis_url="redis://:change-me@redis:6379/0",
    )
    problems = startup_problems(settings, "0.0.0.0")
    assert [p.split()[0] for p in problems] == ["JWT_SECRET", "AUTH_DEV_MODE=true", "REDIS_URL"]


def test_refuse_unsafe_exits_non_zero_naming_the_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        refuse_unsafe(_settings(jwt_secret="change-me-in-production"), "127.0.0.1")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("refusing to start: JWT_SECRET is a placeholder"), err
    refuse_unsafe(_settings(jwt_secret=GOOD, auth_dev_mode=True), "127.0.0.1")  # no exit


# --- no token in a log line -----------------------------------------------------------------


def test_redact_tokens() -> None:
    line = '127.0.0.1:5 - "WebSocket /ws/chat?session_id=s&token=eyJh.eyJz.c2ln&user_id=u"'
    assert redact_tokens(line) == (
        '127.0.0.1:5 - "WebSocket /ws/chat?session_id=s&token=[redacted]&user_id=u"'
    )
    assert redact_tokens("/ws/chat?token=dev-token") == "/ws/chat?token=[redacted]"
    assert redact_tokens("GET /x?TOKEN=abc HTTP/1.1") == "GET /x?TOKEN=[redacted] HTTP/1.1"
    assert redact_tokens("no secrets, not even a token here") == (
        "no secrets, not even a token here"
    )
    assert redact_tokens("/ws/chat?session_id=s&csrf_token=keep") == (
        "/ws/chat?session_id=s&csrf_token=keep"
    )


def test_log_records_are_redacted_whatever_the_handler() -> None:
    """uvicorn's handshake line (on `uvicorn.error`, at INFO) passes the path with its
    query string as an argument; the record factory redacts it before any handler."""
    original = logging.getLogRecordFactory()
    stream = io.StringIO()
    logger = logging.getLogger("uvicorn.error.redaction-test")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        install_log_redaction()
        install_log_redaction()  # idempotent: one layer of redaction
        logger.info(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:4242", "/ws/chat?token=SECRET123&x=1"
        )
        logger.info("direct /ws/chat?token=SECRET456")
        logger.info("%(path)s", {"path": "/ws/chat?token=SECRET789"})
    finally:
        logging.setLogRecordFactory(original)
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "SECRET" not in out, out
    assert out.count("token=[redacted]") == 3, out


# --- the deploy: loopback, dev mode, secret, token -----------------------------------------


def test_deploy_binds_loopback_with_dev_mode_by_default(tmp_path: Path) -> None:
    spec = ClusterSpec.from_env({"RUN_DIR": str(tmp_path)})
    assert spec.public_bind == "127.0.0.1"
    assert spec.dev_mode and spec.public_is_loopback
    procs = {p.name: p for p in build_processes(spec, BINS, GOOD)}
    assert procs["gateway-1"].env["AUTH_DEV_MODE"] == "true"
    assert procs["gateway-1"].env["JWT_SECRET"] == GOOD
    assert procs["worker-1"].env["JWT_SECRET"] == GOOD
    # Nodes themselves always listen on loopback.
    assert procs["gateway-1"].command[procs["gateway-1"].command.index("--host") + 1] == (
        "127.0.0.1"
    )


def test_public_bind_off_loopback_turns_dev_mode_off(tmp_path: Path) -> None:
    spec = ClusterSpec.from_env({"RUN_DIR": str(tmp_path), "PUBLIC_BIND": "0.0.0.0"})
    assert not spec.dev_mode
    assert spec.public_host == "127.0.0.1"  # where this machine probes it
    procs = {p.name: p for p in build_processes(spec, BINS, GOOD)}
    assert procs["gateway-2"].env["AUTH_DEV_MODE"] == "false"
    assert procs["nginx"].host == "127.0.0.1"
    with pytest.raises(ValueError, match="PUBLIC_BIND"):
        ClusterSpec.from_env({"RUN_DIR": str(tmp_path), "PUBLIC_BIND": "everywhere"})
    # Browsers on other hosts need their origin allowed.
    origins = "http://chat.example:3000"
    spec = ClusterSpec.from_env({"RUN_DIR": str(tmp_path), "ALLOWED_ORIGINS": origins})
    assert spec.app_env("gateway-1")["ALLOWED_ORIGINS"] == origins


def test_deploy_refuses_dev_mode_on_a_public_bind(tmp_path: Path) -> None:
    environ = {"RUN_DIR": str(tmp_path), "PUBLIC_BIND": "0.0.0.0", "AUTH_DEV_MODE": "true"}
    parsed = ClusterSpec.from_env(environ)
    assert parsed.dev_mode and not parsed.public_is_loopback
    spec = ClusterSpec.on_free_ports(tmp_path, 1, 1, public_bind="0.0.0.0", auth_dev_mode=True)
    lines: list[str] = []
    with pytest.raises(DeployError, match="AUTH_DEV_MODE=true with PUBLIC_BIND=0.0.0.0"):
        Cluster(spec, out=lines.append).up()
    assert not (tmp_path / "supervisord.conf").exists(), "nothing was started"


def test_deploy_refuses_a_placeholder_secret(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(
        tmp_path, 1, 1, extra_env={"JWT_SECRET": "change-me-in-production"}
    )
    with pytest.raises(DeployError, match="JWT_SECRET is a placeholder"):
        Cluster(spec, out=lambda _line: None).up()
    assert not (tmp_path / "supervisord.conf").exists()


def test_deploy_generates_a_private_secret_once(tmp_path: Path) -> None:
    secret, source = resolve_secret(tmp_path, environ={}, dotenv=None, create=True)
    path = secret_path(tmp_path)
    assert source == f"{path} (generated)"
    assert len(secret) == 64 and int(secret, 16) >= 0  # 32 random bytes, hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_problems(secret) == []
    # The next deploy (and the token command) reads the same secret back.
    assert resolve_secret(tmp_path, environ={}, dotenv=None, create=True)[0] == secret
    assert resolve_secret(tmp_path, environ={}, dotenv=None)[0] == secret
    other = resolve_secret(tmp_path / "other", environ={}, dotenv=None, create=True)[0]
    assert other != secret


def test_a_configured_secret_wins_and_is_checked(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"JWT_SECRET={'d' * 40}\n")
    assert resolve_secret(tmp_path, environ={}, dotenv=dotenv)[0] == "d" * 40
    env = {"JWT_SECRET": "e" * 40}
    assert resolve_secret(tmp_path, environ=env, dotenv=dotenv)[0] == "e" * 40
    assert resolve_secret(tmp_path, explicit="f" * 40, environ=env, dotenv=dotenv)[0] == "f" * 40
    assert not secret_path(tmp_path).exists(), "nothing generated when one is configured"
    with pytest.raises(SecretError, match="placeholder.*environment"):
        resolve_secret(tmp_path, environ={"JWT_SECRET": "change-me-in-production"}, dotenv=None)
    with pytest.raises(SecretError, match="no JWT secret"):
        resolve_secret(tmp_path, environ={}, dotenv=None)


def test_mint_makes_a_token_the_gateway_accepts() -> None:
    before = time.time()
    token = mint(GOOD, "alice", ttl=120)
    claims = jwt.decode(token, GOOD, algorithms=["HS256"], options={"require": ["exp", "sub"]})
    assert claims["sub"] == "alice"
    assert before + 119 <= claims["exp"] <= time.time() + 121
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert authenticate(token, "mallory", secret=GOOD, dev_mode=False) == "alice"
    with pytest.raises(ValueError, match="invalid user id"):
        mint(GOOD, "no spaces allowed", ttl=60)
    with pytest.raises(ValueError, match="ttl"):
        mint(GOOD, "alice", ttl=0)


def test_token_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("deploy.tokens.CHECKOUT", tmp_path)  # no .env of the checkout
    assert deploy_main(["token", "bob"]) == 1
    assert "no JWT secret" in capsys.readouterr().err
    secret, _ = resolve_secret(tmp_path, environ={}, dotenv=None, create=True)
    assert deploy_main(["token", "bob", "--ttl", "90"]) == 0
    token = capsys.readouterr().out.strip()
    assert authenticate(token, None, secret=secret, dev_mode=False) == "bob"
    exp = jwt.decode(token, secret, algorithms=["HS256"])["exp"]
    assert time.time() + 85 <= exp <= time.time() + 91
    # JWT_SECRET in the environment wins over the run dir's file.
    monkeypatch.setenv("JWT_SECRET", "9" * 40)
    assert deploy_main(["token", "carol"]) == 0
    token = capsys.readouterr().out.strip()
    assert authenticate(token, None, secret="9" * 40, dev_mode=False) == "carol"


# --- the generated files ------------------------------------------------------------------


def test_redis_is_durable(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(tmp_path, 1, 1)
    (redis,) = [p for p in build_processes(spec, BINS) if p.name == "redis"]
    args = redis.command
    option = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert option["--appendonly"] == "yes"
    assert option["--appendfsync"] == "everysec"
    assert option["--dir"] == str(tmp_path / "redis")
    assert option["--bind"] == "127.0.0.1"


def test_supervisord_creates_files_0640(tmp_path: Path) -> None:
    spec = ClusterSpec.on_free_ports(tmp_path, 1, 1)
    conf = render_conf(spec, build_processes(spec, BINS, GOOD))
    daemon = conf.split("[supervisord]", 1)[1].split("\n\n", 1)[0]
    assert "\numask=027" in daemon
    assert conf.count("\numask=027") == 1 + 5, "the daemon and each of its 5 programs"
    assert (0o666 & ~0o027) == 0o640


def test_secret_holding_files_are_private(tmp_path: Path) -> None:
    spec = ClusterSpec(run_dir=tmp_path, extra_env={"JWT_SECRET": GOOD})
    spec.save()
    assert stat.S_IMODE((tmp_path / "cluster.json").stat().st_mode) == 0o600
    old = tmp_path / "cluster.json"
    old.chmod(0o644)
    spec.save()  # an existing file is tightened, not just rewritten
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert os.access(old, os.R_OK)
