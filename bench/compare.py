"""atf-es against Celery and Dramatiq, side by side on this machine, in one run.

Each system runs the same no-op task (it records when it starts, then
returns) with the same number of worker processes and threads, and gets the
same load from the same generator, which runs on this machine too. Systems
run one after the other, each on fresh infrastructure: atf-es on its
embedded broker, Celery and Dramatiq on a Redis server started and stopped
here (Debian's ``redis-server``; installed, with the Python packages, if
missing).

Phases, per system:

1. **burst**: ``--tasks`` immediate tasks scheduled as fast as the client
   allows (atf-es: ``ScheduleBatch`` calls; the peers have no batch call, so
   one ``delay``/``send`` each), timed until every result is observable (the
   peers' result backends; atf-es: the terminal event on ``task-events``).
   Tasks per second of that is the system's maximum.
2. **steady**: for each fraction of that maximum in ``--loads``, tasks
   offered one by one at that rate for ``--seconds``: delivery latency
   (submit → the task starts) and the schedule call's own latency.
3. **delayed**: at the middle load, tasks due ``--delay`` seconds after
   they are submitted: lateness (the task starts minus its due time).

Peak memory is the largest sum of the RSS of the system's processes
(workers and services; the broker or Redis apart) sampled every 0.2 s.

    .venv/bin/python bench/compare.py [--tasks 10000] [--workers 2] [--threads 4]
        [--systems atf-es,celery,dramatiq] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import Peer  # noqa: E402 - the repository root is on sys.path only now

SYSTEMS = ("atf-es", "celery", "dramatiq")


# -- measuring -------------------------------------------------------------------


def rss_bytes(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class MemorySampler:
    """The peak of the summed RSS of a set of processes, sampled every 0.2 s."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_bytes(self._pids()))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    if not values_ms:
        return {"n": 0}
    ordered = sorted(values_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "n": len(ordered),
        "p50": at(0.50),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(ordered[-1], 1),
        "mean": round(statistics.fmean(ordered), 1),
    }


@dataclass
class Offered:
    """What one paced run offered: per key, when its submit began and how long it took."""

    submitted_ns: dict[str, int] = field(default_factory=dict)
    call_ms: list[float] = field(default_factory=list)
    handles: list[object] = field(default_factory=list)
    errors: int = 0
    behind_s: float = 0.0
    """How far the generator fell behind its schedule at worst."""


def offer(
    peer: Peer,
    prefix: str,
    rate: float,
    seconds: float,
    *,
    delay_s: float = 0.0,
) -> Offered:
    """Submit ``rate`` tasks/s for ``seconds``, one call each.

    From ``peer.submit_threads`` threads: one for the peers, whose submit
    only hands the message to Redis (and whose clients are not meant to be
    shared between threads); atf-es's ``Schedule`` answers once the task is
    recorded, so it needs calls in flight to sustain a rate.
    """
    threads = int(getattr(peer, "submit_threads", 1))
    total = max(1, int(rate * seconds))
    out = Offered()
    lock = threading.Lock()
    next_index = 0
    began = time.monotonic() + 0.1

    def work() -> None:
        nonlocal next_index
        while True:
            with lock:
                if next_index >= total:
                    return
                index = next_index
                next_index += 1
            due = began + index / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # pacing the offered load
            key = f"{prefix}-{index}"
            start_ns = time.time_ns()
            lateness = time.monotonic() - due
            try:
                handle = peer.submit(key, delay_s)
            except Exception:  # counted, and the run goes on: the report shows it
                with lock:
                    out.errors += 1
                continue
            took_ms = (time.time_ns() - start_ns) / 1e6
            with lock:
                out.submitted_ns[key] = start_ns
                out.call_ms.append(took_ms)
                out.handles.append(handle)
                out.behind_s = max(out.behind_s, lateness)

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return out


# -- one system ------------------------------------------------------------------


@dataclass
class Options:
    tasks: int
    workers: int
    threads: int
    loads: tuple[float, ...]
    seconds: float
    delay: float
    timeout: float
    atf_env: dict[str, str] = field(default_factory=dict)
    """``ATF_*`` settings for the atf-es services (``--atf KEY=VALUE``)."""
    partitions: int = 4
    """Of atf-es's commands and task-events topics (``--partitions``)."""


def make_peer(name: str, workdir: Path, ledger: Path, options: Options, redis_url: str) -> Peer:
    if name == "atf-es":
        from bench.atf_peer import AtfPeer

        return AtfPeer(
            workdir,
            options.workers,
            options.threads,
            ledger,
            partitions=options.partitions,
            service_env=options.atf_env,
        )
    from bench.peers import CeleryPeer, DramatiqPeer

    cls = CeleryPeer if name == "celery" else DramatiqPeer
    peer: Peer = cls(redis_url, workdir, options.workers, options.threads, ledger)
    return peer


