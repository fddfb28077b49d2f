"""A second, tuned cluster for the tests that need extreme settings."""

from __future__ import annotations

import pytest

TUNED_ENV = {
    # Answers of 20,000 one-token chunks at full speed: enough to swamp a client.
    "SIM_MIN_TOKENS": "20000",
    "SIM_MAX_TOKENS": "20000",
    "SIM_TOKENS_PER_SECOND": "0",
    "BATCH_MAX_TOKENS": "1",
    "STREAM_MAX_PENDING_CHUNKS": "100",
    "STREAM_BACKPRESSURE_DELAY": "0.2",
    # Give up on an answer nobody can generate after 3 s, not 20.
    "STREAM_RECOVERY_TIMEOUT": "3",
    # Small kernel send buffers, so the backlog has to show in the gateway queue.
    "SOCKET_SEND_BUFFER_BYTES": "16384",
}


@pytest.fixture(scope="session")
def tuned_cluster(cluster_factory):  # type: ignore[no-untyped-def]
    """One gateway, one worker, with TUNED_ENV."""
    return cluster_factory(gateways=1, workers=1, extra_env=TUNED_ENV)
