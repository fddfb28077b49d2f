"""deploy/frontend.py: when the app is rebuilt, and its runtime settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deploy.frontend import FrontendError, is_stale, runtime_config, write_config

pytestmark = pytest.mark.unit


def app(tmp_path: Path) -> Path:
    root = tmp_path / "frontend"
    (root / "src" / "core").mkdir(parents=True)
    for name in ("package.json", "package-lock.json", "index.html", "src/core/client.ts"):
        (root / name).write_text("x")
    return root


def touch(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (mtime, mtime))


def test_the_build_is_stale_until_built_and_again_after_any_source_changes(tmp_path: Path) -> None:
    root = app(tmp_path)
    assert is_stale(root)  # never built
    for source in root.rglob("*"):
        if source.is_file():
            os.utime(source, (1000, 1000))
    touch(root / "dist" / "index.html", 2000)
    assert not is_stale(root)
    touch(root / "src" / "core" / "client.ts", 3000)
    assert is_stale(root)
    touch(root / "dist" / "index.html", 4000)
    touch(root / "package-lock.json", 5000)
    assert is_stale(root)
    touch(root / "dist" / "index.html", 6000)
    touch(root / "node_modules" / "x" / "index.js", 7000)  # not a source
    assert not is_stale(root)


def test_runtime_settings_override_the_endpoints() -> None:
    assert runtime_config({}) == {}
    env = {"FRONTEND_WS_URL": "wss://chat.example/ws/chat", "FRONTEND_API_BASE": ""}
    assert runtime_config(env) == {"wsUrl": "wss://chat.example/ws/chat"}
    env["FRONTEND_API_BASE"] = "https://chat.example/api"
    assert runtime_config(env)["apiBase"] == "https://chat.example/api"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FRONTEND_WS_URL", "http://x/ws/chat"),
        ("FRONTEND_WS_URL", "javascript:alert(1)"),
        ("FRONTEND_API_BASE", "ws://x/api"),
        ("FRONTEND_API_BASE", "https://x/ api"),
    ],
)
def test_a_bad_setting_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(FrontendError, match=name):
        runtime_config({name: value})


def test_the_config_file_is_written_and_removed(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"FRONTEND_WS_URL": "ws://127.0.0.1:8080/ws/chat"})
    assert path is not None
    assert json.loads(path.read_text()) == {"wsUrl": "ws://127.0.0.1:8080/ws/chat"}
    assert write_config(tmp_path, {}) is None
    assert not path.exists()
