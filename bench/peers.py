"""Celery and Dramatiq as benchmark peers of atf-es, on a private Redis.

Both run the same no-op task (``bench/peer_apps/ledger.py``): it appends ``"<key> <time_ns>"`` to a
per-process ledger file and returns ``key``, so execution start times are measured the same way for
every system (``read_ledger``). Completion is observed through each framework's own result backend.

Worker processes run from the repository root with ``PYTHONPATH`` set to it and log to files in
the peer's work directory. ``submit`` and ``wait_all`` are meant to be called from one thread.

Probe tasks (keys starting with ``PROBE_PREFIX``) also land in the ledger.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from dramatiq import Actor, Message
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results.backends.redis import RedisBackend

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE_PREFIX = "__probe__"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
_POLL_S = 0.01
_BENCH_MODULES = ("celery", "dramatiq", "redis", "matplotlib")


# --- installation -------------------------------------------------------------------------------


def _bench_requirements() -> list[str]:
    """The ``bench`` extra of pyproject.toml, the one list of what the peers need."""
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return [str(r) for r in data["project"]["optional-dependencies"]["bench"]]


def _run(cmd: list[str], env: dict[str, str] | None = None) -> int:
    try:
        return subprocess.run(cmd, env=env, check=False).returncode
    except OSError as e:
        raise RuntimeError(f"could not run {' '.join(cmd)!r}: {e}") from e


def ensure_installed(say: Callable[[str], None] = print) -> None:
    """Install what the peers need if missing.

    pip-installs the ``bench`` extra's packages into ``sys.executable``'s environment when one of
    them cannot be imported, and ``apt-get install -y redis-server`` (with sudo unless root) when
    there is no ``redis-server`` on PATH. Raises RuntimeError if that fails.
    """
    missing = [m for m in _BENCH_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        reqs = _bench_requirements()
        say(f"installing {' '.join(reqs)} into {sys.prefix} (not importable: {', '.join(missing)})")
        if _run([sys.executable, "-m", "pip", "install", *reqs]) != 0:
            raise RuntimeError(
                f"pip could not install the bench extra ({' '.join(reqs)}) into {sys.prefix}"
            )
        importlib.invalidate_caches()
        still = [m for m in _BENCH_MODULES if importlib.util.find_spec(m) is None]
        if still:
            raise RuntimeError(f"still not importable after pip install: {', '.join(still)}")
    if shutil.which("redis-server") is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [*sudo, "apt-get", "install", "-y", "redis-server"]
        say(f"installing redis-server: {' '.join(install)}")
        if _run(install, env) != 0:
            say("apt-get install failed; running apt-get update and trying again")
            _run([*sudo, "apt-get", "update"], env)
            if _run(install, env) != 0:
                raise RuntimeError("apt-get could not install redis-server")
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is still not on PATH after apt-get install")


# --- processes ----------------------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    """``root``'s live descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        fields = stat.rsplit(")", 1)[-1].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _Process:
    """A subprocess in its own session whose stdout and stderr go to one log file."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self._log: IO[bytes] | None = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        try:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            self._log = None
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{what} exited with status {self.popen.returncode}; "
                f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
            )

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _stop_processes(procs: Sequence[_Process], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every process, SIGKILL the process group of any still running after ``timeout``."""
    for p in procs:
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            # Not reaped yet, so its pid is still its process group's id.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.popen.wait()
    for p in procs:
        p.close()


