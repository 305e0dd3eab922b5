"""The Frontend's scheduling metrics: tasks accepted and refused, by RPC and lambda.

:func:`counted` wraps ``Schedule``, ``ScheduleBatch`` and ``ScheduleChain``:
it looks at the request's lambdas and at how the call ended (the gRPC code,
or each ``ScheduleBatch`` result's reply code), so the RPCs themselves carry
no metrics code. A lambda the Frontend does not know is counted as
``other``: the name comes from the caller, and a label must stay bounded.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from atf_es import metrics
from atf_es._proto.atf.v1 import common_pb2
from atf_es.events import LambdaPolicy

__all__ = ["counted"]

OTHER = "other"
"""The lambda label of a name that is not a defined lambda."""

# What Schedule would answer for a ScheduleBatch result's reply code.
_BATCH_CODE = {
    common_pb2.REPLY_CODE_UNSPECIFIED: "UNAVAILABLE",
    common_pb2.REPLY_CODE_NOT_FOUND: "NOT_FOUND",
    common_pb2.REPLY_CODE_UNKNOWN_LAMBDA: "NOT_FOUND",
    common_pb2.REPLY_CODE_INVALID: "INVALID_ARGUMENT",
    common_pb2.REPLY_CODE_ALREADY_EXISTS: "ALREADY_EXISTS",
    common_pb2.REPLY_CODE_OVER_QUOTA: "RESOURCE_EXHAUSTED",
}

_scheduled = metrics.Children(metrics.FRONTEND_SCHEDULED)
_errors = metrics.Children(metrics.FRONTEND_SCHEDULE_ERRORS)


class _Policies(Protocol):
    def get(self, lambda_name: str) -> LambdaPolicy | None: ...


class _Service(Protocol):
    @property
    def control(self) -> _Policies: ...


_S = TypeVar("_S", bound=_Service)
_Rpc = Callable[[_S, Any, grpc.ServicerContext], Any]


def _label(service: _Service, lambda_name: str) -> str:
    return lambda_name if service.control.get(lambda_name) is not None else OTHER


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()
    return str(code.name) if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _lambdas(method: str, request: Any) -> list[str]:
    if method == "Schedule":
        return [request.spec.lambda_name]
    if method == "ScheduleBatch":
        return [spec.lambda_name for spec in request.specs]
    return [node.lambda_name for node in request.nodes]


def counted(method: str) -> Callable[[_Rpc[_S]], _Rpc[_S]]:
    """Count the tasks ``method`` (Schedule, ScheduleBatch, ScheduleChain) accepts and refuses.

    Every task counts once: a chain's nodes, a batch's specs. A batch's
    results are counted by their reply codes; a call that fails as a whole
    counts each of its tasks under its gRPC code.
    """

    def wrap(rpc: _Rpc[_S]) -> _Rpc[_S]:
        @functools.wraps(rpc)
        def call(service: _S, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                response = rpc(service, request, context)
            except BaseException:
                code = _code_name(context)
                for name, n in Counter(_lambdas(method, request)).items():
                    _errors(method, _label(service, name), code).inc(n)
                raise
            if method != "ScheduleBatch":
                for name, n in Counter(_lambdas(method, request)).items():
                    _scheduled(method, _label(service, name)).inc(n)
                return response
            outcomes: Counter[tuple[str, str | None]] = Counter()
            for spec, result in zip(request.specs, response.results, strict=False):
                refusal = (
                    None
                    if result.code == common_pb2.REPLY_CODE_OK
                    else _BATCH_CODE.get(result.code, "FAILED_PRECONDITION")
                )
                outcomes[(spec.lambda_name, refusal)] += 1
            for (name, refusal), n in outcomes.items():
                if refusal is None:
                    _scheduled(method, _label(service, name)).inc(n)
                else:
                    _errors(method, _label(service, name), refusal).inc(n)
            return response

        return call

    return wrap
