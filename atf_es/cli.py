"""The ``atf-es`` command line: one entry point for every process and tool."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import re
import signal
import sys
import textwrap
import threading
import time
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atf_es import logs, metrics
from atf_es.app import AppLoadError, load_app
from atf_es.broker import (
    BrokerConnection,
    BrokerError,
    EnsureResult,
    TopicMismatchError,
    admin_client,
    connect,
    ensure_topics,
)
from atf_es.client import (
    AtfError,
    ChainStep,
    Client,
    DeadLetterCount,
    DeadLetterFilter,
    TaskInfo,
    TaskNotFound,
)
from atf_es.config import (
    ENV_CONFIG_FILE,
    ENV_KAFKA_PREFIX,
    LOG_FORMATS,
    ConfigError,
    Settings,
    env_var_for,
    load_settings,
)
from atf_es.dashboard import DashboardError, dashboard_server
from atf_es.devrun import DEMO_APP, System, run_demo, start_system
from atf_es.events.status import TaskStatus
from atf_es.projections.replay import ProgressPrinter, ReplayError, replay, replay_and_verify
from atf_es.projections.store import StoreError
from atf_es.services.auth import ServerSecurity
from atf_es.services.channels import Credentials, open_channel
from atf_es.services.control import ControlView
from atf_es.services.controller import Controller
from atf_es.services.executor import EXIT_HEARTBEAT_LOST, Executor
from atf_es.services.frontend import frontend_server
from atf_es.services.gateway import CommandGateway
from atf_es.services.hsc import hsc_server
from atf_es.services.processor import Processor
from atf_es.topics import TopicSpec, core_topic_specs

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Global flag -> Settings field. The flags work before or after the subcommand.
_SETTING_FLAGS = {
    "bootstrap": "kafka_bootstrap",
    "topic_prefix": "topic_prefix",
    "partitions": "partitions",
    "data_dir": "data_dir",
    "metrics": "metrics_address",
    "log_format": "log_format",
}

_ENV_HELP = f"""\
configuration, later sources winning:
  defaults < config file (--config or ${ENV_CONFIG_FILE}) < ATF_* environment variables
  < command-line flags. Every setting has a variable, e.g. ATF_KAFKA_BOOTSTRAP,
  ATF_TOPIC_PREFIX, ATF_PARTITIONS, ATF_DATA_DIR, ATF_POLL_INTERVAL_MS.
  {ENV_KAFKA_PREFIX}<KEY> sets a Kafka client property: '_' in KEY becomes '.',
  e.g. {ENV_KAFKA_PREFIX}SASL_MECHANISM=PLAIN sets sasl.mechanism.
  Run 'atf-es config' to see every setting and where its value came from.
"""


class _Stop:
    """Set by SIGINT/SIGTERM; lets the main thread wind down in order."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> Callable[[], None]:
        def handler(signum: int, _frame: FrameType | None) -> None:
            self.signal_name = signal.Signals(signum).name
            self.event.set()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