def _worker_env(redis_url: str, ledger_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["BENCH_REDIS_URL"] = redis_url
    env["BENCH_LEDGER_DIR"] = str(ledger_dir)
    return env


def _import_peer_app(module: str) -> Any:
    """Import ``bench.peer_apps.<module>`` (the repo root need not be on sys.path)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(f"bench.peer_apps.{module}")


def _probe_key() -> str:
    return f"{PROBE_PREFIX}{uuid.uuid4().hex}"


# --- Redis --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throwaway redis-server on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.url = ""
        self.pid: int | None = None
        self._proc: _Process | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH (see ensure_installed)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # the free port may be taken before redis binds it
            port = _free_port()
            # fmt: off
            cmd = [
                exe, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                "--dir", str(self.workdir), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", "",
            ]
            # fmt: on
            proc = _Process(cmd, self.workdir / f"redis-{port}.log")
            self._proc = proc
            self.pid = proc.pid
            deadline = time.monotonic() + timeout
            try:
                while proc.alive() and time.monotonic() < deadline:
                    if _pings(port):
                        self.port = port
                        self.url = f"redis://127.0.0.1:{port}/0"
                        return self
                    time.sleep(_POLL_S)
            except BaseException:
                self.stop()
                raise
            self.stop()
        raise RuntimeError(f"redis-server did not answer PING; see logs in {self.workdir}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        self.pid = None
        if proc is not None:
            _stop_processes([proc], timeout=10.0)

    def __enter__(self) -> RedisServer:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- peers --------------------------------------------------------------------------------------


class Peer(Protocol):
    name: str

    def start(self) -> None: ...

    def submit(self, key: str, delay_s: float = 0.0) -> object: ...

    def wait_all(self, handles: Sequence[object], timeout: float) -> int: ...

    def pids(self) -> list[int]: ...

    def stop(self) -> None: ...


class _PeerBase:
    name = ""

    def __init__(
        self, redis_url: str, workdir: Path, workers: int, threads: int, ledger_dir: Path
    ) -> None:
        if workers < 1 or threads < 1:
            raise ValueError("workers and threads must be at least 1")
        self.redis_url = redis_url
        self.workdir = workdir
        self.workers = workers
        self.threads = threads
        self.ledger_dir = ledger_dir
        self._procs: list[_Process] = []

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        raise NotImplementedError

    def _spawn(self, cmd: list[str], log_name: str) -> _Process:
        proc = _Process(cmd, self.workdir / log_name, _worker_env(self.redis_url, self.ledger_dir))
        self._procs.append(proc)
        return proc

    def _check_alive(self) -> None:
        for p in self._procs:
            p.check_alive(f"{self.name} worker (pid {p.pid})")

    def _probe(self, deadline: float) -> None:
        handle = self.submit(_probe_key())
        while self.wait_all([handle], min(1.0, max(0.0, deadline - time.monotonic()))) != 1:
            self._check_alive()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name}: probe task not done within {READY_TIMEOUT_S} s")

    def submit(self, key: str, delay_s: float = 0.0) -> object:
        raise NotImplementedError

    def wait_all(self, handles: Sequence[object], timeout: float) -> int:
        raise NotImplementedError

    def pids(self) -> list[int]:
        out: list[int] = []
        for p in self._procs:
            if p.alive():
                out.append(p.pid)
                out.extend(_descendants(p.pid))
        return out

    def _close_client(self) -> None:
        pass

    def stop(self) -> None:
        procs, self._procs = self._procs, []
        try:
            _stop_processes(procs)
        finally:
            self._close_client()


class CeleryPeer(_PeerBase):
    """``workers`` ``celery worker --pool threads --concurrency threads`` processes."""

    name = "celery"

    def __init__(
        self, redis_url: str, workdir: Path, workers: int, threads: int, ledger_dir: Path
    ) -> None:
        super().__init__(redis_url, workdir, workers, threads, ledger_dir)
        self._tag = f"bench-{uuid.uuid4().hex[:8]}"
        self._app: Any = None
        self._task: Any = None
        self._timeout_error: type[Exception] = TimeoutError

    def _start(self) -> None:
        celery_app = _import_peer_app("celery_app")
        from celery.exceptions import (  # type: ignore[import-untyped]
            TimeoutError as CeleryTimeoutError,
        )

        self._timeout_error = CeleryTimeoutError
        self._app, self._task = celery_app.make_app(self.redis_url)
        for i in range(self.workers):
            # fmt: off
            cmd = [
                sys.executable, "-m", "celery", "-A", "bench.peer_apps.celery_app", "worker",
                "--pool", "threads", "--concurrency", str(self.threads),
                "--hostname", f"{self._tag}-{i}@%h", "--loglevel", "WARNING",
            ]
            # fmt: on
            self._spawn(cmd, f"celery-{self._tag}-{i}.log")
        deadline = time.monotonic() + READY_TIMEOUT_S
        expected = {f"{self._tag}-{i}" for i in range(self.workers)}
        while True:
            self._check_alive()
            replies = self._app.control.ping(timeout=0.5)
            answered = {name.split("@", 1)[0] for reply in replies for name in reply}
            if expected <= answered:
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"celery: workers {sorted(expected - answered)} did not answer ping "
                    f"within {READY_TIMEOUT_S} s; logs in {self.workdir}"
                )
        self._probe(deadline)

    def submit(self, key: str, delay_s: float = 0.0) -> object:
        if delay_s > 0:
            return self._task.apply_async((key,), countdown=delay_s)
        return self._task.apply_async((key,))

    def wait_all(self, handles: Sequence[object], timeout: float) -> int:
        """``AsyncResult.get`` on each handle in turn (Redis pub/sub, with a GET first).

        Results that arrived while waiting for an earlier handle are buffered by Celery, so each
        handle costs at most one round trip once its task is done. After the deadline the rest are
        checked once each with ``ready()``.
        """
        deadline = time.monotonic() + timeout
        count = 0
        for handle in handles:
            result = cast(Any, handle)
            remaining = deadline - time.monotonic()
            if remaining > 0:  # get(timeout=0) would wait forever
                try:
                    result.get(timeout=remaining, interval=min(0.5, remaining), propagate=False)
                except self._timeout_error:
                    pass
                else:
                    count += 1
                    continue
            if result.ready():
                count += 1
        return count

    def _close_client(self) -> None:
        app, self._app = self._app, None
        if app is None:
            return
        consumer = app.backend.result_consumer
        with contextlib.suppress(Exception):
            consumer.stop()  # closes the pub/sub connection, and with it its subscriptions
        # An AsyncResult still subscribed (never waited for) unsubscribes when collected, and
        # Celery retries that for many seconds once Redis is gone: forget the subscriptions.
        consumer.subscribed_to.clear()
        app.close()


class DramatiqPeer(_PeerBase):
    """One ``dramatiq --processes workers --threads threads`` command."""

    name = "dramatiq"
    _READY_LINE = "Worker process is ready for action."

    def __init__(
        self, redis_url: str, workdir: Path, workers: int, threads: int, ledger_dir: Path
    ) -> None:
        super().__init__(redis_url, workdir, workers, threads, ledger_dir)
        self._broker: RedisBroker | None = None
        self._actor: Actor[[str], str] | None = None
        self._backend: RedisBackend | None = None

    def _start(self) -> None:
        dramatiq_app = _import_peer_app("dramatiq_app")
        self._broker, self._actor, self._backend = dramatiq_app.make_broker(self.redis_url)
        # fmt: off
        cmd = [
            sys.executable, "-m", "dramatiq", "bench.peer_apps.dramatiq_app",
            "--processes", str(self.workers), "--threads", str(self.threads),
        ]
        # fmt: on
        proc = self._spawn(cmd, f"dramatiq-{uuid.uuid4().hex[:8]}.log")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self._check_alive()
            log = proc.log_path.read_text(encoding="utf-8", errors="replace")
            if log.count(self._READY_LINE) >= self.workers:
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"dramatiq: workers not ready within {READY_TIMEOUT_S} s; "
                    f"last lines of {proc.log_path}:\n{_log_tail(proc.log_path)}"
                )
            time.sleep(_POLL_S)
        self._probe(deadline)

    def submit(self, key: str, delay_s: float = 0.0) -> object:
        if self._actor is None:
            raise RuntimeError("dramatiq peer not started")
        if delay_s > 0:
            return self._actor.send_with_options(args=(key,), delay=max(1, round(delay_s * 1000)))
        return self._actor.send(key)

    def wait_all(self, handles: Sequence[object], timeout: float) -> int:
        """Block on each message's result in turn (BRPOPLPUSH in whole seconds, then polling)."""
        from dramatiq.results import ResultFailure, ResultMissing, ResultTimeout

        if self._backend is None:
            raise RuntimeError("dramatiq peer not started")
        backend = self._backend
        deadline = time.monotonic() + timeout
        count = 0
        for handle in handles:
            message = cast("Message[str]", handle)
            while True:
                remaining = deadline - time.monotonic()
                try:
                    if remaining >= 1.0:
                        # The Redis backend blocks in whole seconds (rounded down).
                        message.get_result(
                            backend=backend, block=True, timeout=int(remaining * 1000)
                        )
                    else:
                        message.get_result(backend=backend)
                except ResultFailure:  # the actor raised: its result is observed all the same
                    pass
                except (ResultMissing, ResultTimeout):
                    if remaining <= 0:
                        break  # past the deadline: check the others once each, no waiting
                    time.sleep(min(_POLL_S, remaining))
                    continue
                count += 1
                break
        return count

    def _close_client(self) -> None:
        broker, self._broker = self._broker, None
        self._actor = None
        backend, self._backend = self._backend, None
        if broker is not None:
            broker.close()
        if backend is not None:
            backend.client.close()


# --- ledger -------------------------------------------------------------------------------------


def read_ledger(ledger_dir: Path) -> dict[str, int]:
    """Map each key in ``ledger_dir/ledger-*.txt`` to its earliest recorded start (time_ns)."""
    starts: dict[str, int] = {}
    for path in sorted(ledger_dir.glob("ledger-*.txt")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                key, sep, ns = line.rstrip("\n").rpartition(" ")
                if not sep or not ns.isdigit():
                    continue  # a line still being written
                t = int(ns)
                if key not in starts or t < starts[key]:
                    starts[key] = t
    return starts
