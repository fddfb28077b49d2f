"""The deploy's JWT secret, and client tokens signed with it.

`make deploy` needs a secret the gateways accept (services refuse an empty, short or
placeholder one, see services/common/safety.py). It takes the first of: JWT_SECRET
given to the cluster (tests), JWT_SECRET in the environment, JWT_SECRET in the
checkout's `.env`, the run dir's `jwt_secret` file; with none of them it generates a
random one into that file (mode 0600). `python -m deploy token USER` resolves the
secret the same way and prints a token for USER.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import jwt
from dotenv import dotenv_values

from deploy.spec import CHECKOUT
from services.common.safety import secret_problems
from services.ws_gateway.auth import AuthError, authenticate

SECRET_FILE = "jwt_secret"
SECRET_BYTES = 32
"""A generated secret: 32 random bytes, written as 64 hex characters."""
DEFAULT_TTL = 3600


class SecretError(ValueError):
    """No usable secret: the message says which setting or file and why."""


def secret_path(run_dir: Path) -> Path:
    return run_dir / SECRET_FILE


def _configured(
    explicit: str | None, environ: Mapping[str, str], dotenv: Path | None
) -> tuple[str, str] | None:
    """(secret, where it came from) from the settings, or None when none sets it."""
    if explicit:
        return explicit, "JWT_SECRET of the cluster spec"
    if environ.get("JWT_SECRET"):
        return environ["JWT_SECRET"], "JWT_SECRET in the environment"
    if dotenv is not None and dotenv.is_file():
        value = dotenv_values(dotenv).get("JWT_SECRET")
        if value:
            return value, f"JWT_SECRET in {dotenv}"
    return None


def resolve_secret(
    run_dir: Path,
    *,
    explicit: str | None = None,
    environ: Mapping[str, str] = os.environ,
    dotenv: Path | Literal["checkout"] | None = "checkout",
    create: bool = False,
) -> tuple[str, str]:
    """(secret, source). With `create`, a missing run-dir secret is generated.

    `dotenv` is the `.env` file to look in ("checkout": the one the nodes read, in the
    checkout they run from; None: none). Raises SecretError for an unsafe secret
    (placeholder, too short) or none at all.
    """
    if dotenv == "checkout":
        dotenv = CHECKOUT / ".env"
    found = _configured(explicit, environ, dotenv)
    path = secret_path(run_dir)
    if found is None and path.exists():
        os.chmod(path, 0o600)
        found = path.read_text().strip(), str(path)
    if found is None:
        if not create:
            raise SecretError(
                f"no JWT secret: set JWT_SECRET, or run `make deploy` first (it writes {path})"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_hex(SECRET_BYTES)
        # O_EXCL: never overwrite a secret another deploy just wrote.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        return secret, f"{path} (generated)"
    secret, source = found
    problems = secret_problems(secret)
    if problems:
        raise SecretError(f"{'; '.join(problems)} (from {source})")
    return secret, source


def mint(secret: str, user: str, ttl: int = DEFAULT_TTL) -> str:
    """An HS256 JWT with `sub` = user and `exp` = now + ttl, as the gateways require.

    Raises ValueError for a user id or ttl the gateway would refuse.
    """
    if ttl <= 0:
        raise ValueError(f"--ttl must be a positive number of seconds, not {ttl}")
    issued = int(time.time())
    token = jwt.encode({"sub": user, "iat": issued, "exp": issued + ttl}, secret, "HS256")
    # The gateway's own check, so that a token printed here is one it accepts.
    try:
        authenticate(token, None, secret=secret, dev_mode=False)
    except AuthError as exc:
        raise ValueError(f"the gateway would refuse a token for {user!r}: {exc}") from exc
    return token
