"""A connection's bounded queue of outgoing frames, with the slow-consumer rule.

Pure: the caller passes the clock. A client whose queue stays at the limit for
longer than the grace period (STREAM_BACKPRESSURE_DELAY), or overflows twice the
limit, must be closed with 4008; it resumes from where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outbox:
    limit: int
    grace: float
    # A list, not a deque: an empty deque takes a 64-slot block (about 700 bytes) on
    # every idle connection; taking a batch off the front of at most 2 * limit
    # pointers is cheap.
    _frames: list[str] = field(default_factory=list)
    _full_since: float | None = None
    too_slow: bool = False

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: str, now: float) -> bool:
        """Queue a frame; returns False once the client is too slow (the frame is dropped)."""
        if self.too_slow:
            return False
        if len(self._frames) >= self.limit:
            if self._full_since is None:
                self._full_since = now
            if len(self._frames) >= 2 * self.limit or now - self._full_since > self.grace:
                self.too_slow = True
                self._frames.clear()
                return False
        self._frames.append(frame)
        if len(self._frames) >= self.limit and self._full_since is None:
            self._full_since = now
        return True

    def check(self, now: float) -> bool:
        """False when the queue has been full for longer than the grace period."""
        if self._full_since is not None and now - self._full_since > self.grace:
            self.too_slow = True
            self._frames.clear()
        return not self.too_slow

    def pop_batch(self, max_frames: int = 64) -> list[str]:
        """Take up to `max_frames` frames to send in one go."""
        batch = self._frames[:max_frames]
        del self._frames[:max_frames]
        if len(self._frames) < self.limit:
            self._full_since = None
        return batch
