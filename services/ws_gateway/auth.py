"""Who is connecting: JWT (HS256 only, `exp` required, `sub` = user id), or `dev-token`
when AUTH_DEV_MODE is on."""

from __future__ import annotations

import re

import jwt

DEV_TOKEN = "dev-token"
_USER_ID = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


class AuthError(Exception):
    """The token is missing, invalid or expired (close 4401)."""


def authenticate(
    token: str | None, user_id_param: str | None, *, secret: str, dev_mode: bool
) -> str:
    """Return the user id the token proves; raises AuthError."""
    if not token:
        raise AuthError("missing token")
    if token == DEV_TOKEN:
        if not dev_mode:
            raise AuthError("dev-token is accepted only with AUTH_DEV_MODE=true")
        user_id = user_id_param or "dev"
    else:
        try:
            claims = jwt.decode(
                token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        user_id = claims["sub"]
        if not isinstance(user_id, str):
            raise AuthError("invalid token: sub must be a string")
    if not _USER_ID.fullmatch(user_id):
        raise AuthError("invalid user id")
    return user_id


def token_from_subprotocols(subprotocols: list[str]) -> str | None:
    """Browsers send `Sec-WebSocket-Protocol: bearer, TOKEN`."""
    if len(subprotocols) >= 2 and subprotocols[0] == "bearer":
        return subprotocols[1]
    return None
