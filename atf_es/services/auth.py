"""Who may call what: bearer tokens, roles and per-lambda grants (docs/security.md).

A service started with ``auth_tokens_file`` serves only callers that present
a token from that file (``authorization: Bearer <token>`` metadata). The file
is TOML, one ``[[principal]]`` table per caller::

    [[principal]]
    name = "billing"                 # recorded as who cancelled, gated, redrove
    token_sha256 = "9f86d08..."      # or: token = "..." (the digest keeps it off disk)
    roles = ["schedule"]
    lambdas = ["send_invoice"]       # what "schedule" and "read" cover; "*" is every lambda

Roles:

- ``schedule``: schedule tasks of its lambdas (Schedule, ScheduleBatch,
  ScheduleChain), cancel them, and read them (GetTask, History, GetChain,
  Watch);
- ``read``: read tasks of its lambdas, and the operator listings (gates,
  dead letters, periodic schedules);
- ``worker``: the worker protocol (HeartbeatStatus, Controller): executors and
  Controllers;
- ``admin``: everything, on every lambda: gates, redrive, periodic schedules,
  cancelling any task.

Checks happen at three depths. The method decides the roles that may call it
(:data:`METHOD_ROLES`; a method missing there is admin-only, so a new RPC is
closed until someone opens it). The request decides the lambdas a scheduling
call touches, checked before the handler runs. The task decides the rest: a
handler that reads or cancels a task calls :func:`require_lambda` with the
task's lambda once it knows it. Refusals are ``UNAUTHENTICATED`` (no token,
or an unknown one) and ``PERMISSION_DENIED`` (a known caller without the
right), each with a sentence saying what the caller may do instead. Health
checks and reflection stay open, for load balancers and probes.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from atf_es.config import ConfigError, Settings
from atf_es.services.channels import AUTHORIZATION_KEY

log = logging.getLogger(__name__)

ROLES = ("schedule", "read", "worker", "admin")
ALL_LAMBDAS = "*"

_FRONTEND = "/atf.v1.Frontend/"
_ADMIN = "/atf.v1.Admin/"
_SCHEDULE = frozenset({"schedule"})
_READ = frozenset({"schedule", "read"})
_LIST = frozenset({"read"})
_WORKER = frozenset({"worker"})

METHOD_ROLES: Mapping[str, frozenset[str]] = {
    _FRONTEND + "Schedule": _SCHEDULE,
    _FRONTEND + "ScheduleBatch": _SCHEDULE,
    _FRONTEND + "ScheduleChain": _SCHEDULE,
    _FRONTEND + "Cancel": _SCHEDULE,
    _FRONTEND + "GetTask": _READ,
    _FRONTEND + "History": _READ,
    _FRONTEND + "GetChain": _READ,
    _FRONTEND + "Watch": _READ,
    _ADMIN + "ListGates": _LIST,
    _ADMIN + "ListDeadLetters": _LIST,
    _ADMIN + "DeadLetterCounts": _LIST,
    _ADMIN + "ListPeriodic": _LIST,
    _ADMIN + "Overview": _LIST,
    "/atf.v1.HeartbeatStatus/ClaimTask": _WORKER,
    "/atf.v1.HeartbeatStatus/ClaimTasks": _WORKER,
    "/atf.v1.HeartbeatStatus/Heartbeat": _WORKER,
    "/atf.v1.HeartbeatStatus/SetResults": _WORKER,
    "/atf.v1.Controller/NextWork": _WORKER,
}
"""The roles (besides ``admin``) that may call each method; others are admin-only."""

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Methods served without a token: health checks and reflection."""


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller known by its token."""

    name: str
    roles: frozenset[str]
    lambdas: frozenset[str] | None
    """The lambdas ``schedule`` and ``read`` cover; None: every lambda."""

    @property
    def admin(self) -> bool:
        return "admin" in self.roles

    def covers(self, lambda_name: str) -> bool:
        return self.admin or self.lambdas is None or lambda_name in self.lambdas

    def granted(self) -> str:
        if self.admin or self.lambdas is None:
            return "every lambda"
        return ", ".join(map(repr, sorted(self.lambdas))) or "no lambda"


def digest(token: str) -> str:
    """The SHA-256 hex digest a tokens file may hold instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_principals(path: Path) -> dict[str, Principal]:
    """The principals of a tokens file, by token digest. Raises ConfigError naming each problem."""
    where = f"tokens file {path}"
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError([f"The {where} cannot be read: {exc.strerror}."]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"The {where} is not valid TOML: {exc}."]) from None
    entries = data.get("principal")
    unknown = sorted(set(data) - {"principal"})
    problems = [f"{key!r} is not a section of the {where}; use [[principal]]." for key in unknown]
    if not isinstance(entries, list) or not entries:
        problems.append(f"The {where} has no [[principal]] tables.")
        raise ConfigError(problems)
    principals: dict[str, Principal] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries, 1):
        here = f"principal {index} of the {where}"
        if not isinstance(entry, dict):
            problems.append(f"{here} must be a table.")
            continue
        problems.extend(_entry_problems(entry, here))
        name, roles, lambdas = entry.get("name"), entry.get("roles"), entry.get("lambdas")
        token, token_digest = entry.get("token"), entry.get("token_sha256")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{here} needs a name.")
            continue
        here = f"principal {name!r} of the {where}"
        if name in names:
            problems.append(f"{here} is given twice.")
        names.add(name)
        if (token is None) == (token_digest is None):
            problems.append(f"{here} needs exactly one of token and token_sha256.")
            continue
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            problems.append(f"{here}: token must be a string of at least 16 characters.")
            continue
        if token_digest is not None and (
            not isinstance(token_digest, str)
            or len(token_digest) != 64
            or any(c not in "0123456789abcdef" for c in token_digest.lower())
        ):
            problems.append(f"{here}: token_sha256 must be 64 hex digits (sha256sum of the token).")
            continue
        if not isinstance(roles, list) or not roles or not all(r in ROLES for r in roles):
            problems.append(f"{here}: roles must be a non-empty list of {', '.join(ROLES)}.")
            continue
        if lambdas is None and set(roles) <= {"worker", "admin"}:
            lambdas = []
        if lambdas is None:
            problems.append(
                f'{here}: roles schedule and read need lambdas: a list of lambda names, or ["*"] '
                "for every lambda."
            )
            continue
        if not isinstance(lambdas, list) or not all(isinstance(x, str) and x for x in lambdas):
            problems.append(
                f'{here}: lambdas must be a list of lambda names, or ["*"] for every lambda.'
            )
            continue
        key = token_digest.lower() if isinstance(token_digest, str) else digest(str(token))
        if key in principals:
            problems.append(f"{here} has the same token as {principals[key].name!r}.")
            continue
        principals[key] = Principal(
            name,
            frozenset(roles),
            None if ALL_LAMBDAS in lambdas else frozenset(lambdas),
        )
    if problems:
        raise ConfigError(problems)
    return principals


