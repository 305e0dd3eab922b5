"""Screenshots of the dashboard under the demo workload, for docs/dashboard.md.

    .venv/bin/python scripts/screenshot_dashboard.py [--out docs/img] [--rounds 4]

Starts what ``atf-es dev`` starts (the embedded broker, every service, the
demo app's executors and the dashboard, all on free ports, data in a
temporary directory), runs the demo workload ``--rounds`` times a few seconds
apart so the charts have samples, pauses ``echo`` for two samples while 30 of
its tasks arrive (so queue depth shows them held) and resumes it, then has
headless Chromium (Debian's
``/usr/bin/chromium``, as the browser tests use) take:

- ``dashboard.png``: the overview page;
- ``dashboard-task.png``: the task page of a dead-lettered demo task.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atf_es.app import load_app  # noqa: E402
from atf_es.broker import connect, ensure_topics  # noqa: E402
from atf_es.client import Client  # noqa: E402
from atf_es.config import load_settings  # noqa: E402
from atf_es.devrun import DEMO_APP, run_demo, start_system  # noqa: E402
from atf_es.events import TaskStatus  # noqa: E402
from atf_es.topics import core_topic_specs  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--rounds", type=int, default=4, help="demo workloads to run")
    parser.add_argument("--gap", type=float, default=6.0, help="seconds between two rounds")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            overrides={
                "kafka_bootstrap": None,
                "data_dir": Path(tmp),
                "partitions": 4,
                "frontend_address": "127.0.0.1:0",
                "hsc_address": "127.0.0.1:0",
                "controller_address": "127.0.0.1:0",
                "dashboard_address": "127.0.0.1:0",
            },
            override_source="scripts/screenshot_dashboard.py",
        )
        connection = connect(settings)
        system = None
        try:
            ensure_topics(connection.bootstrap, core_topic_specs(settings), settings.kafka_config)
            system = start_system(
                settings, connection.bootstrap, load_app(DEMO_APP), DEMO_APP, io.StringIO()
            )
            assert system.dashboard is not None, "the dashboard did not start"
            with Client(system.frontend_address) as atf:
                atf.overview()  # starts the sampling before the load
                for round_ in range(args.rounds):
                    if round_:
                        time.sleep(args.gap)  # spread the load over several samples
                    run_demo(system, io.StringIO())
                    print(f"demo round {round_ + 1} of {args.rounds} done", flush=True)
                # An operator's pause: tasks pile up as due-but-not-enqueued,
                # then drain once it is lifted.
                atf.pause("echo", reason="screenshot: provider outage", by="ops")
                held = [atf.schedule("echo", b"held") for _ in range(30)]
                time.sleep(2 * args.gap)
                atf.resume("echo", by="ops")
                for task_id in held:
                    atf.wait(task_id, 60)
                time.sleep(args.gap)
                print("pause round done", flush=True)
                dead = next(iter(atf.dead_letters("broken")))
                assert dead.status is TaskStatus.DEAD_LETTERED
            args.out.mkdir(parents=True, exist_ok=True)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(system.dashboard.url)
                page.screenshot(path=str(args.out / "dashboard.png"), full_page=True)
                page.goto(f"{system.dashboard.url}tasks/{dead.task_id}")
                page.screenshot(path=str(args.out / "dashboard-task.png"), full_page=True)
                browser.close()
            print(f"wrote {args.out / 'dashboard.png'} and {args.out / 'dashboard-task.png'}")
        finally:
            if system is not None:
                system.stop()
            connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
