"""Every Redis key and channel name, built in one place with a configurable prefix.

Call sites never format key strings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The stream entry id of the final record. Chunks use `0-<seq>`, so `1-0` sorts after
#: every chunk, can be written only once, and blocks any chunk written after it.
DONE_ENTRY_ID = "1-0"


def chunk_entry_id(seq: int) -> str:
    """Stream entry id of chunk `seq`."""
    return f"0-{seq}"


def seq_of_entry_id(entry_id: str) -> int:
    """The seq of a chunk entry id; raises ValueError for anything else."""
    ms, _, seq = entry_id.partition("-")
    if ms != "0" or not seq.isascii() or not seq.isdigit():
        raise ValueError(f"not a chunk entry id: {entry_id!r}")
    return int(seq)


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builders; `prefix` isolates deployments and tests sharing one Redis."""

    prefix: str = ""

    # --- sessions (the first two are the seed deployment's registry names) ---------
    def sessions_active(self) -> str:
        """Hash: session id -> owner user id."""
        return f"{self.prefix}sessions:active"

    def user_sessions(self, user_id: str) -> str:
        """Set: the session ids of a user."""
        return f"{self.prefix}sessions:user:{user_id}"

    def session(self, session_id: str) -> str:
        """Hash: the session record (owner, created_at, last_seen, current_message)."""
        return f"{self.prefix}session:{session_id}"

    def session_history(self, session_id: str) -> str:
        """List of JSON history items, capped at HISTORY_MAX."""
        return f"{self.prefix}session:{session_id}:history"

    def session_messages(self, session_id: str) -> str:
        """List of the session's assistant message ids, newest last, capped."""
        return f"{self.prefix}session:{session_id}:messages"

    def session_active(self, session_id: str) -> str:
        """String: the message id of the answer in progress (one at a time)."""
        return f"{self.prefix}session:{session_id}:active"

    def client_msg(self, session_id: str, client_msg_id: str) -> str:
        """String: the message id a client_msg_id was given (retries get the same)."""
        return f"{self.prefix}session:{session_id}:cmsg:{client_msg_id}"

    def session_channel(self, session_id: str) -> str:
        """Pub/sub channel: lifecycle notices for every node holding the session."""
        return f"{self.prefix}chan:session:{session_id}"

    def session_invalidate_channel(self) -> str:
        """Pub/sub channel: session ids whose record changed (L1 invalidation)."""
        return f"{self.prefix}chan:sessions:invalidate"

    # --- messages ---------------------------------------------------------------------
    def message_meta(self, message_id: str) -> str:
        """Hash: session_id, user_id, prompt, status, last_seq, finish_reason, usage."""
        return f"{self.prefix}msg:{message_id}:meta"

    def message_stream(self, message_id: str) -> str:
        """Stream: the chunk cache, entry ids `0-<seq>`, then the final `1-0`."""
        return f"{self.prefix}msg:{message_id}:stream"

    def message_lease(self, message_id: str) -> str:
        """String: the token of the worker generating the message (SET NX PX)."""
        return f"{self.prefix}msg:{message_id}:lease"

    def message_driver(self, message_id: str) -> str:
        """String: the gateway node that drives the message's generation calls."""
        return f"{self.prefix}msg:{message_id}:driver"

    def message_cancel(self, message_id: str) -> str:
        """String: present when the message was cancelled."""
        return f"{self.prefix}msg:{message_id}:cancel"

    # --- nodes ------------------------------------------------------------------------
    def node_wake(self, node_id: str) -> str:
        """Stream a gateway's relay reader also blocks on, to learn of new keys at once."""
        return f"{self.prefix}node:{node_id}:wake"