def _entry_problems(entry: Mapping[str, Any], here: str) -> list[str]:
    known = {"name", "token", "token_sha256", "roles", "lambdas"}
    return [
        f"{key!r} is not a key of {here}; known keys are {', '.join(sorted(known))}."
        for key in sorted(set(entry) - known)
    ]


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "atf_principal", default=None
)


def current_principal() -> Principal | None:
    """The caller of the call being served; None when the service has no access control."""
    return _current.get()


def acting_as(claimed: str) -> str:
    """Who to record as having acted: the caller's name, or ``claimed`` without access control."""
    principal = _current.get()
    return principal.name if principal is not None else claimed


def require_lambda(context: grpc.ServicerContext, lambda_name: str, action: str) -> None:
    """End the call with ``PERMISSION_DENIED`` unless the caller covers ``lambda_name``."""
    principal = _current.get()
    if principal is not None and not principal.covers(lambda_name):
        _deny(context, principal, f"may not {action} tasks of lambda {lambda_name!r}")


def scheduler() -> str | None:
    """A new task's ``scheduled_by``: the caller, or None without access control."""
    principal = _current.get()
    return principal.name if principal is not None else None


def require_owner(
    context: grpc.ServicerContext, scheduled_by: str | None, lambda_name: str
) -> None:
    """End the call with ``PERMISSION_DENIED`` unless the caller is an admin or
    scheduled the task itself (``scheduled_by``) and still covers its lambda."""
    principal = _current.get()
    if principal is None or principal.admin:
        return
    if scheduled_by != principal.name:
        owner = f"by {scheduled_by!r}" if scheduled_by is not None else "without a token"
        _deny(context, principal, f"may not cancel a task scheduled {owner} (only admins may)")
    require_lambda(context, lambda_name, "cancel")


def _deny(context: grpc.ServicerContext, principal: Principal, what: str) -> None:
    log.warning("refused %s: %s", principal.name, what)
    context.abort(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{principal.name!r} {what}; its roles are {', '.join(sorted(principal.roles))} "
        f"on {principal.granted()}",
    )


def _lambdas_of(method: str, request: Any) -> tuple[str, Iterable[str]] | None:
    """What a request asks to do, and to which lambdas, known before the handler runs."""
    name = method.rsplit("/", 1)[-1]
    if name == "Schedule":
        return "schedule", (request.spec.lambda_name,)
    if name == "ScheduleBatch":
        return "schedule", (spec.lambda_name for spec in request.specs)
    if name == "ScheduleChain":
        return "schedule", (node.lambda_name for node in request.nodes)
    return None


