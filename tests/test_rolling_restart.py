"""A rolling restart of two auth replicas under traffic loses no honest call (issue 12).

Two ``python -m auth_server serve`` processes share one PostgreSQL schema. A client
logs in, refreshes and reads the key set in a loop, alternating between them and
retrying a call that fails with ``UNAVAILABLE`` once on the other replica, as a
client behind a load balancer does. A second client follows ``WatchJwks`` and moves
to the other replica when its stream ends. Replica 1 gets SIGTERM, exits 0 within
its grace, starts again; then replica 2. No honest call may fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers import PASSPHRASE, postgres_schema, wait_until
from protos import auth_pb2, auth_pb2_grpc

pytestmark = pytest.mark.slow  # real processes

ROOT = Path(__file__).resolve().parent.parent
PG_ENV = "SSOT_TEST_DATABASE_URL"
AUDIENCE = "rolling-restart"
PASSWORD = "rolling restart password"
GRACE = 3.0
# Exit within the grace plus this: interpreter shutdown, database pool, HTTP runner.
EXIT_MARGIN = 7.0
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    grpc_target: str
    command: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    exits: list[tuple[int | None, float]] = field(default_factory=list)
    # The log goes to a file: an undrained stderr pipe fills after ~64 KiB of log
    # lines and then blocks the server in the middle of a call.
    log: Any = None

    def start(self) -> None:
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- read and closed by terminate
        self.proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the server prints that it serves
        if "ssot-auth serving" not in line:
            self.proc.kill()
            self.proc.communicate(timeout=10)
            pytest.fail(f"replica did not start: {line!r} {self._log_text()[-2000:]}")
        assert wait_until(self.serving, timeout=20), "replica never reported SERVING"

    def serving(self) -> bool:
        with grpc.insecure_channel(self.grpc_target) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2
                )
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def terminate(self) -> tuple[int | None, float, str]:
        """SIGTERM; the exit code and how long the process took to go."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=GRACE + EXIT_MARGIN)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)
        took = time.monotonic() - started
        self.exits.append((self.proc.returncode, took))
        return self.proc.returncode, took, self._log_text()

    def _log_text(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        text = str(self.log.read())
        self.log.close()
        self.log = None
        return text

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)
        self._log_text()  # closes the log file


@dataclass
class Traffic:
    """What the clients saw."""

    ok: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    stream_moves: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSOT_", "OTEL_"))}
    env.update(PYTHONPATH=str(ROOT), SSOT_KEY_PASSPHRASE=PASSPHRASE.decode())
    return env


