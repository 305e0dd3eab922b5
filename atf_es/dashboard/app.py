"""The dashboard as a raw ASGI application over one gRPC ``Client``.

Every page is made from ``atf.v1.Admin`` and ``atf.v1.Frontend`` answers
(the projections behind them are the only source of truth): nothing is
cached here. The client's calls block, so each runs in a worker thread.

Forms POST and redirect (303) to a page with a one-line result, so a reload
never repeats an action. A POST whose ``Origin`` is another site is refused
(403): the dashboard acts with its own token, and a page elsewhere must not
be able to pause a lambda through a browser that can reach it. A call the
services refuse or cannot answer becomes a page with the services' sentence
and a fitting status (400, 404, 403, 502, 503), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from atf_es.client import (
    AtfError,
    Client,
    DeadLetterFilter,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from atf_es.clock import now_ms
from atf_es.dashboard import pages

log = logging.getLogger(__name__)

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]

MAX_FORM_BYTES = 64 * 1024
DEAD_LETTERS_SHOWN = 200
DASHBOARD_REQUESTER = "dashboard"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    location: str | None = None


def _html(text: str, status: int = 200) -> Response:
    return Response(status, text.encode("utf-8"))


def _redirect(path: str, **flash: str) -> Response:
    query = urlencode({k: v for k, v in flash.items() if v})
    return Response(303, b"", location=f"{path}?{query}" if query else path)


def _json(value: object, status: int = 200) -> Response:
    return Response(status, json.dumps(value, default=str).encode(), "application/json")


class _RefusedError(Exception):
    """A request the dashboard itself refuses (a bad form), with the page's status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_for(error: AtfError) -> int:
    if isinstance(error, InvalidArgument):
        return 400
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Unauthenticated | PermissionDenied):
        return 403
    if isinstance(error, Unavailable):
        return 503
    return 502


