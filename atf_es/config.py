"""One typed, validated settings object for every atf-es process.

Values are layered, later layers winning:

1. defaults (the field defaults of :class:`Settings`);
2. an optional TOML file (``--config FILE`` or ``ATF_CONFIG``): top-level keys
   are field names, the ``[kafka]`` table is ``kafka_config``;
3. ``ATF_<FIELD>`` environment variables, e.g. ``ATF_PARTITIONS=16``;
   ``ATF_KAFKA__<KEY>`` sets one ``kafka_config`` entry: the ``__`` separates
   the table from the key, and inside the key ``_`` becomes ``.`` and letters
   are lower-cased, so ``ATF_KAFKA__SASL_MECHANISM=PLAIN`` sets
   ``sasl.mechanism``. (A client property whose name contains ``_`` can only be
   set in the file);
4. explicit overrides (command-line flags).

``kafka_config`` is merged key by key across layers; every other field is
replaced as a whole. Every problem found, in any layer, is reported at once in
one :class:`ConfigError`, each naming the field and where its value came from.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "ENV_CONFIG_FILE",
    "ENV_KAFKA_PREFIX",
    "ENV_PREFIX",
    "LOG_FORMATS",
    "PRIORITY_POLICIES",
    "ConfigError",
    "Settings",
    "env_var_for",
    "load_settings",
    "validate_topic_prefix",
]

ENV_PREFIX = "ATF_"
ENV_KAFKA_PREFIX = "ATF_KAFKA__"
ENV_CONFIG_FILE = "ATF_CONFIG"

HOUR_MS = 60 * 60 * 1000
DAY_MS = 24 * HOUR_MS

# Kafka allows 249 characters in a topic name; the longest name we derive is
# "<prefix>.exec.<100-char lambda>.p<priority>", so the prefix must leave room.
MAX_TOPIC_PREFIX_LEN = 120
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]+$")

# Values that must never be echoed back by `atf-es config`.
_SECRET_KEY_PARTS = ("password", "secret", "token", "key")

LOG_FORMATS = ("text", "json")
"""Values of ``Settings.log_format``."""

PRIORITY_POLICIES = ("strict", "aging")
"""How a Controller picks among buffered priorities (see docs/priorities.md)."""

DEFAULT_SOURCE = "default"
ARGUMENT_SOURCE = "argument"


class ConfigError(ValueError):
    """The configuration cannot work; ``problems`` holds one sentence per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


