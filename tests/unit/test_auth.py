"""authenticate (HS256 JWT or dev-token) and token_from_subprotocols."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from services.ws_gateway.auth import DEV_TOKEN, AuthError, authenticate, token_from_subprotocols

pytestmark = pytest.mark.unit

# Long enough for HS512 too, so pyjwt raises no short-key warning (warnings are errors).
SECRET = "s" * 64
OTHER_SECRET = "o" * 64


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 3600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def auth(token: str | None, user_id: str | None = None, *, dev_mode: bool = False) -> str:
    return authenticate(token, user_id, secret=SECRET, dev_mode=dev_mode)


# --- JWT -----------------------------------------------------------------------------


def test_valid_hs256_token_gives_sub() -> None:
    assert auth(hs256(claims())) == "alice"


def test_user_id_param_is_ignored_for_a_jwt() -> None:
    token = hs256(claims(sub="alice"))
    assert auth(token, "mallory") == "alice"
    assert auth(token, "mallory", dev_mode=True) == "alice"


def test_hand_made_hs256_token_is_accepted() -> None:
    """Guards the crafted-token helpers below: a correct signature does pass."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(claims())}"
    sig = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert auth(f"{signing_input}.{b64url(sig)}") == "alice"


def test_expired_token_is_rejected() -> None:
    with pytest.raises(AuthError, match="invalid token"):
        auth(hs256(claims(exp=int(time.time()) - 60)))


def test_missing_exp_is_rejected() -> None:
    with pytest.raises(AuthError):
        auth(hs256({"sub": "alice"}))


def test_missing_sub_is_rejected() -> None:
    with pytest.raises(AuthError):
        auth(hs256(claims(sub=None)))


@pytest.mark.parametrize("sub", [123, ["alice"], {"id": "alice"}, True])
def test_non_string_sub_is_rejected(sub: Any) -> None:
    with pytest.raises(AuthError):
        auth(hs256(claims(sub=sub)))


def test_not_yet_valid_token_is_rejected() -> None:
    with pytest.raises(AuthError):
        auth(hs256(claims(nbf=int(time.time()) + 3600)))


@pytest.mark.parametrize("sig", ["", "AAAA"])
def test_alg_none_token_is_rejected(sig: str) -> None:
    token = f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims())}.{sig}"
    with pytest.raises(AuthError):
        auth(token)


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_rejected(alg: str) -> None:
    token = jwt.encode(claims(), SECRET, algorithm=alg)
    assert jwt.decode(token, SECRET, algorithms=[alg])["sub"] == "alice"  # it is valid
    with pytest.raises(AuthError):
        auth(token)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
def test_asymmetric_alg_header_is_rejected(alg: str) -> None:
    """An RS-style header signed with the shared secret (the key-confusion attack)."""
    signing_input = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims())}"
    sig = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(AuthError):
        auth(f"{signing_input}.{b64url(sig)}")


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(AuthError):
        auth(hs256(claims(), secret=OTHER_SECRET))


def test_tampered_payload_is_rejected() -> None:
    header, _, sig = hs256(claims(sub="alice")).split(".")
    with pytest.raises(AuthError):
        auth(f"{header}.{segment(claims(sub='admin'))}.{sig}")


@pytest.mark.parametrize("token", ["x", "a.b", "a.b.c", "dev-token2", "Bearer dev-token", "..."])
def test_garbage_token_is_rejected(token: str) -> None:
    with pytest.raises(AuthError):
        auth(token, dev_mode=True)


# --- dev-token -----------------------------------------------------------------------


def test_dev_token_in_dev_mode_uses_user_id_param() -> None:
    assert auth(DEV_TOKEN, "test", dev_mode=True) == "test"
    assert DEV_TOKEN == "dev-token"


@pytest.mark.parametrize("user_id", [None, ""])
def test_dev_token_in_dev_mode_defaults_to_dev(user_id: str | None) -> None:
    assert auth(DEV_TOKEN, user_id, dev_mode=True) == "dev"


@pytest.mark.parametrize("user_id", [None, "test"])
def test_dev_token_without_dev_mode_is_rejected(user_id: str | None) -> None:
    with pytest.raises(AuthError, match="AUTH_DEV_MODE"):
        auth(DEV_TOKEN, user_id, dev_mode=False)


@pytest.mark.parametrize("dev_mode", [True, False])
@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_rejected(token: str | None, dev_mode: bool) -> None:
    with pytest.raises(AuthError, match="missing"):
        auth(token, "alice", dev_mode=dev_mode)


# --- user ids ------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["a", "Alice_01", "a.b-c@example.com", "u" * 128])
def test_ordinary_user_ids_are_accepted(user_id: str) -> None:
    assert auth(DEV_TOKEN, user_id, dev_mode=True) == user_id
    assert auth(hs256(claims(sub=user_id))) == user_id


WEIRD_USER_IDS = [
    "u" * 129,
    "a b",
    "a:b",
    "a/b",
    "a*",
    "a\tb",
    "a\nb",
    "\nalice",
    "élan",
    "a\x00b",
    "{a}",
    " ",
]


@pytest.mark.parametrize("user_id", WEIRD_USER_IDS)
def test_weird_user_ids_are_rejected_in_dev_mode(user_id: str) -> None:
    with pytest.raises(AuthError, match="user id"):
        auth(DEV_TOKEN, user_id, dev_mode=True)


@pytest.mark.parametrize("user_id", [*WEIRD_USER_IDS, ""])
def test_weird_user_ids_are_rejected_in_sub(user_id: str) -> None:
    with pytest.raises(AuthError):
        auth(hs256(claims(sub=user_id)))


@pytest.mark.parametrize("via", ["dev-token", "jwt"])
def test_user_id_with_trailing_newline_is_rejected(via: str) -> None:
    token = DEV_TOKEN if via == "dev-token" else hs256(claims(sub="alice\n"))
    with pytest.raises(AuthError):
        auth(token, "alice\n", dev_mode=True)


# --- subprotocols --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subprotocols", "expected"),
    [
        (["bearer", "tok123"], "tok123"),
        (["bearer", "tok123", "extra"], "tok123"),
        (["bearer"], None),
        ([], None),
        (["tok123"], None),
        (["other", "tok123"], None),
        (["tok123", "bearer"], None),
    ],
)
def test_token_from_subprotocols(subprotocols: list[str], expected: str | None) -> None:
    assert token_from_subprotocols(subprotocols) == expected


def test_subprotocol_token_authenticates() -> None:
    token = token_from_subprotocols(["bearer", hs256(claims(sub="bob"))])
    assert auth(token) == "bob"