class DashboardApp:
    """The ASGI callable. ``client`` is used for every call and closed by ``close``."""

    def __init__(self, client: Client, *, frontend: str) -> None:
        self.client = client
        self.frontend = frontend
        self._routes: dict[tuple[str, str], Callable[[Mapping[str, str]], Awaitable[Response]]] = {
            ("GET", "/"): self._overview,
            ("GET", "/gates"): self._gates,
            ("POST", "/gates"): self._set_gate,
            ("GET", "/dead-letters"): self._dead_letters,
            ("POST", "/dead-letters/redrive"): self._redrive,
            ("GET", "/periodic"): self._periodic,
            ("GET", "/tasks"): self._task_search,
            ("GET", "/api/overview"): self._overview_json,
        }

    def close(self) -> None:
        self.client.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        path: str = scope["path"]
        try:
            params = _query(scope)
            if method == "POST":
                _check_origin(scope)
                params = {**params, **await _form(receive)}
            response = await self._route(method, path, params)
        except _RefusedError as exc:
            response = _html(pages.error_page("Refused", "", str(exc)), exc.status)
        except AtfError as exc:
            response = _html(
                pages.error_page("The services refused", "", self._sentence(exc)),
                _status_for(exc),
            )
        except Exception:
            log.exception("dashboard: %s %s failed", method, path)
            response = _html(
                pages.error_page(
                    "Something went wrong",
                    "",
                    "The dashboard could not make this page; its log has the details.",
                ),
                500,
            )
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; "
             b"img-src 'self' data:; form-action 'self'; frame-ancestors 'none'"),
        ]  # fmt: skip
        if response.location is not None:
            headers.append((b"location", response.location.encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _route(self, method: str, path: str, params: Mapping[str, str]) -> Response:
        handler = self._routes.get((method, path))
        if handler is not None:
            return await handler(params)
        for prefix, page_handler in (
            ("/tasks/", self._task),
            ("/dead-letters/", self._dead_letter),
            ("/api/tasks/", self._task_json),
        ):
            if method == "GET" and path.startswith(prefix) and len(path) > len(prefix):
                return await page_handler(path[len(prefix) :], params)
        if any(path == p for _, p in self._routes):
            return _html(pages.error_page("Not allowed", "", f"{method} is not served here"), 405)
        return _html(pages.error_page("Not found", "", f"there is no page {path}"), 404)

    def _sentence(self, error: AtfError) -> str:
        if isinstance(error, Unavailable):
            return (
                f"The Frontend at {self.frontend} is unavailable or did not answer in time: "
                f"{error.message}"
            )
        return error.message

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(method, *args, **kwargs)

    # -- pages -----------------------------------------------------------

    async def _overview(self, params: Mapping[str, str]) -> Response:
        refresh = 5 if params.get("refresh") else None
        overview, gates = await asyncio.gather(
            self._call(self.client.overview), self._call(self.client.gates)
        )
        return _html(pages.overview_page(overview, gates, refresh=refresh, ok=params.get("ok")))

    async def _overview_json(self, params: Mapping[str, str]) -> Response:
        overview = await self._call(self.client.overview, params.get("lambda") or None)
        return _json(
            {
                "as_of_ms": overview.as_of_ms,
                "sample_interval_ms": overview.sample_interval_ms,
                "sampling_since_ms": overview.sampling_since_ms,
                "tasks": overview.tasks,
                "lambdas": {
                    name: {
                        "by_status": {s.value: n for s, n in found.by_status.items()},
                        "by_collection": found.by_collection,
                        "counts": [
                            {"collection": c, "status": s.value, "count": n}
                            for (c, s), n in found.counts.items()
                        ],
                        "depth": [asdict(point) for point in found.depth],
                        "latency": [asdict(point) for point in found.latency],
                    }
                    for name, found in overview.lambdas.items()
                },
            }
        )

    async def _gates(self, params: Mapping[str, str]) -> Response:
        overview, gates = await asyncio.gather(
            self._call(self.client.overview), self._call(self.client.gates)
        )
        return _html(
            pages.gates_page(
                list(overview.lambdas), gates, ok=params.get("ok"), error=params.get("error")
            )
        )

    async def _set_gate(self, form: Mapping[str, str]) -> Response:
        lambda_name = _required(form, "lambda")
        collection = form.get("collection", "").strip() or None
        reason = form.get("reason", "").strip()
        action = form.get("action", "")
        methods = {
            "pause": self.client.pause,
            "drop": self.client.drop,
            "resume": self.client.resume,
        }
        if action not in methods:
            raise _RefusedError(400, f"action must be pause, drop or resume, got {action!r}")
        name = lambda_name if collection is None else f"{lambda_name}/{collection}"
        try:
            await self._call(
                methods[action], lambda_name, collection, reason=reason, by=DASHBOARD_REQUESTER
            )
        except AtfError as exc:
            return _redirect("/gates", error=f"{action} {name}: {self._sentence(exc)}")
        done = {"pause": "paused", "drop": "dropping", "resume": "resumed"}[action]
        return _redirect("/gates", ok=f"{name} {done}")

    async def _dead_letters(self, params: Mapping[str, str]) -> Response:
        lambda_name = params.get("lambda") or None
        counts, listing = await asyncio.gather(
            self._call(self.client.dead_letter_counts),
            self._call(self.client.dead_letter_page, lambda_name, page_size=DEAD_LETTERS_SHOWN),
        )
        return _html(
            pages.dead_letters_page(
                lambda_name,
                counts,
                listing.tasks,
                listing.total,
                ok=params.get("ok"),
                error=params.get("error"),
            )
        )

    async def _dead_letter(self, task_id: str, params: Mapping[str, str]) -> Response:
        task = await self._call(self.client.get, task_id)
        return _html(pages.dead_letter_page(task, ok=params.get("ok"), error=params.get("error")))

    async def _redrive(self, form: Mapping[str, str]) -> Response:
        reason = _required(form, "reason")
        by = form.get("by", "").strip() or DASHBOARD_REQUESTER
        task_id = form.get("task_id", "").strip()
        lambda_name = form.get("lambda", "").strip()
        if bool(task_id) == bool(lambda_name):
            raise _RefusedError(400, "give a task_id or a lambda to redrive")
        back = f"/tasks/{quote(task_id, safe='')}" if task_id else "/dead-letters"
        target: list[str] | DeadLetterFilter = (
            [task_id] if task_id else DeadLetterFilter(lambda_name)
        )
        try:
            result = await self._call(self.client.redrive, target, reason=reason, by=by)
        except AtfError as exc:
            return _redirect(back, error=f"redrive: {self._sentence(exc)}")
        refused = "; ".join(f"{r.task_id}: {r.code} {r.message}".strip() for r in result.refused)
        if not result.redriven:
            return _redirect(back, error=f"nothing was redriven: {refused or 'no dead letters'}")
        text = f"redriven {len(result.redriven)} of {len(result.replies)} by {by}: {reason}"
        return _redirect(back, ok=text, error=f"not redriven: {refused}" if refused else "")

    async def _periodic(self, params: Mapping[str, str]) -> Response:
        schedules = await self._call(self.client.periodic)
        return _html(pages.periodic_page(schedules, now_ms()))

    async def _task_search(self, params: Mapping[str, str]) -> Response:
        task_id = params.get("id", "").strip()
        if task_id:
            return _redirect(f"/tasks/{quote(task_id, safe='')}")
        return _html(pages.task_search_page())

    async def _task(self, task_id: str, params: Mapping[str, str]) -> Response:
        try:
            task, history = await asyncio.gather(
                self._call(self.client.get, task_id), self._call(self.client.history, task_id)
            )
        except NotFound as exc:
            return _html(pages.task_search_page(error=f"{task_id}: {exc.message}"), 404)
        return _html(pages.task_page(task, history, ok=params.get("ok"), error=params.get("error")))

    async def _task_json(self, task_id: str, params: Mapping[str, str]) -> Response:
        task, history = await asyncio.gather(
            self._call(self.client.get, task_id), self._call(self.client.history, task_id)
        )
        shown = {k: v for k, v in asdict(task).items() if k not in ("payload", "result")}
        shown["status"] = task.status.value
        return _json(
            {
                "task": shown,
                "history": [{**asdict(e), "status": e.status.value} for e in history],
            }
        )


def _query(scope: Scope) -> dict[str, str]:
    raw: bytes = scope.get("query_string", b"")
    return _pairs(raw.decode("latin-1"))


def _pairs(text: str) -> dict[str, str]:
    try:
        parsed = parse_qs(text, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise _RefusedError(400, f"the query is malformed: {exc}") from exc
    return {key: values[-1] for key, values in parsed.items()}


async def _form(receive: Receive) -> dict[str, str]:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _RefusedError(400, "the request ended early")
        body += message.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            raise _RefusedError(413, f"a form must be at most {MAX_FORM_BYTES} bytes")
        if not message.get("more_body", False):
            break
    try:
        return _pairs(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _RefusedError(400, "the form is not UTF-8") from exc


def _check_origin(scope: Scope) -> None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    origin = headers.get("origin")
    if origin is None or (origin == "null" and headers.get("sec-fetch-site") == "same-origin"):
        return
    host = headers.get("host", "")
    if origin.split("://", 1)[-1] != host:
        raise _RefusedError(403, "a form from another site cannot act on this dashboard")


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise _RefusedError(400, f"{name} is required")
    return value


__all__ = ["DashboardApp"]
