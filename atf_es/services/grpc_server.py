"""A gRPC server shell shared by every service: health checks and reflection on.

Every service gets the same treatment of bad input before its own code runs:

- a request that does not parse as the method's message (random bytes, a
  truncated or foreign message, invalid UTF-8 in a string field) ends in
  ``INVALID_ARGUMENT`` naming the expected message, instead of grpc's own
  ``INTERNAL: Exception deserializing request!``;
- a request larger than ``MAX_MESSAGE_BYTES`` ends in ``RESOURCE_EXHAUSTED``
  (grpc's own check, configured here explicitly);
- a status message is cut to ``MAX_STATUS_CHARS``: a message quoting a huge
  input would otherwise overflow the client's metadata limit, and the client
  would see a transport error instead of the sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from atf_es.metrics import GrpcMetrics
from atf_es.services.auth import OPEN, ServerSecurity

log = logging.getLogger(__name__)

Registration = Callable[[grpc.Server], None]

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest request a service takes: grpc's default, made explicit."""
MAX_STATUS_CHARS = 1_000
"""Status messages are cut to this many characters (see the module doc)."""


def shorten(text: str, limit: int = MAX_STATUS_CHARS) -> str:
    """``text`` cut to ``limit`` characters (and ``2 * limit`` UTF-8 bytes), saying so.

    grpc percent-encodes every non-ASCII byte of a status message, so the
    byte bound keeps even a message of emoji well inside the metadata limit.
    """
    if len(text) <= limit and len(text.encode("utf-8", "replace")) <= 2 * limit:
        return text
    note = f"... [{len(text)} characters, cut]"
    kept = text[: max(0, limit - len(note))]
    while len(kept.encode("utf-8", "replace")) > 2 * limit - len(note):
        kept = kept[: len(kept) * 3 // 4]
    return kept + note


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with ``code`` and a sentence (``context.abort`` raises)."""
    context.abort(code, shorten(message))
    raise AssertionError("grpc's context.abort returned")  # pragma: no cover


class _Malformed:
    """What a request that does not parse deserializes to; the handler refuses it."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _lenient(deserializer: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    expected = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(expected, "full_name", None) or f"the request message of {method}"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Malformed(
                f"the request ({len(data)} bytes) is not a valid {name} message: "
                f"{type(exc).__name__}: {exc}"
            )

    return deserialize


def _checked(request: Any, context: grpc.ServicerContext) -> Any:
    if isinstance(request, _Malformed):
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.message)
    return request


def _checked_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        yield _checked(request, context)


class _MalformedRequests(grpc.ServerInterceptor):  # type: ignore[misc]
    """Answers a request that does not parse with ``INVALID_ARGUMENT`` (see the module doc)."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = _wrap(handler, method)
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    deserializer = _lenient(handler.request_deserializer, method)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: unary_unary(_checked(request, context), context),
            deserializer,
            serializer,
        )
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            lambda request, context: unary_stream(_checked(request, context), context),
            deserializer,
            serializer,
        )
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary
        return grpc.stream_unary_rpc_method_handler(
            lambda requests, context: stream_unary(_checked_stream(requests, context), context),
            deserializer,
            serializer,
        )
    stream_stream = handler.stream_stream
    return grpc.stream_stream_rpc_method_handler(
        lambda requests, context: stream_stream(_checked_stream(requests, context), context),
        deserializer,
        serializer,
    )


class GrpcServer:
    """Serves the given services on ``address``; ``port`` is known after ``start()``."""

    def __init__(
        self,
        name: str,
        address: str,
        registrations: Sequence[Registration],
        service_names: Sequence[str],
        *,
        max_workers: int = 32,
        on_stop: Sequence[Callable[[], None]] = (),
        security: ServerSecurity = OPEN,
    ) -> None:
        """``on_stop``: what to close once the server has stopped (its services' clients);
        ``security``: TLS and access control (:mod:`atf_es.services.auth`)."""
        self.name = name
        self.security = security
        self._on_stop = tuple(on_stop)
        self.address = address
        self._registrations = registrations
        self._service_names = tuple(service_names)
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self.port: int | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers),
            interceptors=[
                GrpcMetrics(self.name),
                *self.security.interceptors(),
                _MalformedRequests(),
            ],
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        for register in self._registrations:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = (
            server.add_secure_port(self.address, self.security.server_credentials())
            if self.security.tls
            else server.add_insecure_port(self.address)
        )
        if port == 0:
            raise OSError(f"{self.name}: cannot listen on {self.address}")
        server.start()
        self.port = port
        self._server = server
        for service in ("", *self._service_names):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "%s serving on port %d%s%s",
            self.name,
            port,
            " with TLS" if self.security.tls else "",
            " with access control" if self.security.authenticator is not None else "",
        )

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving; in-flight calls get ``grace`` seconds. Safe unstarted and twice."""
        server, self._server = self._server, None
        if server is None:
            return
        self._health.enter_graceful_shutdown()
        server.stop(grace).wait(grace + 1)
        for close in self._on_stop:
            close()