@pytest.fixture
def database_url() -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(
            f"two replicas share state through PostgreSQL: set {PG_ENV}"
            " (the embedded SQLite store belongs to one process)"
        )
    with postgres_schema(base) as url:
        yield url


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[list[Replica]]:
    env = _env()
    issuer = "http://127.0.0.1:8080"  # one issuer for both replicas
    added = subprocess.run(
        [
            sys.executable,
            "-m",
            "auth_server",
            "--log-level",
            "WARNING",
            "users",
            "add",
            "alice",
            "--password-stdin",
            "--data-dir",
            str(tmp_path / "admin"),
            "--database-url",
            database_url,
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    made = []
    for number in (1, 2):
        target = f"127.0.0.1:{_free_port()}"
        command = [
            sys.executable,
            "-m",
            "auth_server",
            "--log-level",
            "WARNING",
            "serve",
            "--data-dir",
            str(tmp_path / f"replica{number}"),
            "--database-url",
            database_url,
            "--grpc",
            target,
            "--http",
            f"127.0.0.1:{_free_port()}",
            "--issuer",
            issuer,
            "--audience",
            AUDIENCE,
            "--shutdown-grace",
            str(GRACE),
            "--max-sessions-per-user",
            "100000",
        ]
        made.append(Replica(grpc_target=target, command=command, env=env))
    try:
        for replica in made:  # one after the other: the first creates the schema and key
            replica.start()
        yield made
    finally:
        for replica in made:
            replica.kill()


class RetryingClient:
    """Calls one replica; on UNAVAILABLE, the same call once more on the other."""

    def __init__(self, replicas: list[Replica], traffic: Traffic) -> None:
        self._stubs = [
            auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(r.grpc_target)) for r in replicas
        ]
        self._traffic = traffic
        self._turn = 0

    def call(self, what: str, invoke: Callable[[auth_pb2_grpc.AuthServiceStub], Any]) -> Any:
        self._turn += 1
        first = self._turn % 2
        try:
            answer = invoke(self._stubs[first])
        except grpc.RpcError as exc:
            if exc.code() is not UNAVAILABLE:  # type: ignore[attr-defined]
                return self._failed(what, exc)
            with self._traffic.lock:
                self._traffic.retried += 1
            try:
                answer = invoke(self._stubs[1 - first])
            except grpc.RpcError as again:
                return self._failed(what, again)
        with self._traffic.lock:
            self._traffic.ok += 1
        return answer

    def _failed(self, what: str, exc: grpc.RpcError) -> None:
        self.fail(f"{what}: {exc.code()} {exc.details()}")  # type: ignore[attr-defined]

    def fail(self, message: str) -> None:
        with self._traffic.lock:
            self._traffic.failures.append(message)


def _honest_calls(client: RetryingClient, stop: threading.Event) -> None:
    def login(stub: auth_pb2_grpc.AuthServiceStub) -> Any:
        return stub.Login(auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=10)

    tokens = client.call("Login", login)
    round_ = 0
    while not stop.is_set():
        round_ += 1
        jwks = client.call(
            "GetJwks", lambda stub: stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=10)
        )
        if jwks is not None and not jwks.keys:
            client.fail("GetJwks: an empty key set")
        if tokens is None or round_ % 5 == 0:
            tokens = client.call("Login", login)
            continue
        request = auth_pb2.RefreshRequest(refresh_token=tokens.refresh_token)
        tokens = client.call("Refresh", lambda stub, r=request: stub.Refresh(r, timeout=10))


def _cancel_on(stop: threading.Event, stream: Any) -> None:
    stop.wait()
    stream.cancel()


def _watch_keys(replicas: list[Replica], traffic: Traffic, stop: threading.Event) -> None:
    """Follow WatchJwks; when a stream ends, open it on the other replica at once."""
    index = 0
    while not stop.is_set():
        with grpc.insecure_channel(replicas[index].grpc_target) as channel:
            stream = auth_pb2_grpc.AuthServiceStub(channel).WatchJwks(auth_pb2.WatchJwksRequest())
            threading.Thread(target=_cancel_on, args=(stop, stream), daemon=True).start()
            try:
                for update in stream:
                    if not update.keys:
                        with traffic.lock:
                            traffic.failures.append("WatchJwks: an empty key set")
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
                if code is grpc.StatusCode.CANCELLED and stop.is_set():
                    return
                with traffic.lock:
                    traffic.stream_moves.append(f"{code.name}: {details}")
            index = 1 - index


def test_a_rolling_restart_of_two_replicas_fails_no_honest_call(replicas: list[Replica]) -> None:
    traffic = Traffic()
    stop = threading.Event()
    client = RetryingClient(replicas, traffic)
    workers = [
        threading.Thread(target=_honest_calls, args=(client, stop), name="honest"),
        threading.Thread(target=_watch_keys, args=(replicas, traffic, stop), name="watch"),
    ]
    for worker in workers:
        worker.start()
    try:
        assert wait_until(lambda: traffic.ok >= 10, timeout=30), "no traffic before the restart"
        for replica in replicas:
            wanted = traffic.ok + 10
            code, took, err = replica.terminate()
            assert code == 0, err[-2000:]
            assert took < GRACE + EXIT_MARGIN
            replica.start()
            # Some calls on the way back before the next replica goes.
            assert wait_until(lambda n=wanted: traffic.ok >= n, timeout=30)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)

    assert traffic.failures == []
    assert [code for code, _ in replicas[0].exits + replicas[1].exits] == [0, 0]
    # The restarts were felt: calls were turned away and went to the other replica...
    assert traffic.retried >= 1
    # ...and the key stream was ended by the draining replica, not broken.
    assert "UNAVAILABLE: server shutting down" in traffic.stream_moves
