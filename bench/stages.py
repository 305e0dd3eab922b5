"""Where an atf-es task's time goes under a steady load.

Starts the same system as ``bench/compare.py`` (every service its own
process on the embedded broker), submits ``--preload`` tasks in
``ScheduleBatch`` calls and waits for them (they fill the broker's logs, as a
long run does), then offers ``--rate`` tasks/s for ``--seconds``, one
``Schedule`` call each, and reads the recorded events of ``--sample`` of
them. It prints, per event, how long after the submit (or, with ``--delay``,
after the due time) the processor recorded it; the event time is the
processor's batch clock.

    .venv/bin/python bench/stages.py [--rate 380] [--seconds 15] [--delay 0]
        [--preload 3000] [--sample 150]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from atf_es.history import read_task_events  # noqa: E402 - the repository root is on sys.path only now
from bench.atf_peer import AtfPeer  # noqa: E402
from bench.compare import offer, percentiles  # noqa: E402

EVENTS = ("TaskEnqueued", "TaskClaimed", "TaskStarted", "TaskSucceeded")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=380.0, help="tasks/s offered")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--delay", type=float, default=0.0, help="run the tasks this late, s")
    parser.add_argument("--preload", type=int, default=3_000, help="tasks run before the load")
    parser.add_argument("--sample", type=int, default=150, help="tasks whose events are read")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.delay < 0 or args.preload < 0:
        parser.error("--rate and --seconds must be positive, --delay and --preload not negative")
    if args.sample < 1:
        parser.error("--sample must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="atf-stages-"))
    ledger = workdir / "ledger"
    ledger.mkdir()
    peer = AtfPeer(workdir, args.workers, args.threads, ledger)
    print(f"starting atf-es ({args.workers} executors x {args.threads} threads)", flush=True)
    peer.start()
    try:
        if args.preload:
            print(f"preload: {args.preload} tasks", flush=True)
            ids = peer.submit_many([f"preload-{i}" for i in range(args.preload)])
            done = peer.wait_all(ids, 300)
            if done < len(ids):
                print(f"only {done} of {len(ids)} preloaded tasks finished", file=sys.stderr)
                return 1
        print(f"offering {args.rate:g} tasks/s for {args.seconds:g} s", flush=True)
        offered = offer(peer, "steady", args.rate, args.seconds, delay_s=args.delay)
        done = peer.wait_all(offered.handles, 300)
        if done < len(offered.handles):
            print(f"only {done} of {len(offered.handles)} tasks finished", file=sys.stderr)
            return 1
        assert peer.system is not None
        settings = peer.system.settings
        assert settings.kafka_bootstrap is not None
        pairs = list(zip(offered.handles, offered.submitted_ns.values(), strict=True))
        sample = random.Random(1).sample(pairs, min(args.sample, len(pairs)))
        after: dict[str, list[float]] = {name: [] for name in EVENTS}
        print(f"reading the events of {len(sample)} tasks", flush=True)
        for handle, submitted_ns in sample:
            origin_ms = submitted_ns / 1e6 + args.delay * 1000
            first: dict[str, int] = {}
            for recorded in read_task_events(settings, settings.kafka_bootstrap, str(handle)):
                first.setdefault(type(recorded.event).__name__, recorded.event.at)
            for name in EVENTS:
                if name in first:
                    after[name].append(first[name] - origin_ms)
        since = "the due time" if args.delay else "the submit"
        for name, values in after.items():
            if not values:
                print(f"{name:14s} none recorded")
                continue
            p = percentiles(values)
            print(
                f"{name:14s} p50 {p['p50']:7.1f} / p95 {p['p95']:7.1f} / p99 {p['p99']:7.1f} ms "
                f"after {since} (n={len(values)})"
            )
    finally:
        peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