class Authenticator:
    """Maps tokens to principals and enforces :data:`METHOD_ROLES`."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self._principals = dict(principals)

    @classmethod
    def from_file(cls, path: Path) -> Authenticator:
        return cls(load_principals(path))

    def identify(self, context: grpc.ServicerContext) -> Principal:
        """The caller, or the call ends ``UNAUTHENTICATED``."""
        values = [v for k, v in context.invocation_metadata() or () if k == AUTHORIZATION_KEY]
        if not values:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this service requires a token: send 'authorization: Bearer <token>' "
                "(ATF_AUTH_TOKEN, or Client(token=...))",
            )
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "the authorization metadata must be 'Bearer <token>'",
            )
        wanted = digest(token.strip())
        for key, principal in self._principals.items():
            if hmac.compare_digest(key, wanted):
                return principal
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "the token is not known to this service")
        raise AssertionError("grpc's context.abort returned")  # pragma: no cover

    def authorize(self, method: str, request: Any, context: grpc.ServicerContext) -> Principal:
        principal = self.identify(context)
        if principal.admin:
            return principal
        allowed = METHOD_ROLES.get(method, frozenset())
        if not allowed & principal.roles:
            needed = " or ".join(sorted(allowed | {"admin"}))
            _deny(context, principal, f"may not call {method.lstrip('/')} (it needs {needed})")
        wants = _lambdas_of(method, request) if hasattr(request, "DESCRIPTOR") else None
        if wants is not None:
            action, lambdas = wants
            for lambda_name in lambdas:
                if not principal.covers(lambda_name):
                    _deny(context, principal, f"may not {action} tasks of lambda {lambda_name!r}")
        return principal


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Runs :meth:`Authenticator.authorize` before every handler and records the caller."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._wrap(handler, method)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        authorize = self._authenticator.authorize
        deserializer, serializer = handler.request_deserializer, handler.response_serializer

        def enter(request: Any, context: grpc.ServicerContext) -> None:
            _current.set(authorize(method, request, context))

        if handler.unary_unary is not None:
            unary_unary = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                enter(request, context)
                try:
                    return unary_unary(request, context)
                finally:
                    _current.set(None)

            return grpc.unary_unary_rpc_method_handler(unary, deserializer, serializer)
        if handler.unary_stream is not None:
            unary_stream = handler.unary_stream

            def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                enter(request, context)
                try:
                    yield from unary_stream(request, context)
                finally:
                    _current.set(None)

            return grpc.unary_stream_rpc_method_handler(streaming, deserializer, serializer)
        # No atf-es method streams its requests: such a method gets the method check only.
        if handler.stream_unary is not None:
            stream_unary = handler.stream_unary

            def client_streaming(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                enter(None, context)
                try:
                    return stream_unary(requests, context)
                finally:
                    _current.set(None)

            return grpc.stream_unary_rpc_method_handler(client_streaming, deserializer, serializer)
        stream_stream = handler.stream_stream

        def bidirectional(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            enter(None, context)
            try:
                yield from stream_stream(requests, context)
            finally:
                _current.set(None)

        return grpc.stream_stream_rpc_method_handler(bidirectional, deserializer, serializer)


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """How a service listens: TLS key pair (or plaintext) and who may call (or anyone)."""

    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    authenticator: Authenticator | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerSecurity:
        """Read the TLS files and the tokens file the settings name; ConfigError if unreadable."""
        problems: list[str] = []

        def read(name: str, path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                problems.append(f"{name} {path} cannot be read: {exc.strerror}.")
                return None

        cert = read("tls_cert_file", settings.tls_cert_file)
        key = read("tls_key_file", settings.tls_key_file)
        authenticator = None
        if settings.auth_tokens_file is not None:
            try:
                authenticator = Authenticator.from_file(settings.auth_tokens_file)
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return cls(cert, key, authenticator)

    @property
    def tls(self) -> bool:
        return self.certificate_chain is not None and self.private_key is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.certificate_chain is not None and self.private_key is not None
        return grpc.ssl_server_credentials([(self.private_key, self.certificate_chain)])

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [AuthInterceptor(self.authenticator)] if self.authenticator is not None else []


OPEN = ServerSecurity()
"""Plaintext, and every caller may do everything: the default of a local deployment."""

__all__ = [
    "ALL_LAMBDAS",
    "METHOD_ROLES",
    "OPEN",
    "ROLES",
    "AuthInterceptor",
    "Authenticator",
    "Principal",
    "ServerSecurity",
    "acting_as",
    "current_principal",
    "digest",
    "load_principals",
    "require_lambda",
]