def measure(
    name: str, workdir: Path, options: Options, say: Callable[[str], None]
) -> dict[str, Any]:
    from bench.peers import RedisServer, read_ledger

    ledger = workdir / "ledger"
    ledger.mkdir(parents=True)
    redis = RedisServer(workdir / "redis") if name != "atf-es" else None
    result: dict[str, Any] = {"system": name}
    if redis is not None:
        redis.start()
    peer = make_peer(name, workdir, ledger, options, redis.url if redis else "")
    try:
        began = time.monotonic()
        peer.start()
        say(f"{name}: started in {time.monotonic() - began:.1f}s")
        with MemorySampler(peer.pids) as memory:
            # Warm up: connections, imports, the first fetches.
            warm = [peer.submit(f"warm-{i}") for i in range(200)]
            peer.wait_all(warm, options.timeout)

            keys = [f"burst-{i}" for i in range(options.tasks)]
            began_ns = time.time_ns()
            submit_many = getattr(peer, "submit_many", None)
            if submit_many is not None:
                handles = list(submit_many(keys))
            else:
                handles = [peer.submit(k) for k in keys]
            submitted = (time.time_ns() - began_ns) / 1e9
            done = peer.wait_all(handles, options.timeout)
            took = (time.time_ns() - began_ns) / 1e9
            maximum = done / took
            result["burst"] = {
                "tasks": options.tasks,
                "done": done,
                "seconds": round(took, 2),
                "submit_seconds": round(submitted, 2),
                "tasks_per_s": round(maximum, 1),
            }
            say(
                f"{name}: burst {done}/{options.tasks} in {took:.1f}s = {maximum:.0f} tasks/s "
                f"(submitting took {submitted:.1f}s)"
            )

            steady: list[dict[str, Any]] = []
            for fraction in options.loads:
                rate = max(1.0, fraction * maximum)
                offered = offer(peer, f"load{fraction}", rate, options.seconds)
                done = peer.wait_all(offered.handles, options.timeout)
                starts = read_ledger(ledger)
                delivery = [
                    (starts[k] - at) / 1e6 for k, at in offered.submitted_ns.items() if k in starts
                ]
                row = {
                    "fraction": fraction,
                    "rate": round(rate, 1),
                    "offered": len(offered.submitted_ns),
                    "done": done,
                    "errors": offered.errors,
                    "generator_behind_s": round(offered.behind_s, 3),
                    "delivery_ms": percentiles(delivery),
                    "schedule_call_ms": percentiles(offered.call_ms),
                    "delivery_samples": sorted(delivery),
                }
                steady.append(row)
                say(
                    f"{name}: {fraction:.0%} load ({rate:.0f}/s): delivery "
                    f"{_fmt(row['delivery_ms'])}; schedule call {_fmt(row['schedule_call_ms'])}"
                )
            result["steady"] = steady

            middle = options.loads[len(options.loads) // 2]
            rate = max(1.0, middle * maximum)
            offered = offer(peer, "delayed", rate, options.seconds, delay_s=options.delay)
            done = peer.wait_all(offered.handles, options.timeout + options.delay)
            starts = read_ledger(ledger)
            lateness = [
                (starts[k] - at) / 1e6 - options.delay * 1000
                for k, at in offered.submitted_ns.items()
                if k in starts
            ]
            result["delayed"] = {
                "fraction": middle,
                "rate": round(rate, 1),
                "delay_s": options.delay,
                "offered": len(offered.submitted_ns),
                "done": done,
                "lateness_ms": percentiles(lateness),
                "early": sum(1 for x in lateness if x < 0),
                "lateness_samples": sorted(lateness),
            }
            say(
                f"{name}: delayed {options.delay:g}s at {rate:.0f}/s: lateness "
                f"{_fmt(result['delayed']['lateness_ms'])}"
            )
        result["peak_rss_mb"] = round(memory.peak / 2**20, 1)
        say(f"{name}: peak RSS {result['peak_rss_mb']} MB")
    finally:
        peer.stop()
        if redis is not None:
            redis.stop()
    return result


def _fmt(p: dict[str, float]) -> str:
    if not p.get("n"):
        return "no samples"
    return f"p50 {p['p50']} / p95 {p['p95']} / p99 {p['p99']} ms (n={p['n']})"


# -- the report ------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: each figure per system, and atf-es / peer ratios."""
    by = {r["system"]: r for r in results}
    names = [n for n in SYSTEMS if n in by]
    peers = [n for n in names if n != "atf-es"]
    header = [
        "figure",
        "better",
        *names,
        *(f"atf-es / {p}" for p in peers if "atf-es" in by),
    ]
    rows: list[list[str]] = []

    def add(label: str, get: Callable[[dict[str, Any]], float | None], better: str) -> None:
        values = {n: get(by[n]) for n in names}
        cells = [
            label,
            better,
            *(("-" if values[n] is None else f"{values[n]:g}") for n in names),
        ]
        if "atf-es" in by:
            mine = values["atf-es"]
            for p in peers:
                theirs = values[p]
                cells.append("-" if not mine or not theirs else f"{mine / theirs:.2f}x")
        rows.append(cells)

    def steady(fraction_index: int, what: str, q: str) -> Callable[[dict[str, Any]], float | None]:
        def get(r: dict[str, Any]) -> float | None:
            rows_ = r.get("steady") or []
            if fraction_index >= len(rows_):
                return None
            value = rows_[fraction_index][what].get(q)
            return None if value is None else float(value)

        return get

    add("burst throughput, tasks/s", lambda r: r["burst"]["tasks_per_s"], "higher")
    first = results[0].get("steady") or []
    for i, row in enumerate(first):
        pct = f"{row['fraction']:.0%}"
        for q in ("p50", "p95", "p99"):
            add(f"delivery {q} at {pct} load, ms", steady(i, "delivery_ms", q), "lower")
    middle = len(first) // 2
    for q in ("p50", "p99"):
        add(
            f"schedule call {q} at {first[middle]['fraction']:.0%} load, ms",
            steady(middle, "schedule_call_ms", q),
            "lower",
        )
    for q in ("p50", "p95", "p99"):
        add(
            f"delayed lateness {q}, ms",
            lambda r, q=q: r["delayed"]["lateness_ms"].get(q),
            "lower",
        )
    add("peak RSS of the system's processes, MB", lambda r: r["peak_rss_mb"], "lower")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def _without_samples(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    out["steady"] = [
        {k: v for k, v in row.items() if k != "delivery_samples"}
        for row in result.get("steady", [])
    ]
    if "delayed" in result:
        out["delayed"] = {k: v for k, v in result["delayed"].items() if k != "lateness_samples"}
    return out


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [row["fraction"] for row in results[0].get("steady", [])]
    fig, axes = plt.subplots(1, len(loads) + 1, figsize=(5 * (len(loads) + 1), 4), squeeze=False)
    for i, fraction in enumerate(loads):
        ax = axes[0][i]
        for r in results:
            row = next((s for s in r.get("steady", []) if s["fraction"] == fraction), None)
            if row and row["delivery_samples"]:
                xs = row["delivery_samples"]
                ys = [(n + 1) / len(xs) for n in range(len(xs))]
                ax.plot(xs, ys, label=f"{r['system']} ({row['rate']:g}/s)")
        ax.set_xscale("log")
        ax.set_xlabel("delivery latency, ms (log)")
        ax.set_ylabel("fraction of tasks")
        ax.set_title(f"immediate tasks at {fraction:.0%} of each one's max")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax = axes[0][-1]
    for r in results:
        xs = r.get("delayed", {}).get("lateness_samples") or []
        if xs:
            ax.plot(xs, [(n + 1) / len(xs) for n in range(len(xs))], label=r["system"])
    ax.set_xlabel("lateness after the due time, ms")
    ax.set_title("delayed tasks")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--loads", default="0.25,0.5,0.9", help="fractions of each one's max")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each steady run")
    parser.add_argument("--delay", type=float, default=3.0, help="delay of the delayed tasks, s")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--atf",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an atf-es setting for its services, e.g. commit_interval_ms=5 (repeatable)",
    )
    parser.add_argument(
        "--partitions", type=int, default=4, help="atf-es's commands and task-events partitions"
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="write the latency CDFs here (PNG)")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    try:
        loads = tuple(float(x) for x in args.loads.split(","))
    except ValueError:
        parser.error("--loads takes fractions like 0.25,0.5,0.9")
    if not loads or not all(0 < x <= 1 for x in loads):
        parser.error("--loads takes fractions between 0 and 1")
    if min(args.tasks, args.workers, args.threads, args.partitions) < 1 or args.seconds <= 0:
        parser.error("--tasks, --workers, --threads, --partitions and --seconds must be positive")
    atf_env = {}
    for item in args.atf:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--atf takes NAME=VALUE, got {item!r}")
        atf_env[f"ATF_{name.strip().upper()}"] = value.strip()
    options = Options(
        args.tasks,
        args.workers,
        args.threads,
        loads,
        args.seconds,
        args.delay,
        args.timeout,
        atf_env,
        args.partitions,
    )

    def say(line: str) -> None:
        print(line, flush=True)

    from bench.peers import ensure_installed

    if any(s != "atf-es" for s in systems) or args.plot:
        ensure_installed(say)
    results = []
    with tempfile.TemporaryDirectory(prefix="atf-compare-") as tmp:
        for name in systems:
            say(f"== {name}: {options.workers} processes x {options.threads} threads")
            results.append(measure(name, Path(tmp) / name, options, say))
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "python": platform.python_version(),
        "options": vars(options) | {"loads": list(loads)},
    }
    say("")
    say(table(results))
    if args.json:
        # Every figure but the raw samples, which only the plot needs.
        figures = [_without_samples(r) for r in results]
        args.json.write_text(json.dumps({"meta": meta, "results": figures}, indent=1) + "\n")
        say(f"figures in {args.json}")
    if args.plot:
        plot(results, args.plot)
        say(f"latency CDFs in {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