def _common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Subparsers get the same options with SUPPRESS defaults, so a flag given
    # after the subcommand does not reset one given before it.
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("settings (override file and environment)")
    group.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help=f"TOML settings file (default: ${ENV_CONFIG_FILE} if set)",
    )
    group.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        default=default,
        help="Kafka bootstrap servers; unset means start the embedded broker "
        "(env ATF_KAFKA_BOOTSTRAP)",
    )
    group.add_argument(
        "--topic-prefix",
        metavar="PREFIX",
        default=default,
        help="prefix of every topic name (env ATF_TOPIC_PREFIX, default 'atf')",
    )
    group.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        default=default,
        help="partitions of the commands and task-events topics (env ATF_PARTITIONS, default 8)",
    )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default,
        help="local state directory (env ATF_DATA_DIR, default .atf-data)",
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log more detail"
    )
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default,
        help="log lines as text or one JSON object each (env ATF_LOG_FORMAT, default text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atf-es",
        description="atf-es: an asynchronous task framework, event-sourced on Kafka.",
        epilog=_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def sub(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        child = commands.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(description, 79),
            epilog=_ENV_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common_options(child, suppress=True)
        return child

    dev = sub(
        "dev",
        "run a local development deployment",
        "Start the embedded Kafka-compatible broker (Tansu, in memory) unless --bootstrap "
        "or ATF_KAFKA_BOOTSTRAP points at a broker, create the topics, report what was "
        "done, and keep running until Ctrl-C or SIGTERM, then stop everything cleanly.",
    )
    dev.add_argument(
        "--once",
        action="store_true",
        help="run the demo workload, print the summary, then stop everything",
    )
    dev.add_argument(
        "--app",
        default=DEMO_APP,
        metavar="MODULE:APP",
        help=f"the App whose lambdas to serve (default: {DEMO_APP})",
    )
    dev.add_argument("--no-demo", action="store_true", help="do not schedule the demo workload")
    dev.set_defaults(handler=_cmd_dev)

    topics = sub(
        "topics",
        "create the topics on a broker and list them",
        "Create every missing core topic on the broker given by --bootstrap or "
        "ATF_KAFKA_BOOTSTRAP (existing ones are checked, not changed) and list them.",
    )
    topics.add_argument(
        "--dry-run",
        action="store_true",
        help="only print the topics that would be created; needs no broker",
    )
    topics.set_defaults(handler=_cmd_topics)

    config = sub(
        "config",
        "print the effective configuration",
        "Validate the configuration and print every setting with the source that set it "
        "(default, config file, environment variable or command line). Secrets in Kafka "
        "client properties are masked.",
    )
    config.set_defaults(handler=_cmd_config)

    define = sub(
        "define",
        "publish an app's lambdas and create their queues",
        "Publish the policy of every lambda of MODULE:APP to the control topic and create "
        "its execution queues (one topic per priority) on the broker given by --bootstrap "
        "or ATF_KAFKA_BOOTSTRAP. Safe to repeat; a changed policy replaces the old one.",
    )
    define.add_argument("app", metavar="MODULE:APP", help="the App, e.g. atf_es.examples.demo:app")
    define.set_defaults(handler=_cmd_define)

    health = sub(
        "health",
        "health check of a running service (gRPC health protocol)",
        "Ask the gRPC service at HOST:PORT (Frontend, HSC or Controller) whether it is "
        "serving, over TLS when tls_ca_file is set. Exit status 0 when serving, 1 when "
        "not or unreachable. For container health checks and scripts.",
    )
    health.add_argument("address", metavar="HOST:PORT")
    health.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="give up after this long"
    )
    health.set_defaults(handler=_cmd_health)

    check = sub(
        "check",
        "health check: is the broker reachable and are the topics there?",
        "Connect to the broker given by --bootstrap or ATF_KAFKA_BOOTSTRAP and check that "
        "every core topic exists with the partition count the code relies on. Exit status "
        "0 when healthy, 1 when not, 2 on a usage or configuration error.",
    )
    check.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="give up after this long"
    )
    check.set_defaults(handler=_cmd_check)

    processor = sub(
        "processor",
        "run a partition processor until SIGTERM",
        "Join the processor group on the commands topic and act as the single writer of "
        "the partitions it is given: restore each partition's RocksDB projection from the "
        "event log, then turn commands and due triggers into events, execution-queue "
        "messages, one Kafka transaction per batch, and answer each command once its "
        "transaction has committed. Run several for "
        "availability; they split the partitions between them. Stops cleanly on SIGTERM "
        "or Ctrl-C.",
    )
    processor.add_argument(
        "--instance-id",
        metavar="ID",
        help="stable name of this processor; its projections live in "
        "<data_dir>/processor/<ID> (default: host name and process id)",
    )
    processor.set_defaults(handler=_cmd_processor)

    hsc = sub(
        "hsc",
        "run the Heartbeat and Status Controller until SIGTERM",
        "Serve atf.v1.HeartbeatStatus (ClaimTask, Heartbeat, SetResults) on hsc_address. "
        "Each call becomes a command through the processor and waits for its reply. "
        "gRPC health checking and reflection are on. Stops cleanly on SIGTERM or Ctrl-C.",
    )
    hsc.add_argument("--listen", metavar="HOST:PORT", help="override hsc_address for listening")
    hsc.set_defaults(handler=_cmd_hsc)

    frontend = sub(
        "frontend",
        "run the Frontend (scheduling API) until SIGTERM",
        "Serve atf.v1.Frontend (Schedule, ScheduleBatch, GetTask, Cancel) on "
        "frontend_address. Schedule returns once the command is durably in Kafka; "
        "GetTask reads through the log, so it finds a task right after Schedule "
        "returned. gRPC health checking and reflection are on. Stops cleanly on SIGTERM "
        "or Ctrl-C.",
    )
    frontend.add_argument(
        "--listen", metavar="HOST:PORT", help="override frontend_address for listening"
    )
    frontend.set_defaults(handler=_cmd_frontend)

    dashboard = sub(
        "dashboard",
        "serve the web dashboard until SIGTERM",
        "Serve the web dashboard on dashboard_address: lambdas with task counts by status "
        "and collection, queue depth and delivery latency over the last hour, gates "
        "(pause, resume, drop), dead letters (inspect, redrive), periodic schedules and "
        "each task's history. Its data comes from the Frontend's Admin and Frontend "
        "services, called with this process's token (auth_token). Port 0 picks a free "
        "port; the URL is printed. Stops cleanly on SIGTERM or Ctrl-C.",
    )
    _frontend_option(dashboard)
    dashboard.add_argument(
        "--listen", metavar="HOST:PORT", help="override dashboard_address for listening"
    )
    dashboard.set_defaults(handler=_cmd_dashboard)

    controller = sub(
        "controller",
        "run a worker host's Controller until SIGTERM",
        "Consume the execution topics of the app's lambdas into local per-priority "
        "buffers, claim each task through the HSC before handing it out, and serve "
        "NextWork long polls to this host's executors on controller_address.",
    )
    controller.add_argument("app", metavar="MODULE:APP", help="the App whose lambdas to serve")
    controller.add_argument("--hsc", metavar="HOST:PORT", help="the HSC (default: hsc_address)")
    controller.add_argument(
        "--listen", metavar="HOST:PORT", help="override controller_address for listening"
    )
    controller.set_defaults(handler=_cmd_controller)

    executor = sub(
        "executor",
        "run an executor process for one lambda",
        "Run N threads of 'next_work(); run(work)' for one lambda of the app, heartbeating "
        "while each task runs. After 3 consecutive failed heartbeats the process ends "
        f"itself (exit status {EXIT_HEARTBEAT_LOST}) so that the task can never run twice "
        "at once; run it under a supervisor that restarts it.",
    )
    executor.add_argument("app", metavar="MODULE:APP", help="the App that holds the lambda")
    executor.add_argument("lambda_name", metavar="LAMBDA", help="the lambda to run")
    executor.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    executor.add_argument(
        "--controller", metavar="HOST:PORT", help="the Controller (default: controller_address)"
    )
    executor.add_argument("--hsc", metavar="HOST:PORT", help="the HSC (default: hsc_address)")
    executor.set_defaults(handler=_cmd_executor)

    schedule = sub(
        "schedule",
        "schedule a task and print its id",
        "Schedule one task through the Frontend and print its id.",
    )
    schedule.add_argument("lambda_name", metavar="LAMBDA")
    schedule.add_argument("--payload", default="", help="the payload, as text (UTF-8)")
    schedule.add_argument("--collection", default="default")
    schedule.add_argument("--priority", type=int, default=0)
    schedule.add_argument("--delay", type=float, metavar="SECONDS", help="run this much later")
    schedule.add_argument("--key", metavar="IDEMPOTENCY_KEY", help="the same key schedules once")
    _frontend_option(schedule)
    schedule.set_defaults(handler=_cmd_schedule)

    status = sub("status", "show a task", "Print a task's status, attempts, times and error.")
    status.add_argument("task_id", metavar="TASK_ID")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--as-of",
        metavar="TIME",
        help="show the task as it was at TIME (ISO 8601 with a time zone, e.g. "
        "2026-11-29T15:30:00Z, or epoch milliseconds), from its recorded history",
    )
    _frontend_option(status)
    status.set_defaults(handler=_cmd_status)

    history = sub(
        "history",
        "show every transition of a task",
        "Print every recorded transition of a task in order: time, event, the "
        "status it led to, its cause (a command or a timer), lease, worker, error "
        "and the delay since the transition before.",
    )
    history.add_argument("task_id", metavar="TASK_ID")
    history.add_argument("--json", action="store_true", help="print JSON")
    _frontend_option(history)
    history.set_defaults(handler=_cmd_history)

    replay = sub(
        "replay",
        "rebuild projections from the event log; --verify a live one",
        "Read the task-events topic from its start and rebuild the per-partition task "
        "stores into DIR/p<N> (DIR must be new or empty), as of now or as of --until, "
        "for every lambda or one. With --verify LIVE_DIR (a processor's "
        "<data_dir>/processor/<ID>, opened read-only: the processor may keep running), "
        "rebuild each partition up to the offset its live store has applied and compare "
        "the two: rows, counters and indexes. Exit status 1 if they differ. See "
        "docs/replay.md.",
    )
    replay.add_argument("into", metavar="DIR", help="where to write the rebuilt stores")
    replay.add_argument(
        "--until",
        metavar="TIME",
        help="the state as of TIME (ISO 8601 with a time zone, or epoch milliseconds): "
        "events recorded after it are left out",
    )
    replay.add_argument("--lambda", dest="lambda_name", metavar="LAMBDA", help="only its tasks")
    replay.add_argument(
        "--partition",
        dest="only_partitions",
        type=int,
        action="append",
        metavar="N",
        help="only this partition (repeat for more; default: every partition)",
    )
    replay.add_argument(
        "--verify", metavar="LIVE_DIR", help="compare with <data_dir>/processor/<ID>"
    )
    replay.add_argument(
        "--max-diffs", type=int, default=20, metavar="N", help="task differences to list (20)"
    )
    replay.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    replay.set_defaults(handler=_cmd_replay)

    cancel = sub("cancel", "cancel a task", "Cancel a waiting or running task.")
    cancel.add_argument("task_id", metavar="TASK_ID")
    cancel.add_argument("--reason", default="", help="why (kept in the history)")
    _frontend_option(cancel)
    cancel.set_defaults(handler=_cmd_cancel)

    gate = sub(
        "gate",
        "pause, resume or drop a lambda or collection",
        "Gates hold a lambda's tasks, or one collection's, as they become due: "
        "'pause' keeps them waiting (nothing is lost), 'drop' ends them dropped, "
        "'resume' lets them go again (at most the flow-control limit at a time). "
        "Running tasks finish normally. 'list' shows the closed gates.",
    )
    gate.add_argument("action", choices=("pause", "resume", "drop", "list"))
    gate.add_argument(
        "target",
        nargs="?",
        metavar="LAMBDA[/COLLECTION]",
        help="what to gate; for 'list', an optional lambda to show",
    )
    gate.add_argument("--reason", default="", help="why (kept in the control topic)")
    gate.add_argument("--by", default="", help="who (default: your user name)")
    gate.add_argument("--json", action="store_true", help="print JSON")
    _frontend_option(gate)
    gate.set_defaults(handler=_cmd_gate)

    dlq = sub(
        "dlq",
        "list, inspect and redrive dead-lettered tasks",
        "A task that fails every attempt ends dead_lettered with its last error. "
        "'list' shows them (oldest first, filtered by lambda, collection, error text "
        "and time) with the counts per lambda; 'show' prints one with its failures; "
        "'redrive' gives tasks a fresh set of attempts once the bug is fixed: the "
        "tasks named, a filtered set of one lambda, or all of a lambda. See "
        "docs/dead-letters.md.",
    )
    actions = dlq.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)

    def dlq_sub(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        child = actions.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(description, 79),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common_options(child, suppress=True)
        _frontend_option(child)
        return child

    dlq_list = dlq_sub(
        "list",
        "list dead letters, oldest first, with the counts per lambda",
        "List dead-lettered tasks, oldest first (by when they were dead-lettered), "
        "after a summary line with the counts per lambda.",
    )
    dlq_list.add_argument("lambda_name", nargs="?", metavar="LAMBDA", help="only this lambda's")
    _dlq_filter_options(dlq_list)
    dlq_list.add_argument(
        "--limit",
        type=int,
        default=50,
        metavar="N",
        help="show at most N tasks (default 50; 0: all)",
    )
    dlq_list.add_argument(
        "--counts", action="store_true", help="print only the counts per lambda and collection"
    )
    dlq_list.add_argument("--json", action="store_true", help="print JSON")
    dlq_list.set_defaults(handler=_cmd_dlq_list)

    dlq_show = dlq_sub(
        "show",
        "show a dead letter: its last error, attempts, failures and redrives",
        "Print a task with its last error in full, its attempts, when it was "
        "dead-lettered, and from its history every failure and earlier redrive. "
        "Exit status 1 if the task is not dead-lettered (it is still printed).",
    )
    dlq_show.add_argument("task_id", metavar="TASK_ID")
    dlq_show.add_argument("--json", action="store_true", help="print JSON")
    dlq_show.set_defaults(handler=_cmd_dlq_show)

    dlq_redrive = dlq_sub(
        "redrive",
        "give dead letters a fresh set of attempts",
        "Redrive the tasks named, or a filtered set of one lambda's dead letters "
        "(--lambda with --collection, --error, --since, --until), or all of a lambda "
        "(--all-of): each goes back to new, due at once, with 0 attempts, and its "
        "history records who (--by) and why (--reason, required). A set (--lambda, "
        "--all-of) needs --yes; without it the command only says how many tasks it "
        "would redrive. Exit status 1 if any task was not redriven.",
    )
    dlq_redrive.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="the tasks to redrive")
    dlq_redrive.add_argument(
        "--lambda", dest="lambda_name", metavar="LAMBDA", help="a filtered set of this lambda"
    )
    dlq_redrive.add_argument("--all-of", metavar="LAMBDA", help="every dead letter of LAMBDA")
    _dlq_filter_options(dlq_redrive)
    dlq_redrive.add_argument("--reason", default="", help="why (required; kept in the history)")
    dlq_redrive.add_argument("--by", default="", help="who (default: your user name)")
    dlq_redrive.add_argument("--yes", action="store_true", help="redrive the set, do not preview")
    dlq_redrive.set_defaults(handler=_cmd_dlq_redrive)

    periodic = sub(
        "periodic",
        "add, list, pause, resume and remove periodic schedules",
        "A periodic schedule schedules one task of a lambda at each occurrence of a "
        "cron expression (in a time zone) or of a fixed interval. The processor that "
        "owns the schedule's partition fires it: no scheduler process to run, and each "
        "occurrence is one task (id periodic:<name>:<ms>) even across restarts. Gates "
        "hold its tasks like any other. See docs/periodic.md.",
    )
    periodic_actions = periodic.add_subparsers(
        dest="periodic_action", metavar="ACTION", required=True
    )

    def periodic_sub(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        child = periodic_actions.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(description, 79),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common_options(child, suppress=True)
        _frontend_option(child)
        return child

    periodic_add = periodic_sub(
        "add",
        "add a schedule, or replace the one of that name",
        "Add a periodic schedule, or replace the one of that name. Give --cron or "
        "--every. No occurrence before now fires. Misfires (occurrences the owner "
        "reached late, after an outage): 'catch_up' (the default) fires the latest "
        "--catch-up-max of them (default 1), 'skip' fires only those at most --grace "
        "late.",
    )
    periodic_add.add_argument("name", metavar="NAME")
    periodic_add.add_argument("lambda_name", metavar="LAMBDA")
    when = periodic_add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="'M H DOM MON DOW', or @hourly, @daily...")
    when.add_argument("--every", metavar="DURATION", help="an interval: 500ms, 1s, 15m, 2h, 1d")
    periodic_add.add_argument("--tz", default="UTC", metavar="ZONE", help="for --cron (IANA)")
    periodic_add.add_argument("--payload", default="", help="each task's payload, as text")
    periodic_add.add_argument("--collection", default="default")
    periodic_add.add_argument("--priority", type=int, default=0)
    periodic_add.add_argument("--start", metavar="TIME", help="no occurrence before (ISO 8601)")
    periodic_add.add_argument("--end", metavar="TIME", help="no occurrence after (ISO 8601)")
    periodic_add.add_argument("--misfire", choices=("catch_up", "skip"), default="catch_up")
    periodic_add.add_argument("--catch-up-max", type=int, default=1, metavar="N")
    periodic_add.add_argument("--grace", metavar="DURATION", help="for --misfire skip (5s)")
    periodic_add.add_argument("--by", default="", help="who (default: your user name)")
    periodic_add.set_defaults(handler=_cmd_periodic_add)

    periodic_list = periodic_sub(
        "list", "list the schedules, with when each fires next", "List periodic schedules."
    )
    periodic_list.add_argument("lambda_name", nargs="?", metavar="LAMBDA", help="only this one's")
    periodic_list.add_argument("--json", action="store_true", help="print JSON")
    periodic_list.set_defaults(handler=_cmd_periodic_list)

    for action, text in (
        ("pause", "stop firing a schedule (what falls in between is not caught up)"),
        ("resume", "fire a paused schedule again, from its next occurrence"),
        ("remove", "remove a schedule (the tasks it scheduled stay)"),
    ):
        child = periodic_sub(action, text, text[0].upper() + text[1:] + ".")
        child.add_argument("name", metavar="NAME")
        if action != "remove":
            child.add_argument("--by", default="", help="who (default: your user name)")
        child.set_defaults(handler=_cmd_periodic_change)

    chain = sub(
        "chain",
        "schedule a chain of tasks, and show where a chain is",
        "A chain is a small DAG of tasks scheduled in one call: each node runs once "
        "the nodes it comes after have succeeded (--on-failure stop, the default) or "
        "have ended however (continue). Its tasks are chain:<id> (the root) and "
        "chain:<id>/<node>. See docs/chains.md.",
    )
    chain_actions = chain.add_subparsers(dest="chain_action", metavar="ACTION", required=True)
    chain_run = chain_actions.add_parser(
        "run",
        help="schedule a chain from a JSON file",
        description=textwrap.fill(
            'Schedule the chain FILE describes (- for standard input): {"chain_id": '
            '"nightly", "on_failure": "stop", "nodes": [{"name": "extract", "lambda": '
            '"extract", "payload": "text", "after": [], "collection": "default", '
            '"priority": 0, "delay": "0s"}, ...]}. Only name and lambda are required. '
            "Prints the chain id and each node's task id.",
            79,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(chain_run, suppress=True)
    _frontend_option(chain_run)
    chain_run.add_argument("file", metavar="FILE")
    chain_run.set_defaults(handler=_cmd_chain_run)
    chain_show = chain_actions.add_parser(
        "status",
        help="show each node of a chain, and where and why it failed",
        description=textwrap.fill(
            "Print the chain's state (running, succeeded, failed), a one-line summary "
            "and every node with its state. Exit status 1 if the chain failed.",
            79,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(chain_show, suppress=True)
    _frontend_option(chain_show)
    chain_show.add_argument("chain_id", metavar="CHAIN_ID")
    chain_show.add_argument("--json", action="store_true", help="print JSON")
    chain_show.set_defaults(handler=_cmd_chain_status)
    for service in (dev, processor, hsc, frontend, dashboard, controller, executor):
        _metrics_option(service)
    return parser


def _metrics_option(parser: argparse.ArgumentParser) -> None:
    """``--metrics``: the commands that run services serve ``/metrics`` (docs/metrics.md)."""
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port, "
        "printed); env ATF_METRICS_ADDRESS",
    )
    parser.set_defaults(serves_metrics=True)


def _dlq_filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", metavar="C", help="only this collection")
    parser.add_argument(
        "--error", metavar="TEXT", help="only tasks whose last error contains TEXT (any case)"
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="only tasks dead-lettered at or after TIME: ISO 8601 with a time zone, epoch "
        "milliseconds, or an age such as 90s, 15m, 2h, 7d",
    )
    parser.add_argument(
        "--until", metavar="TIME", help="only tasks dead-lettered before TIME (as --since)"
    )


def _frontend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--frontend", metavar="HOST:PORT", help="the Frontend (default: frontend_address)"
    )


def _client(args: argparse.Namespace, settings: Settings) -> Client:
    """A Frontend client for ``--frontend`` (or frontend_address), with the token and TLS roots."""
    return Client(
        args.frontend or settings.frontend_address,
        token=settings.auth_token,
        tls_ca_file=settings.tls_ca_file,
    )


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {field: getattr(args, flag, None) for flag, field in _SETTING_FLAGS.items()}
    return load_settings(getattr(args, "config", None), overrides=overrides)


def _describe_spec(spec: TopicSpec, partitions: int | None = None) -> str:
    configs = " ".join(f"{k}={v}" for k, v in spec.config.items())
    count = spec.partitions if partitions is None else partitions
    noun = "partition " if count == 1 else "partitions"
    return f"{spec.name:<32} {count:>3} {noun}  {configs}"


def _print_topics(out: TextIO, specs: list[TopicSpec], result: EnsureResult | None = None) -> None:
    for spec in specs:
        if result is None:
            state = "planned"
        else:
            state = "created" if spec.name in result.created else "existing"
        partitions = result.partitions.get(spec.name) if result is not None else None
        print(f"  {state:<8} {_describe_spec(spec, partitions)}", file=out)


def _cmd_dev(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    stop = _Stop()
    restore = stop.install()
    started: list[System] = []
    connection: BrokerConnection | None = None
    try:
        connection = connect(settings)
        if connection.broker is not None:
            print(
                f"broker: embedded Tansu (in memory) at {connection.bootstrap}, "
                f"log {connection.broker.log_path}",
                file=out,
            )
        else:
            print(f"broker: {connection.bootstrap} (external)", file=out)
        specs = core_topic_specs(settings)
        result = ensure_topics(
            connection.bootstrap,
            specs,
            settings.kafka_config,
            replication_factor=settings.replication_factor,
        )
        print(
            f"topics: {len(result.created)} created, {len(result.existing)} already existed",
            file=out,
        )
        _print_topics(out, specs, result)
        app = load_app(args.app)
        system = start_system(settings, connection.bootstrap, app, args.app, out)
        started.append(system)
        status = EXIT_OK
        if args.app == DEMO_APP and not args.no_demo:
            status = run_demo(system, out)
        if args.once:
            print("--once: stopping", file=out)
            return status
        else:
            print(
                f"running; schedule tasks with: atf-es schedule echo --payload hi "
                f"--frontend {system.frontend_address}   (Ctrl-C to stop)",
                file=out,
            )
            out.flush()
            while not stop.event.wait(0.5):
                if connection.broker is not None and not connection.broker.running:
                    print(
                        f"atf-es: the embedded broker stopped unexpectedly; see its log "
                        f"{connection.broker.log_path}",
                        file=sys.stderr,
                    )
                    return EXIT_FAILURE
            print(f"{stop.signal_name or 'signal'} received: stopping", file=out)
        return EXIT_OK
    finally:
        for service in reversed(started):
            service.stop()
        if connection is not None:
            connection.close()
            if connection.embedded:
                print("broker: stopped", file=out)
        restore()


def _cmd_processor(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    bootstrap = _require_bootstrap(settings, "processor")
    if bootstrap is None:
        return EXIT_USAGE
    stop = _Stop()
    restore = stop.install()
    processor = Processor(settings, bootstrap, instance_id=args.instance_id)
    try:
        processor.start()
        print(
            f"processor {processor.instance_id}: joining group "
            f"{settings.topic_prefix}.processor at {bootstrap}; projections in "
            f"{processor.data_dir}",
            file=out,
            flush=True,
        )
        owned: list[int] | None = None
        while not stop.event.wait(0.2):
            if processor.failed:
                print("atf-es processor: crashed; see the log above", file=sys.stderr)
                return EXIT_FAILURE
            if processor.stats.owned != owned:
                owned = list(processor.stats.owned)
                print(
                    f"processor {processor.instance_id}: owns partitions {owned}",
                    file=out,
                    flush=True,
                )
        print(f"{stop.signal_name or 'signal'} received: stopping", file=out, flush=True)
        return EXIT_OK
    finally:
        processor.stop()
        print(
            f"processor {processor.instance_id}: stopped; {processor.stats}", file=out, flush=True
        )
        restore()


def _wait_for_signal(out: TextIO, ready: str) -> int:
    """Print ``ready``, then block until SIGINT or SIGTERM; the caller stops its
    services afterwards. The handler is in place before the line is printed, so
    a supervisor that signals as soon as it reads the line gets a clean stop."""
    stop = _Stop()
    restore = stop.install()
    try:
        print(ready, file=out, flush=True)
        stop.event.wait()
        print(f"{stop.signal_name or 'signal'} received: stopping", file=out, flush=True)
        return EXIT_OK
    finally:
        restore()


def _cmd_hsc(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    bootstrap = _require_bootstrap(settings, "hsc")
    if bootstrap is None:
        return EXIT_USAGE
    security = ServerSecurity.from_settings(settings)
    gateway = CommandGateway(settings, bootstrap, client_id="hsc")
    server = hsc_server(gateway, args.listen or settings.hsc_address, security=security)
    try:
        server.start()
        return _wait_for_signal(out, f"hsc: serving atf.v1.HeartbeatStatus on port {server.port}")
    finally:
        server.stop()
        gateway.close()


def _cmd_frontend(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    bootstrap = _require_bootstrap(settings, "frontend")
    if bootstrap is None:
        return EXIT_USAGE
    security = ServerSecurity.from_settings(settings)
    gateway = CommandGateway(settings, bootstrap, client_id="frontend")
    control = ControlView(settings, bootstrap)
    server = frontend_server(
        gateway, control, args.listen or settings.frontend_address, security=security
    )
    try:
        server.start()
        return _wait_for_signal(out, f"frontend: serving atf.v1.Frontend on port {server.port}")
    finally:
        server.stop()
        gateway.close()
        control.close()


def _cmd_dashboard(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    frontend = args.frontend or settings.frontend_address
    server = dashboard_server(settings, frontend, args.listen)
    try:
        try:
            server.start()
        except DashboardError as exc:
            print(f"atf-es: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        return _wait_for_signal(
            out, f"dashboard: {server.url} (data from the Frontend at {frontend})"
        )
    finally:
        server.stop()


def _cmd_controller(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    bootstrap = _require_bootstrap(settings, "controller")
    if bootstrap is None:
        return EXIT_USAGE
    app = load_app(args.app)
    controller = Controller(
        settings,
        bootstrap,
        sorted(app.lambdas),
        args.hsc or settings.hsc_address,
        address=args.listen or settings.controller_address,
        security=ServerSecurity.from_settings(settings),
    )
    try:
        controller.start()
        return _wait_for_signal(
            out,
            f"controller: serving NextWork on port {controller.port} for "
            f"{', '.join(sorted(app.lambdas))}",
        )
    finally:
        controller.stop()


def _cmd_executor(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    app = load_app(args.app)
    if args.lambda_name not in app.lambdas:
        print(
            f"atf-es executor: app {app.name!r} has no lambda {args.lambda_name!r}; it has "
            f"{', '.join(sorted(app.lambdas)) or 'none'}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    executor = Executor(
        app,
        args.lambda_name,
        args.controller or settings.controller_address,
        args.hsc or settings.hsc_address,
        threads=args.threads,
        prefetch=bool(settings.executor_prefetch),
        batch=settings.executor_batch,
        credentials=Credentials.from_settings(settings),
    )
    prefetch = ", prefetching" if settings.executor_prefetch else ""
    print(
        f"executor: {args.threads} threads for {args.lambda_name}{prefetch}", file=out, flush=True
    )
    executor.run_forever()
    return EXIT_OK


def _cmd_schedule(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with _client(args, settings) as client:
        task_id = client.schedule(
            args.lambda_name,
            args.payload.encode(),
            collection=args.collection,
            priority=args.priority,
            delay=args.delay,
            idempotency_key=args.key,
        )
    print(task_id, file=out)
    return EXIT_OK


def _parse_time(text: str) -> int | None:
    """Epoch milliseconds from ISO 8601 with a time zone, or from an integer; None if neither."""
    if text.strip().lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return round(when.timestamp() * 1000)


def _utc(ms: int) -> str:
    when = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def _cmd_status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    as_of = None
    if args.as_of is not None:
        as_of = _parse_time(args.as_of)
        if as_of is None:
            print(
                f"atf-es status: --as-of {args.as_of!r} is not a time: give ISO 8601 with a "
                "time zone (2026-11-29T15:30:00Z) or epoch milliseconds",
                file=sys.stderr,
            )
            return EXIT_USAGE
    with _client(args, settings) as client:
        info = client.get(args.task_id, as_of=as_of)
    fields = {
        name: (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
        for name, value in dataclasses.asdict(info).items()
    }
    if args.json:
        print(json.dumps(fields, default=str, indent=2), file=out)
    else:
        for name, value in fields.items():
            shown = ", ".join(value) if isinstance(value, tuple) else value
            if shown is not None and shown != "":
                print(f"{name:>18}: {shown}", file=out)
    return EXIT_OK


def _cmd_history(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with _client(args, settings) as client:
        entries = client.history(args.task_id)
    if args.json:
        rows = [dataclasses.asdict(e) | {"status": e.status.value} for e in entries]
        print(json.dumps(rows, indent=2), file=out)
        return EXIT_OK
    print(f"task {args.task_id}: {len(entries)} transitions (times in UTC)", file=out)
    print(f"{'seq':>4}  {'time':<23}  {'after':>9}  {'event':<20} {'status':<17} cause", file=out)
    for e in entries:
        after = "" if e.seq == entries[0].seq else f"+{e.since_previous_ms / 1000:.3f}s"
        cause = e.cause_name if e.cause == "timer" else f"{e.cause_name} ({e.command_id})"
        details = [
            f"{name}={value}"
            for name, value in (
                ("lease", e.lease),
                ("worker", e.worker),
                ("gate", e.gate),
                ("by", e.requested_by),
                ("reason", e.reason),
                ("error", e.error),
                ("root", e.root_task_id),
                ("parents", ",".join(e.parent_task_ids)),
            )
            if value not in (None, "")
        ]
        line = (
            f"{e.seq:>4}  {_utc(e.at_ms):<23}  {after:>9}  {e.kind.lower():<20} "
            f"{e.status.value:<17} {e.cause}: {cause}"
        )
        print(line + ("  " + " ".join(details) if details else ""), file=out)
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    bootstrap = _require_bootstrap(settings, "replay")
    if bootstrap is None:
        return EXIT_USAGE
    until = None
    if args.until is not None:
        until = _parse_time(args.until)
        if until is None:
            print(
                f"atf-es replay: --until {args.until!r} is not a time: give ISO 8601 with a "
                "time zone (2026-11-29T15:30:00Z) or epoch milliseconds",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if args.verify is not None:
            print("atf-es replay: --until and --verify do not go together", file=sys.stderr)
            return EXIT_USAGE
    progress = None if args.no_progress else ProgressPrinter(sys.stderr)
    try:
        if args.verify is None:
            result = replay(
                settings,
                bootstrap,
                Path(args.into),
                until=until,
                lambda_name=args.lambda_name,
                partitions=args.only_partitions,
                progress=progress,
            )
            print(result.summary(), file=out)
            return EXIT_OK
        result, report = replay_and_verify(
            settings,
            bootstrap,
            Path(args.into),
            Path(args.verify),
            lambda_name=args.lambda_name,
            partitions=args.only_partitions,
            progress=progress,
            max_diffs=args.max_diffs,
        )
    except (ReplayError, StoreError) as exc:
        print(f"atf-es replay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(result.summary(), file=out)
    print(report.render(), file=out)
    return EXIT_OK if report.ok else EXIT_FAILURE


def _cmd_cancel(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with _client(args, settings) as client:
        info = client.cancel(args.task_id, args.reason, requested_by="atf-es cancel")
    print(f"{info.task_id}: {info.status.value}", file=out)
    return EXIT_OK


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no password entry
        return "unknown"


def _cmd_gate(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    target = args.target or ""
    lambda_name, _, collection = target.partition("/")
    if args.action != "list" and not lambda_name:
        print(f"atf-es gate {args.action}: name a LAMBDA or LAMBDA/COLLECTION", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "list" and collection:
        print("atf-es gate list: takes a LAMBDA, not a collection", file=sys.stderr)
        return EXIT_USAGE
    with _client(args, settings) as client:
        if args.action == "list":
            gates = client.gates(lambda_name or None)
        else:
            set_gate = {"pause": client.pause, "resume": client.resume, "drop": client.drop}
            by = args.by or _user()
            gates = [
                set_gate[args.action](
                    lambda_name, collection or None, reason=args.reason, by=f"{by} (atf-es gate)"
                )
            ]
    if args.json:
        print(
            json.dumps([dataclasses.asdict(g) | {"name": g.name} for g in gates], indent=2),
            file=out,
        )
        return EXIT_OK
    if args.action != "list":
        (gate,) = gates
        done = {"pause": "paused", "resume": "resumed", "drop": "dropping"}[args.action]
        print(f"{gate.name}: {done}", file=out)
        return EXIT_OK
    if not gates:
        print("no closed gates", file=out)
    for gate in gates:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(gate.set_at_ms / 1000))
        reason = f"  {gate.reason}" if gate.reason else ""
        print(f"{gate.name:<40} {gate.action:<6} {when} UTC  by {gate.set_by}{reason}", file=out)
    return EXIT_OK


_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_when(text: str) -> int | None:
    """``_parse_time``, or an age before now (``90s``, ``15m``, ``2h``, ``7d``); None if neither."""
    age = _AGE.fullmatch(text.strip().lower())
    if age is not None:
        return round(time.time() * 1000 - float(age[1]) * _AGE_SECONDS[age[2]] * 1000)
    return _parse_time(text)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _parse_duration_ms(text: str) -> int | None:
    """Milliseconds from ``500ms``, ``1s``, ``1.5m``, ``2h``, ``1d``; None if not one."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        return None
    return round(float(found[1]) * _DURATION_MS[found[2]])


def _cmd_periodic_add(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    def usage(message: str) -> int:
        print(f"atf-es periodic add: {message}", file=sys.stderr)
        return EXIT_USAGE

    every = grace = start = end = None
    if args.every is not None and (every := _parse_duration_ms(args.every)) is None:
        return usage(f"--every {args.every!r} is not a duration (500ms, 1s, 15m, 2h, 1d)")
    if args.grace is not None and (grace := _parse_duration_ms(args.grace)) is None:
        return usage(f"--grace {args.grace!r} is not a duration (500ms, 1s, 15m, 2h, 1d)")
    for option in ("start", "end"):
        text = getattr(args, option)
        if text is not None and _parse_time(text) is None:
            return usage(
                f"--{option} {text!r} is not a time: give ISO 8601 with a time zone "
                "(2026-12-03T09:00:00+01:00) or epoch milliseconds"
            )
    if args.start is not None:
        start = _parse_time(args.start)
    if args.end is not None:
        end = _parse_time(args.end)
    with _client(args, settings) as client:
        info = client.set_periodic(
            args.name,
            args.lambda_name,
            cron=args.cron,
            every=None if every is None else every / 1000,
            payload=args.payload.encode(),
            collection=args.collection,
            priority=args.priority,
            time_zone=args.tz,
            start_ms=start,
            end_ms=end,
            misfire=args.misfire,
            catch_up_max=args.catch_up_max,
            misfire_grace_ms=grace,
            by=f"{args.by or _user()} (atf-es periodic)",
        )
    nxt = "never (it has ended)" if info.next_fire_ms is None else f"{_utc(info.next_fire_ms)} UTC"
    print(f"{info.name}: {info.lambda_name} {info.when}; fires next at {nxt}", file=out)
    return EXIT_OK


def _cmd_periodic_list(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with _client(args, settings) as client:
        schedules = client.periodic(args.lambda_name)
    if args.json:
        rows = [
            dataclasses.asdict(info) | {"payload": info.payload.decode("utf-8", "replace")}
            for info in schedules
        ]
        print(json.dumps(rows, indent=2), file=out)
        return EXIT_OK
    if not schedules:
        print("no periodic schedules", file=out)
    for info in schedules:
        if info.paused:
            state = "paused"
        elif info.next_fire_ms is None:
            state = "ended"
        else:
            state = f"next {_utc(info.next_fire_ms)} UTC"
        target = f"{info.lambda_name}/{info.collection} p{info.priority}"
        print(
            f"{info.name:<24} {target:<30} {info.when:<32} {state}  by {info.set_by}",
            file=out,
        )
    return EXIT_OK


def _chain_steps(text: str, source: str) -> tuple[dict[str, Any], list[ChainStep]] | str:
    """The chain a ``chain run`` file describes, or why it cannot be read."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"{source} is not JSON: {exc}"
    if not isinstance(spec, dict) or not isinstance(spec.get("nodes"), list):
        return f'{source} must be a JSON object with a list "nodes"'
    steps = []
    for index, node in enumerate(spec["nodes"]):
        if not isinstance(node, dict) or not {"name", "lambda"} <= node.keys():
            return f'{source}: nodes[{index}] must be an object with "name" and "lambda"'
        delay = _parse_duration_ms(str(node.get("delay", "0s")))
        if delay is None:
            return f"{source}: nodes[{index}].delay {node.get('delay')!r} is not a duration (5s)"
        after = node.get("after", [])
        if not isinstance(after, list):
            return f"{source}: nodes[{index}].after must be a list of node names"
        steps.append(
            ChainStep(
                str(node["name"]),
                str(node["lambda"]),
                str(node.get("payload", "")).encode(),
                [str(a) for a in after],
                str(node.get("collection", "default")),
                int(node.get("priority", 0)),
                delay / 1000,
            )
        )
    return spec, steps


def _cmd_chain_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    source = "standard input" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        print(f"atf-es chain run: cannot read {source}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    parsed = _chain_steps(text, source)
    if isinstance(parsed, str):
        print(f"atf-es chain run: {parsed}", file=sys.stderr)
        return EXIT_USAGE
    spec, steps = parsed
    with _client(args, settings) as client:
        chain_id, ids = client.schedule_chain(
            steps,
            chain_id=spec.get("chain_id"),
            on_failure=str(spec.get("on_failure", "stop")),
        )
    print(
        f"chain {chain_id}: {len(ids)} tasks; follow it with: atf-es chain status {chain_id}",
        file=out,
    )
    for name, task_id in ids.items():
        print(f"  {name:<24} {task_id}", file=out)
    return EXIT_OK


def _cmd_chain_status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with _client(args, settings) as client:
        info = client.chain(args.chain_id)
    if args.json:
        print(json.dumps(dataclasses.asdict(info), default=_jsonable, indent=2), file=out)
    else:
        print(f"chain {info.chain_id}: {info.state} (on failure: {info.on_failure})", file=out)
        print(f"  {info.summary}", file=out)
        for node in info.nodes:
            after = f" after {', '.join(node.parents)}" if node.parents else ""
            detail = ""
            if node.blocked_by is not None:
                detail = f"  (blocked by {node.blocked_by})"
            elif node.task is not None and node.task.last_error:
                detail = f"  error: {node.task.last_error}"
            print(f"  {node.name:<20} {node.state:<17} {node.task_id}{after}{detail}", file=out)
    return EXIT_FAILURE if info.state == "failed" else EXIT_OK


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _cmd_periodic_change(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    action = args.periodic_action
    with _client(args, settings) as client:
        if action == "remove":
            if not client.remove_periodic(args.name):
                print(
                    f"atf-es periodic remove: there is no schedule {args.name!r}", file=sys.stderr
                )
                return EXIT_FAILURE
            print(f"{args.name}: removed", file=out)
            return EXIT_OK
        by = f"{args.by or _user()} (atf-es periodic)"
        if action == "pause":
            info = client.pause_periodic(args.name, by=by)
        else:
            info = client.resume_periodic(args.name, by=by)
    print(f"{info.name}: {'paused' if info.paused else 'resumed'}", file=out)
    return EXIT_OK


def _dlq_times(args: argparse.Namespace, command: str) -> tuple[int | None, int | None] | None:
    """``--since`` and ``--until`` as epoch ms; None (after saying why) if one is not a time."""
    times: list[int | None] = []
    for flag, text in (("--since", args.since), ("--until", args.until)):
        if text is None:
            times.append(None)
            continue
        when = _parse_when(text)
        if when is None:
            print(
                f"atf-es dlq {command}: {flag} {text!r} is not a time: give ISO 8601 with a "
                "time zone (2026-11-29T15:30:00Z), epoch milliseconds or an age (2h, 7d)",
                file=sys.stderr,
            )
            return None
        times.append(when)
    return times[0], times[1]


def _first_line(text: str | None, width: int = 60) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def _counts_line(counts: dict[str, DeadLetterCount], lambda_name: str | None) -> str:
    if lambda_name is not None:
        count = counts.get(lambda_name)
        if count is None:
            return f"dead letters of {lambda_name}: none"
        parts = ", ".join(f"{c} {n}" for c, n in count.by_collection.items())
        return f"dead letters of {lambda_name}: {count.count} ({parts})"
    if not counts:
        return "dead letters: none"
    total = sum(count.count for count in counts.values())
    parts = ", ".join(f"{name} {count.count}" for name, count in counts.items())
    return f"dead letters: {parts} ({total} in all)"


def _cmd_dlq_list(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    times = _dlq_times(args, "list")
    if times is None:
        return EXIT_USAGE
    if args.limit < 0:
        print(f"atf-es dlq list: --limit must not be negative, got {args.limit}", file=sys.stderr)
        return EXIT_USAGE
    since, until = times
    with _client(args, settings) as client:
        counts = client.dead_letter_counts(args.lambda_name)
        if args.counts:
            return _print_counts(counts, args.json, out)
        filters: dict[str, Any] = {
            "collection": args.collection,
            "error_contains": args.error,
            "after": since,
            "before": until,
        }
        limit = args.limit or None
        page = client.dead_letter_page(
            args.lambda_name, page_size=min(limit or 1000, 1000), **filters
        )
        total, tasks, token = page.total, list(page.tasks), page.next_page_token
        while token and (limit is None or len(tasks) < limit):
            size = 1000 if limit is None else min(1000, limit - len(tasks))
            page = client.dead_letter_page(
                args.lambda_name, page_size=size, page_token=token, **filters
            )
            tasks += page.tasks
            token = page.next_page_token
    if args.json:
        document = {
            "counts": {name: dataclasses.asdict(count) for name, count in counts.items()},
            "matching": total,
            "tasks": [_task_json(task) for task in tasks],
        }
        print(json.dumps(document, indent=2), file=out)
        return EXIT_OK
    print(_counts_line(counts, args.lambda_name), file=out)
    if not tasks:
        print("no dead letters match", file=out)
        return EXIT_OK
    print(
        f"{'task_id':<32}  {'lambda':<16} {'collection':<14} {'attempts':>8}  "
        f"{'dead-lettered (UTC)':<23}  last error",
        file=out,
    )
    for task in tasks:
        print(
            f"{task.task_id:<32}  {task.lambda_name:<16} {task.collection:<14} "
            f"{task.attempts:>8}  {_utc(task.finished_at_ms or 0):<23}  "
            f"{_first_line(task.last_error)}",
            file=out,
        )
    shown = f"{len(tasks)} of {total}" if len(tasks) < total else f"all {total}"
    more = " (--limit N to see more, 0 for all)" if len(tasks) < total else ""
    print(f"showing {shown} matching dead letters{more}", file=out)
    return EXIT_OK


def _print_counts(counts: dict[str, DeadLetterCount], as_json: bool, out: TextIO) -> int:
    if as_json:
        document = {name: dataclasses.asdict(count) for name, count in counts.items()}
        print(json.dumps(document, indent=2), file=out)
        return EXIT_OK
    if not counts:
        print("no dead letters", file=out)
        return EXIT_OK
    print(
        f"{'lambda':<24} {'count':>7}  {'oldest (UTC)':<23}  {'newest (UTC)':<23}  by collection",
        file=out,
    )
    for name, count in counts.items():
        collections = ", ".join(f"{c} {n}" for c, n in count.by_collection.items())
        print(
            f"{name:<24} {count.count:>7}  {_utc(count.oldest_at_ms):<23}  "
            f"{_utc(count.newest_at_ms):<23}  {collections}",
            file=out,
        )
    return EXIT_OK


def _task_json(task: TaskInfo) -> dict[str, Any]:
    return {
        name: (value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
        for name, value in dataclasses.asdict(task).items()
    } | {"status": task.status.value}


def _cmd_dlq_show(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    with _client(args, settings) as client:
        info = client.get(args.task_id)
        history_problem = None
        try:
            entries = client.history(args.task_id)
        except TaskNotFound as exc:
            entries, history_problem = [], exc.message
    dead = info.status is TaskStatus.DEAD_LETTERED
    failures = [e for e in entries if e.error is not None]
    redrives = [e for e in entries if e.kind == "TASK_REDRIVEN"]
    if args.json:
        document = {
            "task": _task_json(info),
            "failures": [dataclasses.asdict(e) | {"status": e.status.value} for e in failures],
            "redrives": [dataclasses.asdict(e) | {"status": e.status.value} for e in redrives],
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        print(f"task {info.task_id}: {info.status.value}", file=out)
        rows = [
            ("lambda", info.lambda_name),
            ("collection", info.collection),
            ("priority", str(info.priority)),
            ("attempts", str(info.attempts)),
            ("created", f"{_utc(info.created_at_ms)} UTC"),
        ]
        if info.finished_at_ms is not None:
            label = "dead-lettered" if dead else "finished"
            rows.append((label, f"{_utc(info.finished_at_ms)} UTC"))
        for label, value in rows:
            print(f"  {label + ':':<15}{value}", file=out)
        error = (info.last_error or "-").rstrip()
        lines = error.splitlines() or ["-"]
        print(f"  {'last error:':<15}{lines[0]}", file=out)
        for line in lines[1:]:
            print(f"  {'':<15}{line}", file=out)
        if history_problem is not None:
            print(f"history: not available ({history_problem})", file=out)
        else:
            print(f"failures ({len(failures)}):", file=out)
            for e in failures:
                print(
                    f"  {_utc(e.at_ms)}  {e.kind.lower():<20} {_first_line(e.error, 100)}",
                    file=out,
                )
            for e in redrives:
                print(
                    f"redriven {_utc(e.at_ms)} UTC by {e.requested_by or '-'}: {e.reason or '-'}",
                    file=out,
                )
    if not dead:
        print(
            f"atf-es dlq show: task {info.task_id} is not dead-lettered: its status is "
            f"{info.status.value}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_dlq_redrive(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    def usage(message: str) -> int:
        print(f"atf-es dlq redrive: {message}", file=sys.stderr)
        return EXIT_USAGE

    forms = [bool(args.task_ids), args.lambda_name is not None, args.all_of is not None]
    if sum(forms) != 1:
        return usage("name the tasks: TASK_ID..., or --lambda LAMBDA [filters], or --all-of LAMBDA")
    narrowing = [args.collection, args.error, args.since, args.until]
    if not forms[1] and any(value is not None for value in narrowing):
        return usage("--collection, --error, --since and --until go with --lambda")
    if not args.reason.strip():
        return usage("--reason is required: say why (it is kept in each task's history)")
    times = _dlq_times(args, "redrive")
    if times is None:
        return EXIT_USAGE
    by = f"{args.by or _user()} (atf-es dlq)"
    with _client(args, settings) as client:
        if args.task_ids:
            target: list[str] | DeadLetterFilter = list(args.task_ids)
            described = f"{len(set(args.task_ids))} tasks"
        else:
            lambda_name = args.all_of if args.all_of is not None else args.lambda_name
            target = DeadLetterFilter(lambda_name, args.collection, args.error, times[0], times[1])
            scope = lambda_name + (f"/{args.collection}" if args.collection else "")
            if not args.yes:
                page = client.dead_letter_page(
                    lambda_name,
                    collection=args.collection,
                    error_contains=args.error,
                    after=times[0],
                    before=times[1],
                    page_size=1,
                )
                print(f"would redrive {page.total} dead letters of {scope}", file=out)
                return usage("a set of dead letters is redriven only with --yes")
            described = f"the dead letters of {scope}"
        result = client.redrive(target, reason=args.reason, by=by)
    if not result.replies:
        print(f"nothing to redrive: no dead letters match ({described})", file=out)
        return EXIT_OK
    print(
        f"redriven {len(result.redriven)} of {len(result.replies)} ({described}) by {by}: "
        f"{args.reason}",
        file=out,
    )
    for reply in result.refused:
        print(f"  not redriven {reply.task_id}: {reply.code}: {reply.message}", file=out)
    if result.refused:
        print(
            f"atf-es dlq redrive: {len(result.refused)} of {len(result.replies)} tasks were "
            "not redriven (listed above)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _require_bootstrap(settings: Settings, command: str) -> str | None:
    if settings.kafka_bootstrap is None:
        print(
            f"atf-es {command}: no broker configured; pass --bootstrap HOST:PORT or set "
            "ATF_KAFKA_BOOTSTRAP (the embedded broker lives only as long as 'atf-es dev').",
            file=sys.stderr,
        )
    return settings.kafka_bootstrap


def _cmd_topics(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    specs = core_topic_specs(settings)
    if args.dry_run:
        print(f"topics for prefix {settings.topic_prefix!r}:", file=out)
        _print_topics(out, specs)
        return EXIT_OK
    bootstrap = _require_bootstrap(settings, "topics")
    if bootstrap is None:
        return EXIT_USAGE
    result = ensure_topics(
        bootstrap, specs, settings.kafka_config, replication_factor=settings.replication_factor
    )
    print(
        f"topics on {bootstrap}: {len(result.created)} created, "
        f"{len(result.existing)} already existed",
        file=out,
    )
    _print_topics(out, specs, result)
    return EXIT_OK


def _cmd_config(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    del args
    for f in fields(settings):
        if f.name in ("sources", "kafka_config"):
            continue
        value = getattr(settings, f.name)
        if f.name == "auth_token" and value is not None:
            shown = "********"
        elif value is None:
            shown = "(embedded broker)" if f.name == "kafka_bootstrap" else "(unset)"
        else:
            shown = str(value)
        source = settings.source_of(f.name)
        env = "" if source.startswith("environment") else f"  [{env_var_for(f.name)}]"
        print(f"{f.name:<22} = {shown:<24} # {source}{env}", file=out)
    kafka = settings.redacted_kafka_config()
    if not kafka:
        print(
            f"{'kafka_config':<22} = {{}}{'':<22} # none set  [{ENV_KAFKA_PREFIX}<KEY>]", file=out
        )
    for key, value in sorted(kafka.items()):
        print(f"kafka.{key:<16} = {value:<24} # {settings.source_of('kafka.' + key)}", file=out)
    return EXIT_OK


def _cmd_define(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    bootstrap = _require_bootstrap(settings, "define")
    if bootstrap is None:
        return EXIT_USAGE
    app = load_app(args.app)
    if not app.lambdas:
        print(f"atf-es define: app {app.name!r} has no lambdas", file=sys.stderr)
        return EXIT_USAGE
    app.define(settings, bootstrap)
    for name in sorted(app.lambdas):
        policy = app.lambdas[name].policy
        print(
            f"defined {name}: {policy.priorities} priorities, max {policy.max_attempts} attempts",
            file=out,
        )
    print(f"app {app.name}: {len(app.lambdas)} lambdas defined at {bootstrap}", file=out)
    return EXIT_OK


def _cmd_health(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    credentials = Credentials(tls_ca_file=settings.tls_ca_file)
    with open_channel(args.address, credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {args.address}: {exc.code().name}: {exc.details()}", file=out)
            return EXIT_FAILURE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}", file=out)
    return EXIT_OK if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILURE


def _cmd_check(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    bootstrap = _require_bootstrap(settings, "check")
    if bootstrap is None:
        return EXIT_USAGE
    admin = admin_client(bootstrap, settings.kafka_config)
    try:
        metadata = admin.list_topics(timeout=args.timeout)
    except Exception as exc:
        print(f"unhealthy: broker {bootstrap} did not answer: {exc}", file=out)
        return EXIT_FAILURE
    present = {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}
    print(f"broker {bootstrap}: reachable ({len(metadata.brokers)} broker(s))", file=out)
    healthy = True
    for spec in core_topic_specs(settings):
        actual = present.get(spec.name)
        if actual is None:
            healthy = False
            print(f"  missing  {spec.name}", file=out)
        elif spec.exact_partitions and actual != spec.partitions:
            healthy = False
            print(
                f"  wrong    {spec.name}: {actual} partitions, expected {spec.partitions}",
                file=out,
            )
        else:
            print(f"  ok       {spec.name} ({actual} partitions)", file=out)
    print("healthy" if healthy else "unhealthy (run 'atf-es topics' to create topics)", file=out)
    return EXIT_OK if healthy else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``atf-es`` command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    logs.configure("text", verbose=verbose)
    out = sys.stdout
    try:
        settings = _settings_from(args)
    except ConfigError as exc:
        print("atf-es: the configuration is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log_format, verbose=verbose)
    handler: Callable[[argparse.Namespace, Settings, TextIO], int] = args.handler
    metrics_server: metrics.MetricsServer | None = None
    if getattr(args, "serves_metrics", False) and settings.metrics_address:
        try:
            metrics_server = metrics.serve(settings.metrics_address)
        except (OSError, ValueError) as exc:
            print(
                f"atf-es: cannot serve metrics on {settings.metrics_address}: {exc}",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(f"metrics: {metrics_server.url}", file=out, flush=True)
    try:
        return handler(args, settings, out)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"atf-es: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except TopicMismatchError as exc:
        for problem in exc.problems:
            print(f"atf-es: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokerError as exc:
        print(f"atf-es: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except AppLoadError as exc:
        print(f"atf-es: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AtfError as exc:
        print(f"atf-es: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    finally:
        if metrics_server is not None:
            metrics_server.stop()
