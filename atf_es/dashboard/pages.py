"""The dashboard's pages as HTML: every value from the services goes through ``escape``."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from urllib.parse import quote, urlencode

from atf_es.client import (
    DeadLetterCount,
    GateInfo,
    HistoryEntry,
    LambdaOverview,
    Overview,
    PeriodicInfo,
    TaskInfo,
)
from atf_es.dashboard.charts import Series, line_chart
from atf_es.events.status import TaskStatus

STATUSES = list(TaskStatus)
_NAV = (
    ("/", "overview", "Overview"),
    ("/gates", "gates", "Gates"),
    ("/dead-letters", "dead-letters", "Dead letters"),
    ("/periodic", "periodic", "Periodic"),
    ("/tasks", "tasks", "Tasks"),
)

STYLE = """
:root { --fg:#1d2430; --muted:#5b6575; --line:#d8dde6; --bg:#f6f7f9; --card:#fff;
  --accent:#2557d6; --ok:#1f8a4c; --warn:#b26a00; --bad:#c0392b; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
  color:var(--fg); background:var(--bg); }
header { background:#18202e; color:#fff; padding:0 24px; display:flex; align-items:center;
  gap:28px; height:52px; }
header .brand { font-weight:700; letter-spacing:.02em; }
header nav a { color:#c9d3e3; text-decoration:none; margin-right:18px; padding:15px 0; }
header nav a.active { color:#fff; border-bottom:2px solid #7aa2ff; }
header form { margin-left:auto; }
header input { padding:5px 8px; border-radius:4px; border:0; width:260px; }
main { padding:20px 24px 40px; max-width:1280px; }
h1 { font-size:20px; margin:0 0 14px; }
h2 { font-size:16px; margin:22px 0 8px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:6px;
  padding:14px 16px; margin-bottom:16px; }
table { border-collapse:collapse; width:100%; background:var(--card); }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line);
  vertical-align:top; }
