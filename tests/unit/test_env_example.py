"""`.env.example` lists every setting, with the default the code really has."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.settings import Settings

pytestmark = pytest.mark.unit

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
#: Defaults that depend on the machine (the host name) are shown commented out.
MACHINE_DEFAULTS = {"NODE_ID"}


def documented() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        body = line.removeprefix("# ").strip()
        if "=" in body and body.split("=", 1)[0].isupper():
            name, value = body.split("=", 1)
            values[name] = value
    return values


def test_every_setting_is_documented_with_its_default() -> None:
    docs = documented()
    for name, field in Settings.model_fields.items():
        env = name.upper()
        assert env in docs, f"{env} is missing from .env.example"
        if env in MACHINE_DEFAULTS:
            continue
        default = field.default
        shown = docs[env]
        if isinstance(default, bool):
            assert shown.lower() == str(default).lower(), env
        elif isinstance(default, int | float):
            assert float(shown) == float(default), f"{env}: {shown} != {default}"
        else:
            assert shown == str(default), f"{env}: {shown!r} != {default!r}"


def test_nothing_documented_that_does_not_exist() -> None:
    known = {name.upper() for name in Settings.model_fields}
    assert set(documented()) <= known
