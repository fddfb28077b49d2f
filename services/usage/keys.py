"""The usage service's Redis keys: built here only.

Every key of a user's starts with `usage:{u:<user_id>}`, a hash tag, so the totals
and the event ids counted for that user sit in one Redis Cluster slot and
record_usage.lua touches one slot. (An event's user never changes, so deduping per
user is deduping per event.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UsageKeys:
    """Key builders; `prefix` isolates deployments and tests sharing one Redis.

    Raises ValueError for a prefix with `{` or `}` (it would change the hash tag)."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("USAGE_REDIS_KEY_PREFIX must not contain { or } (hash tags)")

    def _user(self, user_id: str) -> str:
        return f"{self.prefix}usage:{{u:{user_id}}}"

    def totals(self, user_id: str) -> str:
        """Hash: prompt_tokens, completion_tokens, answers. No TTL: it is the account."""
        return f"{self._user(user_id)}:totals"

    def seen(self, user_id: str, event_id: str) -> str:
        """String: the event was counted. USAGE_SEEN_TTL_S from when it was."""
        return f"{self._user(user_id)}:seen:{event_id}"