def env_var_for(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return ENV_PREFIX + field_name.upper()


def validate_topic_prefix(prefix: object) -> str | None:
    """Return why ``prefix`` cannot start Kafka topic names, or None if it can."""
    if not isinstance(prefix, str):
        return f"must be a string, got {type(prefix).__name__}"
    if not prefix:
        return "must not be empty"
    if len(prefix) > MAX_TOPIC_PREFIX_LEN:
        return f"must be at most {MAX_TOPIC_PREFIX_LEN} characters, got {len(prefix)}"
    if not _TOPIC_PREFIX.match(prefix):
        return (
            f"{prefix!r} may only contain ASCII letters, digits, '.', '_' and '-' "
            "(it starts Kafka topic names)"
        )
    if prefix.endswith("."):
        return f"{prefix!r} must not end with '.' (the separator is added automatically)"
    if prefix.startswith("__"):
        return f"{prefix!r} must not start with '__' (Kafka reserves those topic names)"
    return None


def _validate_bootstrap(value: str) -> str | None:
    if not value.strip():
        return "must not be blank (leave it unset to start the embedded broker)"
    for server in value.split(","):
        address = server.strip()
        if "://" in address:
            address = address.split("://", 1)[1]
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"{server.strip()!r} is not host:port (expected e.g. 'localhost:9092')"
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything an atf-es process needs to know; validated at construction."""

    kafka_bootstrap: str | None = None
    """Comma-separated Kafka bootstrap servers; None starts the embedded broker."""
    topic_prefix: str = "atf"
    """Every topic name starts with ``<topic_prefix>.``."""
    partitions: int = 8
    """Partition count of the commands and task-events topics (co-partitioned)."""
    replication_factor: int = 1
    audit_window_ms: int = 7 * DAY_MS
    """How long the event log keeps full history (its ``min.compaction.lag.ms``)."""
    finished_retention_ms: int = 7 * DAY_MS
    """How long a finished task (succeeded, failed fatally, cancelled or dropped)
    is kept after it finished; then its partition's processor writes a
    tombstone for it and drops it from the projection (0: keep forever). See
    docs/retention.md."""
    dead_letter_retention_ms: int = 30 * DAY_MS
    """The same for dead-lettered tasks, which wait for someone to redrive them
    (0: keep forever)."""
    command_retention_ms: int = 7 * DAY_MS
    exec_retention_ms: int = DAY_MS
    reply_retention_ms: int = HOUR_MS
    data_dir: Path = Path(".atf-data")
    """Local state: RocksDB projections and the embedded broker's log."""
    poll_interval_ms: int = 50
    """How often the store consumer looks for due timers."""
    session_timeout_ms: int = 10_000
    """Consumer-group session timeout; a dead member is noticed after this long."""
    max_enqueued: int = 1_000
    """Enqueued-but-unclaimed tasks allowed per (lambda, priority); the rest wait."""
    max_batch: int = 500
    """Most records a processor takes from Kafka per poll (one transaction each batch)."""
    commit_interval_ms: int = 20
    """Shortest time between two transactions of one partition; commands that
    arrive sooner wait and share the next one (0: commit every poll). Under
    load it turns many small transactions into fewer larger ones; a command
    that finds the partition idle for this long is committed at once."""
    commands_fetch_wait_ms: int = 20
    """How long the broker may hold a processor's fetch of the commands topic
    while no command is there (Kafka's ``fetch.wait.max.ms``; every other
    consumer uses 20 ms). Apache Kafka answers such a fetch as soon as a
    command arrives, so there a longer wait only spaces out idle fetches.
    The embedded broker holds it for the whole wait, so a longer one delays
    a lone command, but under load it means fewer, larger fetches, and each
    fetch that finds data costs that broker a pass over the partition's
    stored batches: 100 ms took a fifth off its CPU and lowered p95 delivery
    at 25-50 % load, and nearly doubled it at 6 tasks/s (docs/benchmarks.md,
    "Commands fetch wait")."""
    frontend_address: str = "127.0.0.1:7070"
    """host:port of the Frontend gRPC service (where it listens, where clients call)."""
    hsc_address: str = "127.0.0.1:7071"
    """host:port of the Heartbeat and Status Controller."""
    controller_address: str = "127.0.0.1:7072"
    """host:port of this worker host's Controller (executors call it)."""
    priority_policy: str = "aging"
    """How a Controller picks the next buffered item: ``strict`` always takes the
    highest non-empty priority; ``aging`` does too, except that an item buffered
    longer than ``priority_aging_ms`` goes first (the oldest such item first), so
    a flood of high priority cannot starve the low levels forever."""
    priority_aging_ms: int = 60_000
    """With ``priority_policy = "aging"``: how long an item waits in a Controller's
    buffer before it is served ahead of higher priorities."""
    executor_prefetch: int = 0
    """1: each executor thread claims its next task while it runs the current
    one, so the claim's round trip through the processor is off the thread's
    path (like Celery's and Dramatiq's prefetch). The cost: a task claimed
    behind a callback that runs longer than the lambda's ``claim_timeout_ms``
    is enqueued again after that timeout, and the task still waits for its
    first heartbeat to start. 0 (the default): a thread claims tasks only
    when it is free to run them, and that claim starts them (up to
    ``executor_batch``), which measured faster (docs/benchmarks.md)."""
    controller_buffer: int = 256
    """The most items a Controller holds per (lambda, priority), read from
    the exec topics and not yet claimed; a full buffer pauses reading until
    it has drained to half. It should hold what the host's executor threads
    take at once (threads x ``executor_batch``), or they wait for the
    Controller's next fetch (docs/benchmarks.md)."""
    executor_batch: int = 32
    """The most tasks an executor thread without prefetch claims in one
    ``NextWork``, all started by that one claim and run one after the other.
    A thread asks for more than one only while the lambda's callbacks are
    short: so many that the last waits at most 50 ms behind the others, by
    the executor's running estimate of a callback's time (which jumps up on
    a slow callback and comes down slowly). Only tasks already waiting in
    the Controller are batched; an idle system still claims one at a time.
    1: one task per claim."""
    dashboard_address: str = "127.0.0.1:7080"
    """host:port where ``atf-es dashboard`` serves the web dashboard."""
    metrics_address: str | None = None
    """host:port where a service serves Prometheus ``/metrics`` (port 0: any free
    port, printed at start); None: no metrics endpoint. See docs/metrics.md."""
    log_format: str = "text"
    """``text`` (one line per record) or ``json`` (one JSON object per record,
    with ``task_id`` and the other context fields as keys)."""
    auth_tokens_file: Path | None = None
    """Server side: a TOML file of principals (token, roles, lambdas). When set,
    every gRPC call must carry a token from it; see docs/security.md."""
    auth_token: str | None = None
    """Client side: the bearer token sent with every gRPC call (workers and CLI)."""
    tls_cert_file: Path | None = None
    """Server side: PEM certificate chain; with ``tls_key_file`` the gRPC services
    listen with TLS only."""
    tls_key_file: Path | None = None
    """Server side: the PEM private key of ``tls_cert_file``."""
    tls_ca_file: Path | None = None
    """Client side: PEM root certificates to verify the services with; when set,
    clients connect with TLS."""
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    """librdkafka properties passed to every client (SASL, SSL, ...)."""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each value came from, by field name (``kafka.<key>`` for kafka_config)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kafka_config", MappingProxyType(dict(self.kafka_config)))
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))
        if isinstance(self.data_dir, str) and self.data_dir.strip():
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        problems = self._problems()
        if problems:
            raise ConfigError(problems)

    def source_of(self, name: str) -> str:
        """Where the value of field ``name`` (or ``kafka.<key>``) came from."""
        return self.sources.get(name, DEFAULT_SOURCE)

    def client_config(self, bootstrap: str, **extra: str) -> dict[str, str]:
        """Configuration for one confluent-kafka client talking to ``bootstrap``."""
        return {**self.kafka_config, "bootstrap.servers": bootstrap, **extra}

    def redacted_kafka_config(self) -> dict[str, str]:
        """``kafka_config`` with secrets masked, for printing."""
        return {
            k: ("********" if any(p in k.lower() for p in _SECRET_KEY_PARTS) else v)
            for k, v in self.kafka_config.items()
        }

    def _problems(self) -> list[str]:
        problems: list[str] = []

        def bad(name: str, why: str) -> None:
            problems.append(f"{name} {why} (from {self.source_of(name)}).")

        if self.kafka_bootstrap is not None:
            if not isinstance(self.kafka_bootstrap, str):
                bad("kafka_bootstrap", "must be a string")
            elif (why := _validate_bootstrap(self.kafka_bootstrap)) is not None:
                bad("kafka_bootstrap", why)
        if (why := validate_topic_prefix(self.topic_prefix)) is not None:
            bad("topic_prefix", why)
        limits = {
            "partitions": (1, 10_000),
            "replication_factor": (1, 32),
            "audit_window_ms": (0, None),
            "finished_retention_ms": (0, None),
            "dead_letter_retention_ms": (0, None),
            "command_retention_ms": (1, None),
            "exec_retention_ms": (1, None),
            "reply_retention_ms": (1, None),
            "poll_interval_ms": (1, 60_000),
            # Kafka's default broker bounds (group.{min,max}.session.timeout.ms)
            # are 6 s and 30 min; below 1 s no real client can keep up.
            "session_timeout_ms": (1_000, 1_800_000),
            "max_enqueued": (1, 1_000_000),
            "max_batch": (1, 100_000),
            "commit_interval_ms": (0, 10_000),
            "commands_fetch_wait_ms": (1, 10_000),
            "priority_aging_ms": (1, DAY_MS),
            "executor_prefetch": (0, 1),
            "executor_batch": (1, 100),
            "controller_buffer": (1, 100_000),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                bad(name, f"must be an integer, got {value!r}")
            elif value < low or (high is not None and value > high):
                bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
                bad(name, f"must be {bounds}, got {value}")
        if self.priority_policy not in PRIORITY_POLICIES:
            choices = " or ".join(map(repr, PRIORITY_POLICIES))
            bad("priority_policy", f"must be {choices}, got {self.priority_policy!r}")
        if not isinstance(self.data_dir, Path):
            bad("data_dir", "must be a non-empty path")
        if self.log_format not in LOG_FORMATS:
            choices = " or ".join(map(repr, LOG_FORMATS))
            bad("log_format", f"must be {choices}, got {self.log_format!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (
                ("tls_cert_file", "tls_key_file")
                if self.tls_key_file is None
                else ("tls_key_file", "tls_cert_file")
            )
            bad(given, f"needs {missing} too (a TLS server needs its certificate and key)")
        if self.auth_token is not None and (
            not isinstance(self.auth_token, str) or not self.auth_token.strip()
        ):
            bad("auth_token", "must be a non-blank string")
        for name in (*_ADDRESS_FIELDS, *_OPTIONAL_ADDRESS_FIELDS):
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_ADDRESS_FIELDS:
                continue
            host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
                bad(name, f"must be host:port (e.g. '127.0.0.1:7070'), got {value!r}")
        for key, value in self.kafka_config.items():
            where = self.source_of(f"kafka.{key}")
            if not isinstance(key, str) or not key or not isinstance(value, str):
                problems.append(
                    f"kafka_config entry {key!r} must map a property name to a string "
                    f"(from {where})."
                )
            elif key == "bootstrap.servers":
                problems.append(
                    "kafka_config must not set bootstrap.servers; set kafka_bootstrap "
                    f"(ATF_KAFKA_BOOTSTRAP or --bootstrap) instead (from {where})."
                )
        return problems


_FIELDS = {f.name: f for f in fields(Settings) if f.name != "sources"}
_ADDRESS_FIELDS = ("frontend_address", "hsc_address", "controller_address", "dashboard_address")
_OPTIONAL_ADDRESS_FIELDS = ("metrics_address",)
_OPTIONAL_PATH_FIELDS = ("auth_tokens_file", "tls_cert_file", "tls_key_file", "tls_ca_file")
_SCALARS = {name for name in _FIELDS if name != "kafka_config"}
_INT_FIELDS = {
    "partitions",
    "replication_factor",
    "audit_window_ms",
    "finished_retention_ms",
    "dead_letter_retention_ms",
    "command_retention_ms",
    "exec_retention_ms",
    "reply_retention_ms",
    "poll_interval_ms",
    "session_timeout_ms",
    "max_enqueued",
    "max_batch",
    "commit_interval_ms",
    "commands_fetch_wait_ms",
    "priority_aging_ms",
    "executor_prefetch",
    "executor_batch",
    "controller_buffer",
}


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # TOML dotted keys (sasl.mechanism = "PLAIN") arrive as nested tables.
    flat: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def _kafka_value(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


class _Layers:
    """Accumulates values, their sources and problems across layers."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.kafka: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.problems: list[str] = []

    def set(self, name: str, value: Any, source: str, *, text: bool = False) -> None:
        # Environment values are text and get parsed; TOML and overrides are typed.
        if name in _INT_FIELDS:
            if text and isinstance(value, str):
                try:
                    value = int(value.strip().replace("_", ""))
                except ValueError:
                    self.problems.append(
                        f"{name} must be an integer, got {value!r} (from {source})."
                    )
                    return
            if not isinstance(value, int) or isinstance(value, bool):
                self.problems.append(f"{name} must be an integer, got {value!r} (from {source}).")
                return
        elif name == "data_dir":
            if not isinstance(value, str | Path) or not str(value).strip():
                self.problems.append(f"data_dir must be a non-empty path (from {source}).")
                return
            value = Path(value)
        elif name in _OPTIONAL_PATH_FIELDS:
            if value in (None, ""):
                value = None
            elif not isinstance(value, str | Path):
                self.problems.append(f"{name} must be a path, got {value!r} (from {source}).")
                return
            else:
                value = Path(value)
        elif name in (
            "kafka_bootstrap",
            "topic_prefix",
            "priority_policy",
            "log_format",
            "auth_token",
            *_ADDRESS_FIELDS,
            *_OPTIONAL_ADDRESS_FIELDS,
        ):
            if name in ("kafka_bootstrap", "auth_token", *_OPTIONAL_ADDRESS_FIELDS) and value in (
                None,
                "",
            ):
                value = None
            elif not isinstance(value, str):
                self.problems.append(f"{name} must be a string, got {value!r} (from {source}).")
                return
        self.values[name] = value
        self.sources[name] = source

    def set_kafka(self, key: str, value: object, source: str) -> None:
        text = _kafka_value(value)
        if text is None:
            self.problems.append(
                f"kafka_config entry {key!r} must be a string, number or boolean, "
                f"got {value!r} (from {source})."
            )
            return
        self.kafka[key] = text
        self.sources[f"kafka.{key}"] = source


def _read_file(path: Path, layers: _Layers) -> None:
    source = f"config file {path}"
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        layers.problems.append(f"The config file {path} does not exist.")
        return
    except OSError as exc:
        layers.problems.append(f"The config file {path} cannot be read: {exc.strerror}.")
        return
    except tomllib.TOMLDecodeError as exc:
        layers.problems.append(f"The config file {path} is not valid TOML: {exc}.")
        return
    known = [*sorted(_SCALARS), "kafka"]
    for key, value in data.items():
        if key == "kafka":
            if not isinstance(value, Mapping):
                layers.problems.append(
                    f"kafka must be a table of client properties (from {source})."
                )
                continue
            for kafka_key, kafka_value in _flatten(value).items():
                layers.set_kafka(kafka_key, kafka_value, source)
        elif key in _SCALARS:
            layers.set(key, value, source)
        else:
            hint = _suggest(key, known) or f"; known settings are {', '.join(known)}."
            layers.problems.append(f"{key!r} is not a setting (from {source}){hint}")


def _read_env(env: Mapping[str, str], layers: _Layers) -> None:
    known = [env_var_for(name) for name in sorted(_SCALARS)]
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var == ENV_CONFIG_FILE:
            continue
        value = env[var]
        source = f"environment variable {var}"
        if var.startswith(ENV_KAFKA_PREFIX):
            raw_key = var[len(ENV_KAFKA_PREFIX) :]
            if not raw_key:
                layers.problems.append(f"{var} names no Kafka property (from {source}).")
                continue
            layers.set_kafka(raw_key.lower().replace("_", "."), value, source)
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name in _SCALARS:
            layers.set(name, value, source, text=True)
        else:
            hint = _suggest(var, [*known, ENV_CONFIG_FILE]) or (
                f"; known variables are {', '.join(known)}, {ENV_CONFIG_FILE} and "
                f"{ENV_KAFKA_PREFIX}<PROPERTY>."
            )
            layers.problems.append(f"The environment variable {var} is not an atf-es setting{hint}")


def load_settings(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_source: str = "command line",
) -> Settings:
    """Build validated :class:`Settings` from defaults, file, environment and overrides.

    ``env`` defaults to ``os.environ``; pass a dict to isolate from the process.
    ``config_file`` defaults to ``$ATF_CONFIG`` when that is set. ``overrides``
    maps field names to values (``None`` values are ignored, so unset CLI flags
    can be passed through); ``kafka_config`` overrides merge key by key.
    Raises :class:`ConfigError` listing every problem.
    """
    environ = os.environ if env is None else env
    layers = _Layers()
    if config_file is None and environ.get(ENV_CONFIG_FILE):
        config_file = environ[ENV_CONFIG_FILE]
    if config_file is not None:
        _read_file(Path(config_file), layers)
    _read_env(environ, layers)
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name == "kafka_config":
            for key, kafka_value in dict(value).items():
                layers.set_kafka(key, kafka_value, override_source)
        elif name in _SCALARS:
            layers.set(name, value, override_source)
        else:
            raise TypeError(f"unknown setting {name!r} in overrides")
    try:
        settings = Settings(**layers.values, kafka_config=layers.kafka, sources=layers.sources)
    except ConfigError as exc:
        raise ConfigError([*layers.problems, *exc.problems]) from None
    if layers.problems:
        raise ConfigError(layers.problems)
    return settings
