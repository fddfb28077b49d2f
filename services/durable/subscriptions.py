"""Reserved subscription APIs (PROTOCOL.md sections 6-7): `{root}/__ds/...`.

Not implemented yet: every call answers 501.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send


class Subscriptions:
    async def handle(
        self, scope: Scope, receive: Receive, send: Send, user: str, root: str, rest: list[str]
    ) -> tuple[int, str] | None:
        """Serve `{root}/__ds/{rest...}` for `user`; None when it sent a response itself,
        else (status, message) for the caller to send as an error."""
        return 501, "subscriptions are not implemented"

    async def on_append(self, user: str, path: str, before: int, tail: int) -> None:
        """Called after data landed in the user's stream `path` (created, or appended):
        its tail position went from `before` to `tail`. Also called on creation without
        data (before == tail), so a pattern can link a new stream."""
