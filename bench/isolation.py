"""Isolation: flood lambda A with 50x the tasks of lambda B and see how late B starts.

Two lambdas (``bench/peer_apps/isolation_app.py``), each with its own executor
processes, on one atf-es deployment (``bench/atf_peer.py``: broker, one
processor, HSC, Frontend and Controller, every service its own process). B's
**delivery latency** is ``started_at - scheduled_at`` of each B task, from
the task snapshots on the task-events topic (``started_at`` is the
processor's clock when it recorded the task's first heartbeat; for an
immediate task ``scheduled_at`` is the Frontend's clock when the ``Schedule``
call arrived, for a delayed one its due time). Each scenario runs on fresh
infrastructure:

1. **baseline**: B alone, twice: ``--b-tasks`` immediate tasks offered one
   ``Schedule`` call each at ``--b-rate`` per second ("paced"), then
   ``--b-tasks`` tasks all due at the same moment, scheduled ``--lead``
   seconds ahead ("due at once").
2. **due-flood**: ``--ratio`` x ``--b-tasks`` A tasks and ``--b-tasks`` B
   tasks, all due at the same moment (scheduled ``--lead`` seconds ahead in
   ``ScheduleBatch`` calls). What keeps B apart: the processor's credit of
   ``max_enqueued`` enqueued-but-unclaimed tasks per (lambda, priority), the
   exec topic per (lambda, priority), the Controller's buffer per (lambda,
   priority) and B's own executors. Compared with "baseline, due at once".
3. **schedule-flood**: A's tasks scheduled as fast as the client can
   (``ScheduleBatch`` of ``--a-batch``) while B is offered at ``--b-rate`` as
   in the paced baseline; B's commands share the commands topic, the
   processor and the HSC with A's. Compared with "baseline, paced".
4. **schedule-flood-quota**: the same with a scheduling quota on A
   (``schedule_rate=--quota-rate``, ``schedule_burst=--quota-burst``); the
   flooder resends refused tasks after the larger of the server's
   ``retry_after_ms`` hint and ``--retry-floor-ms``. ``ScheduleBatch``'s
   hint is the wait for one token, so this client retries in a tight loop.
5. **schedule-flood-quota-paced**: the same quota, and a flooder that sends
   at most ``--quota-burst`` tasks per call and, after a refusal, waits until
   the bucket holds as many tokens as it refused (refused / rate): what a
   client honouring the hint would do if the hint of the k-th refused task
   of a batch were the wait for k tokens.

A's throughput is A's tasks finished per second from the moment the flood
began (its due time, or its first ``ScheduleBatch``) to its last finish.

    .venv/bin/python -m bench.isolation [--b-tasks 100] [--ratio 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The repository root is on sys.path only now (for ``python bench/isolation.py``).
from atf_es.broker import ensure_topics  # noqa: E402
from atf_es.client import AtfError, ResourceExhausted, TaskRequest  # noqa: E402
from atf_es.clock import now_ms  # noqa: E402
from atf_es.config import Settings  # noqa: E402
from atf_es.events import Task  # noqa: E402
from atf_es.services.control import define_lambda  # noqa: E402
from atf_es.topics import core_topic_specs  # noqa: E402
from bench.atf_peer import AtfPeer  # noqa: E402
from bench.compare import offer, percentiles  # noqa: E402
from bench.peer_apps.isolation_app import A_SLEEP_ENV, LAMBDA_A, LAMBDA_B, app  # noqa: E402
from bench.peer_apps.ledger import LEDGER_DIR_ENV  # noqa: E402
from bench.peers import read_ledger  # noqa: E402
from torture.run import EventWatcher  # noqa: E402
from torture.system import Service, System  # noqa: E402

APP = "bench.peer_apps.isolation_app:app"
SCENARIOS = (
    "baseline",
    "due-flood",
    "schedule-flood",
    "schedule-flood-quota",
    "schedule-flood-quota-paced",
)
EXECUTOR_READY = re.compile(r"executor: \d+ threads")
PROGRESS_S = 5.0
"""How often a wait prints where it is."""

Say = Callable[[str], None]


@dataclass
class Options:
    b_tasks: int = 100
    ratio: int = 50
    b_rate: float = 5.0
    lead: float = 10.0
    a_executors: int = 2
    a_threads: int = 4
    b_executors: int = 1
    b_threads: int = 4
    partitions: int = 4
    max_enqueued: int = 1_000
    quota_rate: float = 200.0
    quota_burst: int = 200
    a_batch: int = 500
    a_sleep_ms: float = 0.0
    retry_floor_ms: float = 20.0
    timeout: float = 600.0
    atf_env: dict[str, str] = field(default_factory=dict)

    @property
    def a_tasks(self) -> int:
        return self.ratio * self.b_tasks


# -- the deployment ----------------------------------------------------------------


class IsolationPeer(AtfPeer):
    """``AtfPeer`` with lambdas A and B, each served by its own executor processes.

    ``System`` gives every executor the same lambdas; here its executor list
    is filled by hand, one ``Service`` per process, A's and B's apart (they
    are supervised and stopped like ``System``'s own).
    """

    def __init__(self, workdir: Path, options: Options, *, quota: bool) -> None:
        ledger = workdir / "ledger"
        ledger.mkdir(parents=True, exist_ok=True)
        env = {
            "ATF_MAX_ENQUEUED": str(options.max_enqueued),
            A_SLEEP_ENV: f"{options.a_sleep_ms:g}",
            **options.atf_env,
        }
        super().__init__(
            workdir,
            options.a_executors,
            options.a_threads,
            ledger,
            partitions=options.partitions,
            service_env=env,
        )
        self.options = options
        self.quota = quota

    def start(self) -> None:
        o = self.options
        self.broker.start()
        settings = replace(
            Settings(),
            kafka_bootstrap=self.broker.bootstrap,
            topic_prefix="bench",
            partitions=self.partitions,
            data_dir=str(self.workdir / "data"),
            session_timeout_ms=6000,
            max_enqueued=o.max_enqueued,
        )
        ensure_topics(self.broker.bootstrap, core_topic_specs(settings))
        app.define(settings, self.broker.bootstrap)
        if self.quota:
            policy = app.lambdas[LAMBDA_A].policy
            limited = replace(policy, schedule_rate=o.quota_rate, schedule_burst=o.quota_burst)
            define_lambda(settings, self.broker.bootstrap, limited)
        system = System(
            settings,
            self.workdir,
            processors=self.processors,
            executors=0,
            threads=o.a_threads,
            app=APP,
            lambdas=(LAMBDA_A,),
            env={LEDGER_DIR_ENV: str(self.ledger_dir), **self.service_env},
        )
        for lambda_name, count, threads in (
            (LAMBDA_A, o.a_executors, o.a_threads),
            (LAMBDA_B, o.b_executors, o.b_threads),
        ):
            args = [
                "executor",
                APP,
                lambda_name,
                "--threads",
                str(threads),
                "--controller",
                system.controller_address,
                "--hsc",
                system.hsc_address,
            ]
            system.executors += [
                Service(f"executor-{lambda_name}-{i}", args, EXECUTOR_READY, system)
                for i in range(count)
            ]
        self.system = system  # before start: stop() then ends whatever did start
        system.start()
        self.watcher = EventWatcher(settings)
        self.watcher.start()
        probes = [self.schedule(LAMBDA_A, "probe-a"), self.schedule(LAMBDA_B, "probe-b")]
        if self.wait_all(probes, timeout=60) != len(probes):
            raise RuntimeError(f"the probe tasks did not end within 60 s ({self.workdir})")

    def schedule(self, lambda_name: str, key: str, run_at_ms: int | None = None) -> str:
        return self._client().schedule(lambda_name, key.encode(), run_at=run_at_ms)

    def schedule_batch(
        self, lambda_name: str, keys: Sequence[str], run_at_ms: int | None = None
    ) -> tuple[list[str], list[str], float]:
        """One ``ScheduleBatch``: the ids admitted, the keys refused over quota, and the
        largest retry hint among them (seconds). Any other refusal raises."""
        outcomes = self._client().schedule_many(
            TaskRequest(lambda_name, k.encode(), run_at=run_at_ms) for k in keys
        )
        ids: list[str] = []
        refused: list[str] = []
        hint = 0.0
        for key, outcome in zip(keys, outcomes, strict=True):
            if outcome.ok:
                ids.append(outcome.task_id)
            elif isinstance(outcome.error, ResourceExhausted):
                refused.append(key)
                hint = max(hint, outcome.error.retry_after or 0.0)
            else:
                raise RuntimeError(f"{lambda_name}: task {key} refused: {outcome.error}")
        return ids, refused, hint

    def first_starts(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Per task, its times (epoch ms) up to its first start, and when it ended."""
        assert self.watcher is not None
        rows = []
        for task_id in ids:
            history = list(self.watcher.history.get(task_id, ()))
            if not history:
                continue
            snapshots: list[Task] = [task for _, task in history]
            started = next((t for t in snapshots if t.started_at is not None), None)
            last = snapshots[-1]
            rows.append(
                {
                    "key": last.payload.decode(),
                    "scheduled": last.scheduled_at,
                    "enqueued": started.enqueued_at if started else None,
                    "claimed": started.claimed_at if started else None,
                    "started": started.started_at if started else None,
                    "finished": last.finished_at,
                    "status": last.status.name,
                    "attempts": last.attempts,
                }
            )
        return rows


class _StreamB:
    """What ``bench.compare.offer`` drives: one ``Schedule`` of B per call."""

    submit_threads = 8

    def __init__(self, peer: IsolationPeer) -> None:
        self.peer = peer

    def submit(self, key: str, delay_s: float = 0.0) -> object:
        return self.peer.schedule(LAMBDA_B, key)


# -- load --------------------------------------------------------------------------


@dataclass
class Flood:
    """What the A flooder did."""

    ids: list[str] = field(default_factory=list)
    calls: int = 0
    refused: int = 0
    """Tasks answered REPLY_CODE_OVER_QUOTA (each resent later)."""
    errors: list[str] = field(default_factory=list)
    began_ms: int = 0
    ended_ms: int = 0


def schedule_in_batches(
    peer: IsolationPeer,
    lambda_name: str,
    keys: Sequence[str],
    batch: int,
    *,
    run_at_ms: int | None = None,
    floor_s: float = 0.0,
    pace_rate: float = 0.0,
    say: Say | None = None,
) -> Flood:
    """Schedule ``keys`` as fast as the Frontend takes them, resending refused ones.

    After a refusal it waits the largest of the server's hint, ``floor_s`` and,
    with ``pace_rate``, the time that rate takes to refill the refused tokens.
    """
    out = Flood(began_ms=now_ms())
    pending = list(keys)
    reported = 0
    while pending:
        chunk, pending = pending[:batch], pending[batch:]
        out.calls += 1
        try:
            ids, refused, hint = peer.schedule_batch(lambda_name, chunk, run_at_ms)
        except (AtfError, RuntimeError) as exc:  # counted; the run goes on with fewer tasks
            out.errors.append(str(exc).splitlines()[0])
            continue
        out.ids += ids
        out.refused += len(refused)
        if refused:
            pending = refused + pending
            refill = len(refused) / pace_rate if pace_rate > 0 else 0.0
            time.sleep(max(hint, floor_s, refill))  # honouring the quota's retry hint
        if say is not None and len(out.ids) - reported >= 1000:
            reported = len(out.ids)
            say(f"  {lambda_name}: {reported}/{len(keys)} scheduled")
    out.ended_ms = now_ms()
    return out


def wait_done(peer: IsolationPeer, groups: dict[str, list[str]], timeout: float, say: Say) -> None:
    """Until every task of every group has ended (or ``timeout``), saying how far along."""
    assert peer.watcher is not None
    deadline = time.monotonic() + timeout
    last_say = time.monotonic()
    while True:
        done = {name: peer.watcher.done(ids) for name, ids in groups.items()}
        if all(done[name] == len(ids) for name, ids in groups.items()):
            return
        if time.monotonic() > deadline:
            say(f"  timed out after {timeout:g}s: {_progress(done, groups)}")
            return
        if time.monotonic() - last_say >= PROGRESS_S:
            last_say = time.monotonic()
            say(f"  {_progress(done, groups)}")
        time.sleep(0.05)  # polling the events reader; bounded by the deadline


def _progress(done: dict[str, int], groups: dict[str, list[str]]) -> str:
    return ", ".join(f"{name} {done[name]}/{len(ids)} done" for name, ids in groups.items())


# -- figures -----------------------------------------------------------------------


def b_figures(
    peer: IsolationPeer, ids: Sequence[str], submitted_ns: dict[str, int] | None = None
) -> dict[str, Any]:
    """B's delivery (scheduled -> started), its stages, and submit/callback views."""
    rows = peer.first_starts(ids)
    ran = [r for r in rows if r["started"] is not None]
    starts = read_ledger(peer.ledger_dir)
    out: dict[str, Any] = {
        "tasks": len(ids),
        "started": len(ran),
        "retried": sum(1 for r in rows if r["attempts"] > 1),
        "delivery_ms": percentiles([r["started"] - r["scheduled"] for r in ran]),
        "stages_ms": {
            "scheduled_to_enqueued": percentiles([r["enqueued"] - r["scheduled"] for r in ran]),
            "enqueued_to_claimed": percentiles([r["claimed"] - r["enqueued"] for r in ran]),
            "claimed_to_started": percentiles([r["started"] - r["claimed"] for r in ran]),
        },
        "callback_ms": percentiles(
            [starts[r["key"]] / 1e6 - r["scheduled"] for r in ran if r["key"] in starts]
        ),
    }
    if submitted_ns is not None:
        out["submit_to_started_ms"] = percentiles(
            [r["started"] - submitted_ns[r["key"]] / 1e6 for r in ran if r["key"] in submitted_ns]
        )
    return out


def a_figures(peer: IsolationPeer, ids: Sequence[str], began_ms: int) -> dict[str, Any]:
    rows = peer.first_starts(ids)
    finished = [r["finished"] for r in rows if r["finished"] is not None]
    ran = [r for r in rows if r["started"] is not None]
    out: dict[str, Any] = {"tasks": len(ids), "finished": len(finished)}
    if finished:
        seconds = max(1, max(finished) - began_ms) / 1000
        out["seconds"] = round(seconds, 2)
        out["tasks_per_s"] = round(len(finished) / seconds, 1)
    out["delivery_ms"] = percentiles([r["started"] - r["scheduled"] for r in ran])
    return out


# -- scenarios ---------------------------------------------------------------------


def run_paced_b(peer: IsolationPeer, o: Options, prefix: str, say: Say) -> tuple[Any, list[str]]:
    offered = offer(_StreamB(peer), prefix, o.b_rate, o.b_tasks / o.b_rate)  # type: ignore[arg-type]
    ids = [str(h) for h in offered.handles]
    say(
        f"  B: {len(ids)} offered at {o.b_rate:g}/s, {offered.errors} errors, "
        f"generator at worst {offered.behind_s * 1000:.0f} ms behind"
    )
    return offered, ids


def scenario_baseline(peer: IsolationPeer, o: Options, say: Say) -> dict[str, Any]:
    say(f"  paced: {o.b_tasks} B tasks at {o.b_rate:g}/s")
    offered, ids = run_paced_b(peer, o, "b-paced", say)
    wait_done(peer, {"B": ids}, o.timeout, say)
    paced = b_figures(peer, ids, offered.submitted_ns)
    paced["errors"] = offered.errors
    paced["generator_behind_ms"] = round(offered.behind_s * 1000, 1)
    say(f"  paced: B delivery {_fmt(paced['delivery_ms'])}")

    due_at = now_ms() + round(o.lead * 1000)
    say(f"  due at once: {o.b_tasks} B tasks due in {o.lead:g}s")
    keys = [f"b-due-{i}" for i in range(o.b_tasks)]
    b = schedule_in_batches(peer, LAMBDA_B, keys, o.a_batch, run_at_ms=due_at)
    wait_done(peer, {"B": b.ids}, o.timeout + o.lead, say)
    due = b_figures(peer, b.ids)
    due["scheduled_before_due"] = b.ended_ms < due_at
    say(f"  due at once: B delivery {_fmt(due['delivery_ms'])}")
    return {"paced": paced, "due": due}


def scenario_due_flood(peer: IsolationPeer, o: Options, say: Say) -> dict[str, Any]:
    due_at = now_ms() + round(o.lead * 1000)
    say(f"  {o.a_tasks} A and {o.b_tasks} B tasks, all due in {o.lead:g}s")
    a = schedule_in_batches(
        peer, LAMBDA_A, [f"a-{i}" for i in range(o.a_tasks)], o.a_batch, run_at_ms=due_at, say=say
    )
    b = schedule_in_batches(
        peer, LAMBDA_B, [f"b-due-{i}" for i in range(o.b_tasks)], o.a_batch, run_at_ms=due_at
    )
    ahead = (due_at - b.ended_ms) / 1000
    say(f"  all scheduled {ahead:.1f}s before they are due" if ahead > 0 else "  LATE: scheduled")
    wait_done(peer, {"A": a.ids, "B": b.ids}, o.timeout + o.lead, say)
    result = {
        "b": b_figures(peer, b.ids),
        "a": a_figures(peer, a.ids, due_at),
        "scheduled_before_due": ahead > 0,
        "schedule_errors": a.errors + b.errors,
    }
    say(f"  B delivery {_fmt(result['b']['delivery_ms'])}; A {_rate(result['a'])}")
    return result


def scenario_schedule_flood(
    peer: IsolationPeer, o: Options, say: Say, *, quota: bool, paced: bool = False
) -> dict[str, Any]:
    what = f"quota {o.quota_rate:g}/s, burst {o.quota_burst}" if quota else "no quota"
    if paced:
        what += ", a client pacing itself after refusals"
    batch = min(o.a_batch, o.quota_burst) if paced else o.a_batch
    say(f"  {o.a_tasks} A tasks as fast as possible ({what}) while B runs at {o.b_rate:g}/s")
    keys = [f"a-{i}" for i in range(o.a_tasks)]
    flood: list[Flood] = []

    def flooder() -> None:
        flood.append(
            schedule_in_batches(
                peer,
                LAMBDA_A,
                keys,
                batch,
                floor_s=o.retry_floor_ms / 1000,
                pace_rate=o.quota_rate if paced else 0.0,
                say=say,
            )
        )

    thread = threading.Thread(target=flooder, name="flood", daemon=True)
    thread.start()
    offered, ids = run_paced_b(peer, o, "b-paced", say)
    thread.join()
    (a,) = flood
    say(
        f"  A: {len(a.ids)} scheduled in {(a.ended_ms - a.began_ms) / 1000:.1f}s, "
        f"{a.calls} calls, {a.refused} refusals over quota, {len(a.errors)} errors"
    )
    wait_done(peer, {"A": a.ids, "B": ids}, o.timeout, say)
    b = b_figures(peer, ids, offered.submitted_ns)
    b["errors"] = offered.errors
    b["generator_behind_ms"] = round(offered.behind_s * 1000, 1)
    result = {
        "b": b,
        "a": a_figures(peer, a.ids, a.began_ms)
        | {
            "schedule_seconds": round((a.ended_ms - a.began_ms) / 1000, 2),
            "schedule_calls": a.calls,
            "refused_over_quota": a.refused,
            "schedule_errors": a.errors,
        },
        "quota": {"rate": o.quota_rate, "burst": o.quota_burst, "paced_client": paced}
        if quota
        else None,
    }
    say(f"  B delivery {_fmt(b['delivery_ms'])}; A {_rate(result['a'])}")
    return result


def run_scenario(name: str, root: Path, o: Options, say: Say) -> dict[str, Any]:
    quota = name.startswith("schedule-flood-quota")
    peer = IsolationPeer(root / name, o, quota=quota)
    result: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    try:
        began = time.monotonic()
        peer.start()
        say(f"  started in {time.monotonic() - began:.1f}s")
        warm = [
            peer.schedule(lam, f"warm-{lam}-{i}") for lam in (LAMBDA_A, LAMBDA_B) for i in range(10)
        ]
        peer.wait_all(warm, 60)
        if name == "baseline":
            result |= scenario_baseline(peer, o, say)
        elif name == "due-flood":
            result |= scenario_due_flood(peer, o, say)
        else:
            result |= scenario_schedule_flood(
                peer, o, say, quota=quota, paced=name.endswith("paced")
            )
        result["load_after"] = os.getloadavg()[0]
    finally:
        peer.stop()
    return result


# -- report ------------------------------------------------------------------------


def _fmt(p: dict[str, float]) -> str:
    if not p.get("n"):
        return "no samples"
    return (
        f"p50 {p['p50']:g} / p95 {p['p95']:g} / p99 {p['p99']:g} / max {p['max']:g} ms (n={p['n']})"
    )


def _rate(a: dict[str, Any]) -> str:
    return f"{a['finished']}/{a['tasks']} finished, {a.get('tasks_per_s', 0):g} tasks/s"


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: B's delivery per scenario against its baseline, and A's throughput."""
    rows: list[tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]] = []
    base = results.get("baseline", {})
    if "paced" in base:
        rows.append(("baseline: B alone, paced", base["paced"], None, None))
    if "due" in base:
        rows.append(("baseline: B alone, due at once", base["due"], None, None))
    for name, against in (
        ("due-flood", "due"),
        ("schedule-flood", "paced"),
        ("schedule-flood-quota", "paced"),
        ("schedule-flood-quota-paced", "paced"),
    ):
        if name in results and "b" in results[name]:
            rows.append((name, results[name]["b"], base.get(against), results[name]["a"]))
    lines = [
        "| scenario | B scheduled -> started p50 / p95 / p99 / max, ms "
        "| B p95 minus baseline p95, ms | B submit -> started p95, ms "
        "| B enqueued -> claimed p95, ms | A finished, tasks/s | A scheduled in |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, b, baseline, a in rows:
        d = b["delivery_ms"]
        cell = f"{d['p50']:g} / {d['p95']:g} / {d['p99']:g} / {d['max']:g}" if d.get("n") else "-"
        if baseline is not None and d.get("n") and baseline["delivery_ms"].get("n"):
            excess = f"{d['p95'] - baseline['delivery_ms']['p95']:+.0f}"
        else:
            excess = "-"
        submit = b.get("submit_to_started_ms", {}).get("p95", "-")
        claim = b["stages_ms"]["enqueued_to_claimed"].get("p95", "-")
        if a is None:
            done = scheduling = "-"
        else:
            done = f"{a['finished']}/{a['tasks']}, {a.get('tasks_per_s', 0):g}/s"
            scheduling = "ahead of the due time"
            if "schedule_seconds" in a:
                scheduling = f"{a['schedule_seconds']:g} s, {a['schedule_calls']} calls"
                if a["refused_over_quota"]:
                    scheduling += f", {a['refused_over_quota']} refused"
        lines.append(
            f"| {label} | {cell} | {excess} | {submit} | {claim} | {done} | {scheduling} |"
        )
    return "\n".join(lines)


def _tree() -> str:
    """The commit measured, and how many files differ from it (git, read-only)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.splitlines()
    except OSError:
        return "unknown"
    return f"{head or 'unknown'}" + (f" + {len(changed)} changed files" if changed else "")


def main(argv: list[str] | None = None) -> int:
    d = Options()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Scenarios: " + ", ".join(SCENARIOS) + ". See the module docstring.",
    )
    add = parser.add_argument
    add("--scenarios", default=",".join(SCENARIOS), help="comma-separated, in this order")
    add("--b-tasks", type=int, default=d.b_tasks, help="B's tasks per run (N_B)")
    add("--ratio", type=int, default=d.ratio, help="A's tasks = ratio x N_B")
    add("--b-rate", type=float, default=d.b_rate, help="B's paced rate, tasks/s")
    add("--lead", type=float, default=d.lead, help="due-time runs: seconds scheduled ahead")
    add("--a-executors", type=int, default=d.a_executors, help="A's executor processes")
    add("--a-threads", type=int, default=d.a_threads, help="threads per A executor")
    add("--b-executors", type=int, default=d.b_executors, help="B's executor processes")
    add("--b-threads", type=int, default=d.b_threads, help="threads per B executor")
    add("--partitions", type=int, default=d.partitions)
    add("--max-enqueued", type=int, default=d.max_enqueued, help="the processor's max_enqueued")
    add("--quota-rate", type=float, default=d.quota_rate, help="A's schedule_rate, tasks/s")
    add("--quota-burst", type=int, default=d.quota_burst, help="A's schedule_burst")
    add("--a-batch", type=int, default=d.a_batch, help="tasks per ScheduleBatch call")
    add("--a-sleep-ms", type=float, default=d.a_sleep_ms, help="A's task sleeps this long")
    add(
        "--retry-floor-ms",
        type=float,
        default=d.retry_floor_ms,
        help="the flooder waits at least this long before resending refused tasks",
    )
    add("--timeout", type=float, default=d.timeout, help="seconds to wait for a run's tasks")
    add(
        "--atf",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an atf-es setting for every service, e.g. commit_interval_ms=5 (repeatable)",
    )
    add(
        "--workdir",
        type=Path,
        help="an empty directory to keep the services' data and logs in (default: a temp one)",
    )
    add("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        parser.error(f"--workdir {args.workdir} is not empty")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    positive = ("b_tasks", "ratio", "a_executors", "a_threads", "b_executors", "b_threads")
    if any(getattr(args, n) < 1 for n in positive) or args.b_rate <= 0 or args.a_batch < 1:
        parser.error("task counts, rates, executors, threads and --a-batch must be positive")
    if args.a_batch > 1000:
        parser.error("--a-batch: a ScheduleBatch takes at most 1000 tasks")
    atf_env = {}
    for item in args.atf:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--atf takes NAME=VALUE, got {item!r}")
        atf_env[f"ATF_{name.strip().upper()}"] = value.strip()
    o = Options(
        b_tasks=args.b_tasks,
        ratio=args.ratio,
        b_rate=args.b_rate,
        lead=args.lead,
        a_executors=args.a_executors,
        a_threads=args.a_threads,
        b_executors=args.b_executors,
        b_threads=args.b_threads,
        partitions=args.partitions,
        max_enqueued=args.max_enqueued,
        quota_rate=args.quota_rate,
        quota_burst=args.quota_burst,
        a_batch=args.a_batch,
        a_sleep_ms=args.a_sleep_ms,
        retry_floor_ms=args.retry_floor_ms,
        timeout=args.timeout,
        atf_env=atf_env,
    )
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)

    say(
        f"N_B={o.b_tasks}, N_A={o.a_tasks}; A: {o.a_executors} executors x {o.a_threads} "
        f"threads, B: {o.b_executors} x {o.b_threads}; {o.partitions} partitions, "
        f"max_enqueued={o.max_enqueued}"
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="atf-isolation-") as tmp:
        root = args.workdir or Path(tmp)
        for name in scenarios:
            say(f"== {name}")
            try:
                results[name] = run_scenario(name, root, o, say)
            except Exception as exc:  # reported; the other scenarios still run
                say(f"  FAILED: {type(exc).__name__}: {exc}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "python": platform.python_version(),
        "tree": _tree(),
        "seconds": round(time.monotonic() - started, 1),
        "options": asdict(o) | {"a_tasks": o.a_tasks},
    }
    say("")
    print(table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        say(f"figures in {args.json}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
