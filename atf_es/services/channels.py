"""gRPC channels to atf-es services: reconnects fit for heartbeats, TLS and a token.

gRPC's default reconnect backoff starts at 1 s and grows by 1.6x up to
120 s: after a peer restarts, a channel may wait that long before trying
again, failing every call meanwhile with ``UNAVAILABLE``. Between services
that is wrong twice over: an executor that cannot reach a restarted HSC
loses 3 heartbeats (300 ms apart in a short policy) and ends itself, and an
executor that cannot reach a restarted Controller sits idle. Channels made
here retry the connection every 100 ms at first and at most every second.

:class:`Credentials` say how a caller proves who it is (docs/security.md):
``token`` travels as ``authorization: Bearer <token>`` metadata on every
call, and ``tls_ca_file`` (PEM root certificates) makes the channel TLS,
verifying the service's certificate with those roots.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from atf_es.config import Settings

RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)

AUTHORIZATION_KEY = "authorization"
"""The metadata key of the bearer token (lower case, as gRPC requires)."""


class CredentialsError(ValueError):
    """The TLS roots cannot be read; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presents: a bearer token, TLS roots, both or neither."""

    token: str | None = None
    tls_ca_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        return cls(settings.auth_token, settings.tls_ca_file)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTHORIZATION_KEY, f"Bearer {self.token}"),) if self.token else ()

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials with the configured roots; None for a plaintext channel."""
        if self.tls_ca_file is None:
            return None
        try:
            roots = Path(self.tls_ca_file).read_bytes()
        except OSError as exc:
            raise CredentialsError(
                f"cannot read the TLS root certificates {self.tls_ca_file}: {exc.strerror}"
            ) from None
        return grpc.ssl_channel_credentials(root_certificates=roots)


NO_CREDENTIALS = Credentials()


class _Details(
    namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """The details of a call, with the token added to its metadata."""


class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the bearer token to every call of a synchronous channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> _Details:
        return _Details(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any,
                              request: Any) -> Any:  # fmt: skip
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any,
                               request: Any) -> Any:  # fmt: skip
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any,
                               requests: Any) -> Any:  # fmt: skip
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any,
                                requests: Any) -> Any:  # fmt: skip
        return continuation(self._details(details), requests)


def open_channel(
    address: str,
    credentials: Credentials = NO_CREDENTIALS,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A synchronous channel to ``address`` presenting ``credentials``."""
    tls = credentials.channel_credentials()
    channel = (
        grpc.secure_channel(address, tls, options=list(options))
        if tls is not None
        else grpc.insecure_channel(address, options=list(options))
    )
    metadata = credentials.metadata()
    return grpc.intercept_channel(channel, _TokenInterceptor(metadata)) if metadata else channel


class _AsyncTokenInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the bearer token to every call of an asyncio channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*(details.metadata or ()), *self._metadata),
            details.credentials,
            details.wait_for_ready,
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any,
                                    request: Any) -> Any:  # fmt: skip
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any,
                                     request: Any) -> Any:  # fmt: skip
        return await continuation(self._details(client_call_details), request)


def open_async_channel(address: str, credentials: Credentials = NO_CREDENTIALS) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` presenting ``credentials``."""
    tls = credentials.channel_credentials()
    metadata = credentials.metadata()
    interceptors = [_AsyncTokenInterceptor(metadata)] if metadata else None
    if tls is not None:
        return grpc.aio.secure_channel(address, tls, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, interceptors=interceptors)


def service_channel(address: str, credentials: Credentials = NO_CREDENTIALS) -> grpc.Channel:
    """A channel to another atf-es service at ``address``, with fast reconnects."""
    return open_channel(address, credentials, options=RECONNECT_OPTIONS)


__all__ = [
    "AUTHORIZATION_KEY",
    "NO_CREDENTIALS",
    "RECONNECT_OPTIONS",
    "Credentials",
    "CredentialsError",
    "open_async_channel",
    "open_channel",
    "service_channel",
]
