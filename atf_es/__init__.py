"""atf-es: an asynchronous task framework, event-sourced on Kafka.

``atf_es.subscribe(...)`` follows task status events (docs/consumers.md); it
is imported on first use, so ``import atf_es`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atf_es.subscription import subscribe

__all__ = ["subscribe"]


def __getattr__(name: str) -> Any:
    if name == "subscribe":
        from atf_es.subscription import subscribe

        return subscribe
    raise AttributeError(f"module 'atf_es' has no attribute {name!r}")