th { font-weight:600; color:var(--muted); font-size:12px; text-transform:uppercase; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.zero { color:#b8bfca; }
tr.total td { font-weight:600; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12.5px; }
.flash { padding:10px 14px; border-radius:6px; margin-bottom:14px; }
.flash.ok { background:#e6f5ec; border:1px solid #a7dcbc; }
.flash.error { background:#fdecea; border:1px solid #f0b4ad; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px;
  background:#e8ecf3; }
.badge.pause { background:#fff1d6; color:var(--warn); }
.badge.drop { background:#fdecea; color:var(--bad); }
.badge.success { background:#e6f5ec; color:var(--ok); }
.badge.dead_lettered, .badge.fatal_failure { background:#fdecea; color:var(--bad); }
.badge.retriable_failure { background:#fff1d6; color:var(--warn); }
.muted { color:var(--muted); }
.charts { display:flex; flex-wrap:wrap; gap:16px; }
svg.chart { width:560px; max-width:100%; height:auto; background:var(--card);
  border:1px solid var(--line); border-radius:6px; }
svg .plot { fill:#fbfcfd; } svg .grid { stroke:#e4e8ef; }
svg .axis, svg .legend { font-size:10px; fill:var(--muted); }
svg .empty { font-size:12px; fill:#9aa3b2; }
form.inline { display:inline; margin:0; }
button { font:inherit; padding:4px 12px; border-radius:4px; border:1px solid var(--line);
  background:#fff; cursor:pointer; }
button.primary { background:var(--accent); color:#fff; border-color:var(--accent); }
button.danger { color:var(--bad); border-color:#f0b4ad; }
input[type=text], select { font:inherit; padding:4px 8px; border:1px solid var(--line);
  border-radius:4px; }
.timeline { list-style:none; margin:0; padding:0 0 0 18px; border-left:2px solid var(--line); }
.timeline li { position:relative; margin:0 0 14px; padding-left:14px; }
.timeline li::before { content:""; position:absolute; left:-25px; top:5px; width:10px;
  height:10px; border-radius:50%; background:var(--accent); border:2px solid var(--bg); }
.timeline li.redriven::before { background:var(--ok); }
.timeline li.dead_lettered::before, .timeline li.failed::before { background:var(--bad); }
.timeline .when { color:var(--muted); font-size:12px; }
.timeline .kind { font-weight:600; }
dl.fields { display:grid; grid-template-columns:max-content 1fr; gap:4px 18px; margin:0; }
dl.fields dt { color:var(--muted); } dl.fields dd { margin:0; }
pre.error { white-space:pre-wrap; background:#fbf3f2; padding:10px; border-radius:4px;
  margin:6px 0 0; max-height:320px; overflow:auto; }
"""


def when(at_ms: int | None) -> str:
    """An epoch-millisecond time as UTC text; a dash for none."""
    if not at_ms:
        return "-"
    return datetime.fromtimestamp(at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def duration(ms: int) -> str:
    if ms < 1_000:
        return f"{ms} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    if ms < 7_200_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


def task_link(task_id: str) -> str:
    return f'<a class="mono" href="/tasks/{quote(task_id, safe="")}">{escape(task_id)}</a>'


def page(
    title: str,
    active: str,
    body: str,
    *,
    ok: str | None = None,
    error: str | None = None,
    refresh: int | None = None,
) -> str:
    """The whole document: header, navigation, flash messages and ``body``."""
    nav = "".join(
        f'<a href="{href}" class="{"active" if key == active else ""}">{label}</a>'
        for href, key, label in _NAV
    )
    flashes = ""
    if ok:
        flashes += f'<div class="flash ok" role="status">{escape(ok)}</div>'
    if error:
        flashes += f'<div class="flash error" role="alert">{escape(error)}</div>'
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
        f"<title>{escape(title)} · atf-es</title><style>{STYLE}</style></head><body>"
        f'<header><span class="brand">atf-es</span><nav>{nav}</nav>'
        '<form action="/tasks" method="get"><input type="text" name="id" '
        'placeholder="task id" aria-label="task id"></form></header>'
        f"<main><h1>{escape(title)}</h1>{flashes}{body}</main></body></html>"
    )


def error_page(title: str, active: str, message: str) -> str:
    return page(title, active, "", error=message)


def _gate_badge(gate: GateInfo | None) -> str:
    if gate is None:
        return '<span class="badge">open</span>'
    label = "paused" if gate.action == "pause" else "dropping"
    return f'<span class="badge {escape(gate.action)}">{label}</span>'


def _counts_table(found: LambdaOverview) -> str:
    shown = [s for s in STATUSES if any(st is s for (_, st) in found.counts)]
    if not shown:
        return '<p class="muted">no tasks</p>'
    head = "".join(f'<th class="num">{escape(s.value)}</th>' for s in shown)
    rows = []
    for collection in sorted(found.by_collection):
        cells = []
        for status in shown:
            count = found.counts.get((collection, status), 0)
            cells.append(f'<td class="num{" zero" if not count else ""}">{count}</td>')
        rows.append(
            f"<tr><td>{escape(collection)}</td>{''.join(cells)}"
            f'<td class="num">{found.by_collection[collection]}</td></tr>'
        )
    totals = found.by_status
    total_cells = "".join(f'<td class="num">{totals.get(s, 0)}</td>' for s in shown)
    if len(found.by_collection) > 1:
        rows.append(
            f'<tr class="total"><td>all</td>{total_cells}<td class="num">{found.total}</td></tr>'
        )
    return (
        f'<table class="counts"><tr><th>collection</th>{head}<th class="num">total</th></tr>'
        f"{''.join(rows)}</table>"
    )


def overview_page(
    data: Overview, gates: list[GateInfo], *, refresh: int | None, ok: str | None = None
) -> str:
    by_gate = {gate.name: gate for gate in gates}
    end = data.as_of_ms
    start = end - 3_600_000
    if data.sampling_since_ms is not None:
        start = max(start, data.sampling_since_ms - data.sample_interval_ms)
    summary_rows = []
    for name, found in data.lambdas.items():
        totals = found.by_status
        waiting = found.depth[-1].waiting if found.depth else 0
        last = found.latency[-1] if found.latency else None
        summary_rows.append(
            f'<tr><td><a href="#lambda-{escape(name)}">{escape(name)}</a></td>'
            f"<td>{_gate_badge(by_gate.get(name))}</td>"
            f'<td class="num">{found.total}</td>'
            f'<td class="num">{waiting}</td>'
            f'<td class="num">{totals.get(TaskStatus.PROCESSING, 0)}</td>'
            f'<td class="num">{totals.get(TaskStatus.SUCCESS, 0)}</td>'
            f'<td class="num">{totals.get(TaskStatus.DEAD_LETTERED, 0)}</td>'
            f'<td class="num">{duration(last.p95_ms) if last else "-"}</td></tr>'
        )
    toggle = (
        '<a href="/">stop auto-refresh</a>' if refresh else '<a href="/?refresh=5">auto-refresh</a>'
    )
    body = [
        f'<p class="muted">{data.tasks} tasks on the task-events topic · as of {when(end)} · '
        f"samples every {data.sample_interval_ms // 1000} s · {toggle}</p>",
        '<table class="summary"><tr><th>lambda</th><th>gate</th><th class="num">tasks</th>'
        '<th class="num">waiting now</th><th class="num">processing</th>'
        '<th class="num">success</th><th class="num">dead letters</th>'
        '<th class="num">latency p95 (last)</th></tr>',
        "".join(summary_rows) or '<tr><td colspan=8 class="muted">no lambda is defined</td></tr>',
        "</table>",
    ]
    for name, found in data.lambdas.items():
        depth = line_chart(
            f"{name}: queue depth",
            [
                Series("enqueued", "#2557d6", [(p.at_ms, p.enqueued) for p in found.depth]),
                Series("due, not enqueued", "#b26a00", [(p.at_ms, p.due) for p in found.depth]),
            ],
            start,
            end,
            unit="",
        )
        latency = line_chart(
            f"{name}: delivery latency",
            [
                Series("p50", "#1f8a4c", [(p.at_ms, p.p50_ms) for p in found.latency]),
                Series("p95", "#c0392b", [(p.at_ms, p.p95_ms) for p in found.latency]),
            ],
            start,
            end,
            unit="ms",
            empty="no task started in the last hour",
        )
        body.append(
            f'<section class="card lambda" id="lambda-{escape(name)}" '
            f'data-lambda="{escape(name)}"><h2>{escape(name)} {_gate_badge(by_gate.get(name))}'
            f"</h2>{_counts_table(found)}"
            f'<div class="charts" style="margin-top:12px">{depth}{latency}</div></section>'
        )
    return page("Overview", "overview", "".join(body), refresh=refresh, ok=ok)


def _gate_form(lambda_name: str, collection: str | None, action: str, label: str) -> str:
    hidden = f'<input type="hidden" name="lambda" value="{escape(lambda_name)}">'
    if collection is not None:
        hidden += f'<input type="hidden" name="collection" value="{escape(collection)}">'
    css = {"drop": "danger", "pause": "primary"}.get(action, "")
    return (
        f'<form class="inline" method="post" action="/gates">{hidden}'
        f'<input type="hidden" name="action" value="{action}">'
        f'<button type="submit" class="{css}" name="go" '
        f'data-action="{action}" data-lambda="{escape(lambda_name)}">{label}</button></form>'
    )


def gates_page(
    lambdas: list[str], gates: list[GateInfo], *, ok: str | None, error: str | None
) -> str:
    by_gate = {gate.name: gate for gate in gates}
    rows = []
    for name in lambdas:
        gate = by_gate.get(name)
        if gate is None:
            actions = (
                _gate_form(name, None, "pause", "Pause")
                + " "
                + _gate_form(name, None, "drop", "Drop")
            )
            detail = ""
        else:
            actions = _gate_form(name, None, "resume", "Resume")
            if gate.action == "pause":
                actions += " " + _gate_form(name, None, "drop", "Drop")
            detail = (
                f"{escape(gate.reason or '-')} <span class='muted'>by {escape(gate.set_by)}, "
                f"{when(gate.set_at_ms)}</span>"
            )
        rows.append(
            f'<tr data-lambda="{escape(name)}"><td>{escape(name)}</td>'
            f'<td class="state">{_gate_badge(gate)}</td><td>{detail}</td><td>{actions}</td></tr>'
        )
    collection_rows = []
    for gate in gates:
        if gate.collection is None:
            continue
        collection_rows.append(
            f"<tr><td>{escape(gate.name)}</td><td>{_gate_badge(gate)}</td>"
            f"<td>{escape(gate.reason or '-')} <span class='muted'>by {escape(gate.set_by)}, "
            f"{when(gate.set_at_ms)}</span></td>"
            f"<td>{_gate_form(gate.lambda_name, gate.collection, 'resume', 'Resume')}</td></tr>"
        )
    options = "".join(f'<option value="{escape(n)}">{escape(n)}</option>' for n in lambdas)
    body = (
        '<p class="muted">A pause holds a lambda\'s tasks as they become due (nothing is lost); '
        "a drop ends them <code>dropped</code>; running tasks finish either way "
        "(docs/gates.md).</p>"
        '<table class="gates"><tr><th>lambda</th><th>gate</th><th>reason</th><th></th></tr>'
        + ("".join(rows) or '<tr><td colspan=4 class="muted">no lambda is defined</td></tr>')
        + "</table><h2>Collection gates</h2>"
        "<table><tr><th>gate</th><th>state</th><th>reason</th><th></th></tr>"
        + (
            "".join(collection_rows)
            or '<tr><td colspan=4 class="muted">no collection is gated</td></tr>'
        )
        + "</table><h2>Gate a lambda or a collection</h2>"
        '<form class="card" method="post" action="/gates">'
        f'<select name="lambda" aria-label="lambda">{options}</select> '
        '<input type="text" name="collection" placeholder="collection (empty: all)"> '
        '<input type="text" name="reason" placeholder="reason"> '
        '<select name="action" aria-label="action"><option value="pause">pause</option>'
        '<option value="drop">drop</option><option value="resume">resume</option></select> '
        '<button type="submit" class="primary">Apply</button></form>'
    )
    return page("Gates", "gates", body, ok=ok, error=error)


def _first_line(text: str | None, limit: int = 120) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def dead_letters_page(
    lambda_name: str | None,
    counts: dict[str, DeadLetterCount],
    tasks: list[TaskInfo],
    total: int,
    *,
    ok: str | None,
    error: str | None,
) -> str:
    count_rows = []
    for name, count in counts.items():
        collections = ", ".join(f"{escape(c)} {n}" for c, n in count.by_collection.items())
        count_rows.append(
            f'<tr><td><a href="/dead-letters?{urlencode({"lambda": name})}">{escape(name)}</a>'
            f'</td><td class="num">{count.count}</td><td>{collections}</td>'
            f"<td>{when(count.oldest_at_ms)}</td><td>{when(count.newest_at_ms)}</td>"
            '<td><form class="inline" method="post" action="/dead-letters/redrive">'
            f'<input type="hidden" name="lambda" value="{escape(name)}">'
            '<input type="text" name="reason" placeholder="reason" required> '
            f'<button type="submit">Redrive all {count.count}</button></form></td></tr>'
        )
    task_rows = [
        f'<tr class="dead-letter" data-task="{escape(task.task_id)}">'
        f'<td><a class="mono" href="/dead-letters/{quote(task.task_id, safe="")}">'
        f"{escape(task.task_id)}</a></td><td>{escape(task.lambda_name)}</td>"
        f'<td>{escape(task.collection)}</td><td class="num">{task.attempts}</td>'
        f"<td>{when(task.finished_at_ms)}</td><td>{escape(_first_line(task.last_error))}</td></tr>"
        for task in tasks
    ]
    heading = (
        f"Dead letters of {escape(lambda_name)}: {total}"
        if lambda_name
        else f"Dead letters: {total} (oldest first)"
    )
    shown = (
        f'<p class="muted">showing the first {len(tasks)} of {total}</p>'
        if total > len(tasks)
        else ""
    )
    body = (
        '<table class="dl-counts"><tr><th>lambda</th><th class="num">dead letters</th>'
        "<th>by collection</th><th>oldest</th><th>newest</th><th></th></tr>"
        + ("".join(count_rows) or '<tr><td colspan=6 class="muted">no dead letters</td></tr>')
        + f"</table><h2>{heading}</h2>"
        + (' <a href="/dead-letters">all lambdas</a>' if lambda_name else "")
        + '<table class="dead-letters"><tr><th>task</th><th>lambda</th><th>collection</th>'
        '<th class="num">attempts</th><th>dead-lettered</th><th>last error</th></tr>'
        + ("".join(task_rows) or '<tr><td colspan=6 class="muted">none</td></tr>')
        + f"</table>{shown}"
    )
    return page("Dead letters", "dead-letters", body, ok=ok, error=error)


def _task_fields(task: TaskInfo) -> str:
    fields: list[tuple[str, str]] = [
        ("task", f'<span class="mono">{escape(task.task_id)}</span>'),
        ("status", f'<span class="badge {escape(task.status.value)}">{task.status.value}</span>'),
        ("lambda", escape(task.lambda_name)),
        ("collection", escape(task.collection)),
        ("priority", str(task.priority)),
        ("attempts", str(task.attempts)),
        ("created", when(task.created_at_ms)),
        ("scheduled for", when(task.scheduled_at_ms)),
        ("started", when(task.started_at_ms)),
        ("finished", when(task.finished_at_ms)),
    ]
    if task.next_trigger_at_ms is not None:
        fields.append(("next trigger", when(task.next_trigger_at_ms)))
    if task.worker:
        fields.append(("worker", escape(task.worker)))
    if task.held_by:
        fields.append(("held by", f"{escape(task.held_by)} ({escape(task.held_action or '')})"))
    if task.idempotency_key:
        fields.append(("idempotency key", escape(task.idempotency_key)))
    if task.chain_id:
        fields.append(("chain", f"{escape(task.chain_id)} / {escape(task.chain_node or '')}"))
    if task.result is not None:
        fields.append(("result", f"<code>{escape(task.result.decode('utf-8', 'replace'))}</code>"))
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in fields)
    error = (
        f'<h2>Last error</h2><pre class="error">{escape(task.last_error)}</pre>'
        if task.last_error
        else ""
    )
    return f'<div class="card"><dl class="fields">{rows}</dl>{error}</div>'


def _redrive_form(task: TaskInfo) -> str:
    return (
        '<form class="card redrive" method="post" action="/dead-letters/redrive">'
        f'<input type="hidden" name="task_id" value="{escape(task.task_id)}">'
        '<input type="text" name="reason" placeholder="why (kept in the history)" required '
        'aria-label="reason"> '
        '<input type="text" name="by" value="dashboard" aria-label="by"> '
        '<button type="submit" class="primary" name="redrive">Redrive</button>'
        ' <span class="muted">a fresh set of attempts, due at once</span></form>'
    )


def dead_letter_page(task: TaskInfo, *, ok: str | None, error: str | None) -> str:
    body = _task_fields(task)
    if task.status is TaskStatus.DEAD_LETTERED:
        body += _redrive_form(task)
    else:
        body += f'<p class="muted">This task is {escape(task.status.value)}, not dead-lettered.</p>'
    body += f"<p>{task_link(task.task_id)}: full history</p>"
    return page("Dead letter", "dead-letters", body, ok=ok, error=error)


_EVENT_CLASS = {
    "TASK_REDRIVEN": "redriven",
    "TASK_DEAD_LETTERED": "dead_lettered",
    "TASK_FAILED": "failed",
    "TASK_FAILED_FATALLY": "failed",
}


def _entry(entry: HistoryEntry) -> str:
    details = [f"cause: {escape(entry.cause)} {escape(entry.cause_name)}"]
    for label, value in (
        ("lease", entry.lease),
        ("worker", entry.worker),
        ("by", entry.requested_by),
        ("reason", entry.reason),
        ("gate", entry.gate),
    ):
        if value is not None and value != "":
            details.append(f"{label}: {escape(str(value))}")
    if entry.retry_at_ms is not None:
        details.append(f"retry at {when(entry.retry_at_ms)}")
    if entry.deadline_ms is not None:
        details.append(f"deadline {when(entry.deadline_ms)}")
    if entry.run_at_ms is not None:
        details.append(f"run at {when(entry.run_at_ms)}")
    error = f'<pre class="error">{escape(entry.error)}</pre>' if entry.error else ""
    css = _EVENT_CLASS.get(entry.kind, "")
    return (
        f'<li class="{css}" data-kind="{escape(entry.kind)}">'
        f'<div class="when">{when(entry.at_ms)} · +{duration(entry.since_previous_ms)} · '
        f"seq {entry.seq}</div>"
        f'<div><span class="kind">{escape(entry.kind)}</span> → '
        f'<span class="badge {escape(entry.status.value)}">{entry.status.value}</span></div>'
        f'<div class="muted">{" · ".join(details)}</div>{error}</li>'
    )


def task_page(
    task: TaskInfo, history: list[HistoryEntry], *, ok: str | None, error: str | None
) -> str:
    body = _task_fields(task)
    if task.status is TaskStatus.DEAD_LETTERED:
        body += _redrive_form(task)
    body += (
        f"<h2>History ({len(history)} transitions)</h2>"
        f'<ol class="timeline">{"".join(_entry(e) for e in history)}</ol>'
    )
    return page(f"Task {task.task_id}", "tasks", body, ok=ok, error=error)


def task_search_page(*, error: str | None = None) -> str:
    body = (
        '<form class="card" method="get" action="/tasks">'
        '<input type="text" name="id" placeholder="task id" size="50" aria-label="task id" '
        'autofocus> <button type="submit" class="primary">Show</button></form>'
    )
    return page("Tasks", "tasks", body, error=error)


def periodic_page(schedules: list[PeriodicInfo], now_ms: int) -> str:
    rows = []
    for schedule in schedules:
        state = (
            '<span class="badge pause">paused</span>'
            if schedule.paused
            else '<span class="badge success">running</span>'
        )
        rows.append(
            f"<tr><td>{escape(schedule.name)}</td><td>{escape(schedule.lambda_name)}</td>"
            f"<td>{escape(schedule.collection)}</td><td>{escape(schedule.when)}</td>"
            f"<td>{state}</td><td>{when(schedule.next_fire_ms)}</td>"
            f"<td>{escape(schedule.misfire)}</td><td>{escape(schedule.set_by)}, "
            f"{when(schedule.defined_at_ms)}</td></tr>"
        )
    body = (
        f'<p class="muted">as of {when(now_ms)}; each occurrence schedules one task '
        "<code>periodic:&lt;name&gt;:&lt;ms&gt;</code> (docs/periodic.md)</p>"
        "<table><tr><th>name</th><th>lambda</th><th>collection</th><th>when</th>"
        "<th>state</th><th>next</th><th>misfire</th><th>set</th></tr>"
        + ("".join(rows) or '<tr><td colspan=8 class="muted">no periodic schedule</td></tr>')
        + "</table>"
    )
    return page("Periodic schedules", "periodic", body)


__all__ = [
    "dead_letter_page",
    "dead_letters_page",
    "error_page",
    "gates_page",
    "overview_page",
    "page",
    "periodic_page",
    "task_page",
    "task_search_page",
]
