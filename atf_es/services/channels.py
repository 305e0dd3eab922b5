"""gRPC channels between atf-es services, with reconnects fit for heartbeats.

gRPC's default reconnect backoff starts at 1 s and grows by 1.6x up to
120 s: after a peer restarts, a channel may wait that long before trying
again, failing every call meanwhile with ``UNAVAILABLE``. Between services
that is wrong twice over: an executor that cannot reach a restarted HSC
loses 3 heartbeats (300 ms apart in a short policy) and ends itself, and an
executor that cannot reach a restarted Controller sits idle. Channels made
here retry the connection every 100 ms at first and at most every second.
"""

from __future__ import annotations

import grpc

RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


def service_channel(address: str) -> grpc.Channel:
    """An insecure channel to another atf-es service at ``address``."""
    return grpc.insecure_channel(address, options=RECONNECT_OPTIONS)


__all__ = ["RECONNECT_OPTIONS", "service_channel"]
