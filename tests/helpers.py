"""Test helpers shared by every test layer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    message: str = "condition",
    *,
    interval: float = 0.02,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Fails with ``message`` if ``timeout`` seconds pass first. Use this instead
    of fixed sleeps: it is as fast as the system allows and as patient as the
    deadline says.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(interval)
