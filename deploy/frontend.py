"""The browser app: build it (`npm ci && npm run build` in frontend/) when its sources
changed, and write its runtime settings (`config.json`) for nginx to serve.

The build is skipped when `frontend/dist/index.html` is newer than every source file,
so `make deploy` and the browser tests pay for it once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from nginx.render import CHECKOUT, FRONTEND_DIST

FRONTEND = CHECKOUT / "frontend"
#: What the build reads besides src/: a change to any of them means a new build.
_BUILD_INPUTS = (
    "package.json",
    "package-lock.json",
    "index.html",
    "vite.config.ts",
    "tsconfig.json",
)
#: Environment variables that override the app's endpoints (its own origin by default).
CONFIG_SETTINGS = {"FRONTEND_WS_URL": "wsUrl", "FRONTEND_API_BASE": "apiBase"}
_SCHEMES = {"FRONTEND_WS_URL": ("ws://", "wss://"), "FRONTEND_API_BASE": ("http://", "https://")}


class FrontendError(Exception):
    """The app could not be built, or a setting for it is invalid."""


def _sources(root: Path) -> Iterator[Path]:
    for name in _BUILD_INPUTS:
        if (root / name).is_file():
            yield root / name
    for base in ("src", "public"):
        if (root / base).is_dir():
            yield from (p for p in (root / base).rglob("*") if p.is_file())


def is_stale(root: Path = FRONTEND, dist: Path | None = None) -> bool:
    """Whether the build output is missing or older than a source file."""
    built = (dist or root / "dist") / "index.html"
    if not built.is_file():
        return True
    stamp = built.stat().st_mtime
    return any(p.stat().st_mtime > stamp for p in _sources(root))


def _deps_stale(root: Path) -> bool:
    """npm ci is needed: no node_modules, or the lockfile changed since the install."""
    installed = root / "node_modules" / ".package-lock.json"
    lock = root / "package-lock.json"
    return not installed.is_file() or lock.stat().st_mtime > installed.stat().st_mtime


def ensure_built(
    out: Callable[[str], None] = print, root: Path = FRONTEND, dist: Path = FRONTEND_DIST
) -> bool:
    """Build the app if it is stale; returns whether it built. Raises FrontendError."""
    if not (root / "package.json").is_file():
        raise FrontendError(f"no app to build: {root / 'package.json'} is missing")
    if not is_stale(root, dist):
        return False
    npm = shutil.which("npm")
    if npm is None:
        raise FrontendError("npm is not installed (Node.js 20 with npm is needed to build it)")
    steps = [[npm, "run", "build"]]
    if _deps_stale(root):
        steps.insert(0, [npm, "ci", "--no-audit", "--no-fund"])
    for cmd in steps:
        out(f"frontend: {' '.join(cmd[1:])}")
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-3000:]
            raise FrontendError(f"`npm {' '.join(cmd[1:])}` failed in {root}:\n{tail}")
    return True


def runtime_config(environ: Mapping[str, str]) -> dict[str, str]:
    """The app's `config.json` from FRONTEND_WS_URL / FRONTEND_API_BASE (empty: none).
    Raises FrontendError naming a setting whose value is not a ws(s):// or http(s):// URL."""
    config = {}
    for name, key in CONFIG_SETTINGS.items():
        value = environ.get(name, "").strip()
        if not value:
            continue
        if not value.startswith(_SCHEMES[name]) or any(c.isspace() for c in value):
            schemes = " or ".join(_SCHEMES[name])
            raise FrontendError(f"{name} must be a URL starting with {schemes}, not {value!r}")
        config[key] = value
    return config


def write_config(run_dir: Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Write (or remove) run_dir/frontend/config.json; returns its path when written."""
    path = run_dir / "frontend" / "config.json"
    config = runtime_config(environ)
    if not config:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o644)
    return path
