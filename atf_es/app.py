"""The SDK for lambda owners: declare lambdas, raise the right errors, read the task.

A lambda is a plain function of one :class:`TaskContext`, registered on an
:class:`App` together with its policy::

    app = App("mailer")

    @app.lambda_("send_email", max_attempts=3, priorities=2)
    def send_email(task: TaskContext) -> bytes | str | None:
        ...

The callback's return value is the task's result (``str`` is stored UTF-8
encoded, ``None`` stores no result). Raising :class:`RetriableError` asks for
another attempt after a backoff, :class:`FatalError` ends the task for good,
and any other exception is treated as the policy's ``default_failure``.

Long callbacks should look at ``task.cancelled`` (or call
``task.check_cancelled()``) between steps: the executor sets it when a
heartbeat learns that the task was cancelled or handed to someone else.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, NamedTuple

from atf_es.config import Settings
from atf_es.events.policy import FailureKind, LambdaPolicy, PolicyError

__all__ = [
    "App",
    "AppLoadError",
    "Callback",
    "FatalError",
    "RegisteredLambda",
    "RetriableError",
    "TaskCancelled",
    "TaskContext",
    "load_app",
]


class RetriableError(Exception):
    """The attempt failed but may succeed later: retry after the policy's backoff."""


class FatalError(Exception):
    """The task can never succeed: stop retrying and record the message."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class TaskCancelled(Exception):  # noqa: N818 (reads as what happened, like CancelledError)
    """Raised by :meth:`TaskContext.check_cancelled` once the task must stop."""


@dataclass(eq=False)
class TaskContext:
    """One attempt of one task, as the callback sees it."""

    task_id: str
    lease: int
    attempt: int
    """Execution attempts before this one: 0 on the first run."""
    lambda_name: str
    collection: str
    priority: int
    payload: bytes
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the task was cancelled, or its lease lost: stop working on it."""

    def check_cancelled(self) -> None:
        """Raise :class:`TaskCancelled` if the work must stop."""
        if self.cancelled.is_set():
            raise TaskCancelled(f"task {self.task_id} (lease {self.lease}) must stop")


Callback = Callable[[TaskContext], bytes | str | None]


class RegisteredLambda(NamedTuple):
    """A lambda as registered on an :class:`App`: unpacks as ``(policy, fn)``."""

    policy: LambdaPolicy
    fn: Callback


# Policy fields a decorator may set, with the types their values must have.
_POLICY_FIELDS = {f.name: f for f in fields(LambdaPolicy) if f.name != "name"}


def _check_value(name: str, value: Any) -> tuple[Any, str | None]:
    """Coerce a policy value where harmless; return it and a problem, if any."""
    default = _POLICY_FIELDS[name].default
    assert default is not MISSING
    if name == "default_failure":
        try:
            return FailureKind(value), None
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in FailureKind)
            return value, f"default_failure must be one of {allowed}, got {value!r}"
    if isinstance(default, bool) or isinstance(value, bool):
        return value, f"{name} must be a number, got {value!r}"
    if isinstance(default, int) and not isinstance(value, int):
        return value, f"{name} must be an integer, got {value!r}"
    if isinstance(default, float) and not isinstance(value, int | float):
        return value, f"{name} must be a number, got {value!r}"
    return value, None


def _policy(name: str, options: Mapping[str, Any]) -> LambdaPolicy:
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key == "name":
            problems.append("name is the decorator's first argument, not a policy field")
            continue
        if key not in _POLICY_FIELDS:
            close = difflib.get_close_matches(key, _POLICY_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"unknown policy field {key!r}{hint}; known fields: {', '.join(_POLICY_FIELDS)}"
            )
            continue
        values[key], problem = _check_value(key, value)
        if problem is not None:
            problems.append(problem)
    if problems:
        raise PolicyError(name, problems)
    return LambdaPolicy(name=name, **values)


class App:
    """A set of lambdas deployed together, as a worker host runs them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lambdas: dict[str, RegisteredLambda] = {}

    def __repr__(self) -> str:
        return f"App({self.name!r}, lambdas={sorted(self._lambdas)})"

    def lambda_(self, name: str, /, **policy: Any) -> Callable[[Callback], Callback]:
        """Register the decorated function as lambda ``name`` with these policy fields.

        The policy is checked here, so a mistake fails at import time with a
        :class:`PolicyError` that lists every problem.
        """
        checked = _policy(name, policy)
        if name in self._lambdas:
            raise ValueError(f"app {self.name!r} already has a lambda named {name!r}")

        def register(fn: Callback) -> Callback:
            if not callable(fn):
                raise TypeError(f"lambda {name!r} must decorate a function, got {fn!r}")
            if name in self._lambdas:
                raise ValueError(f"app {self.name!r} already has a lambda named {name!r}")
            self._lambdas[name] = RegisteredLambda(checked, fn)
            return fn

        return register

    @property
    def lambdas(self) -> Mapping[str, RegisteredLambda]:
        """Every registered lambda by name: ``(policy, fn)``."""
        return MappingProxyType(self._lambdas)

    def define(self, settings: Settings, bootstrap: str) -> None:
        """Publish every lambda's policy to the control topic (and create its queues)."""
        from atf_es.services.control import define_lambda

        define_lambda(settings, bootstrap, *(r.policy for r in self._lambdas.values()))


class AppLoadError(Exception):
    """``module:attribute`` does not name an :class:`App`."""


def load_app(spec: str) -> App:
    """Import ``"package.module:attribute"`` and return the :class:`App` it names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise AppLoadError(
            f"{spec!r} is not 'module:attribute' (for example 'atf_es.examples.demo:app')"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise AppLoadError(
                f"cannot import module {module_name!r}: no module named {exc.name!r} "
                "(is it installed, or is its directory on PYTHONPATH?)"
            ) from exc
        raise AppLoadError(f"importing module {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            apps = sorted(k for k, v in vars(module).items() if isinstance(v, App))
            hint = f"; it has these apps: {', '.join(apps)}" if apps else ""
            raise AppLoadError(f"module {module_name!r} has no attribute {attribute!r}{hint}")
        target = getattr(target, part)
    if not isinstance(target, App):
        raise AppLoadError(
            f"{spec!r} is a {type(target).__name__}, not an atf_es.app.App "
            "(create one with App('name') and decorate lambdas with @app.lambda_)"
        )
    return target
