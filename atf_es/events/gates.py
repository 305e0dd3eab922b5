"""Gates: an operator's hold on a lambda, or on one collection of it.

A gate is ``pause`` (tasks that become due wait, nothing is lost), ``drop``
(tasks that become due end ``dropped``, naming the gate) or ``open`` (what
``resume`` writes: the gate no longer holds anything, and the record says who
opened it). Gates live in the compacted control topic under
``gate/<lambda>`` and ``gate/<lambda>/<collection>``.

A task is covered by its lambda's gate and by its collection's gate; when
both are closed the stronger one applies (``drop`` over ``pause``), so
resuming a collection while its whole lambda is paused releases nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from atf_es.events.policy import COLLECTION_NAME, LAMBDA_NAME

GATE_PREFIX = "gate/"


class GateAction(StrEnum):
    PAUSE = "pause"
    DROP = "drop"
    OPEN = "open"


_STRENGTH = {GateAction.OPEN: 0, GateAction.PAUSE: 1, GateAction.DROP: 2}


class GateError(ValueError):
    """A gate that names no valid lambda or collection."""


@dataclass(frozen=True, slots=True)
class Gate:
    lambda_name: str
    collection: str | None
    """None: the gate covers every collection of the lambda."""
    action: GateAction
    reason: str = ""
    set_by: str = ""
    set_at: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.lambda_name, str) or not LAMBDA_NAME.fullmatch(self.lambda_name):
            raise GateError(
                f"lambda name {self.lambda_name!r} must be 1-100 letters, digits, '_' or '-'"
            )
        if self.collection is not None and not COLLECTION_NAME.fullmatch(self.collection):
            raise GateError(
                f"collection {self.collection!r} must be 1-100 letters, digits, '_', '.' or '-'"
            )

    @property
    def name(self) -> str:
        """``lambda`` or ``lambda/collection``: how events and status name the gate."""
        if self.collection is None:
            return self.lambda_name
        return f"{self.lambda_name}/{self.collection}"

    @property
    def key(self) -> str:
        """The control-topic key."""
        return GATE_PREFIX + self.name

    @property
    def closed(self) -> bool:
        return self.action is not GateAction.OPEN


GateKey = tuple[str, str | None]
"""(lambda_name, collection or None for the whole lambda)."""


def covering(gates: Mapping[GateKey, Gate], lambda_name: str, collection: str) -> Gate | None:
    """The closed gate that holds a task of ``lambda_name``/``collection``, if any."""
    found: Gate | None = None
    for key in ((lambda_name, None), (lambda_name, collection)):
        gate = gates.get(key)
        if gate is None or not gate.closed:
            continue
        if found is None or _STRENGTH[gate.action] > _STRENGTH[found.action]:
            found = gate
    return found


__all__ = ["GATE_PREFIX", "Gate", "GateAction", "GateError", "GateKey", "covering"]
