"""An auth server killed (SIGKILL) while clients refresh: the old token or its successor works.

Runs a real ``ssot-auth serve`` process on SQLite, and on PostgreSQL too when
SSOT_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from auth_server.passwords import PasswordHasher
from auth_server.refresh_tokens import hash_refresh_token
from auth_server.storage import Database, sessions, spent_refresh_tokens
from auth_server.users import UserStore
from helpers import FAST_ARGON2, PASSPHRASE
from protos import auth_pb2, auth_pb2_grpc

pytestmark = pytest.mark.slow  # real processes, killed mid-request

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``python -m auth_server serve`` on fixed ports, startable again on the same database."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        self.port = _free_port()
        self.argv = [
            sys.executable,
            "-m",
            "auth_server",
            "serve",
            "--issuer",
            "http://127.0.0.1:8080",
            "--audience",
            "crash-test",
            "--grpc",
            f"127.0.0.1:{self.port}",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--database-url",
            database_url,
            "--argon2-time-cost",
            str(FAST_ARGON2.time_cost),
            "--argon2-memory-cost",
            str(FAST_ARGON2.memory_cost),
        ]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
        self.env.update(PYTHONPATH=str(ROOT), SSOT_KEY_PASSPHRASE=PASSPHRASE.decode())
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "serving gRPC" in line, line

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


@pytest.fixture
def serve(tmp_path: Path, database_url: str) -> Iterator[ServeProcess]:
    db = Database(database_url)
    db.create_schema()
    UserStore(db, PasswordHasher(FAST_ARGON2)).add("alice", PASSWORD)
    db.dispose()
    process = ServeProcess(tmp_path, database_url)
    yield process
    if process.proc is not None:
        process.kill()


def _session_state(database_url: str) -> tuple[str | None, int]:
    """The one session's current token hash and how many tokens it has spent."""
    db = Database(database_url)
    try:
        with db.transaction() as conn:
            [session] = conn.execute(sa.select(sessions)).all()
            spent = conn.execute(
                sa.select(sa.func.count()).select_from(spent_refresh_tokens)
            ).scalar_one()
        return session.refresh_token_hash, int(spent)
    finally:
        db.dispose()


def test_a_kill_in_the_middle_of_refreshing_never_loses_the_session(
    serve: ServeProcess, database_url: str
) -> None:
    serve.start()
    with grpc.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
        token = (
            auth_pb2_grpc.AuthServiceStub(channel)
            .Login(auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=10)
            .refresh_token
        )
    for _ in range(1):  # one kill per backend keeps the suite quick; raise to hunt races
        # The client refreshes as fast as it can; the server is killed under it.
        _, spent_before = _session_state(database_url)
        state = {"token": token, "done": 0}
        stop = threading.Event()

        def hammer(state: dict[str, object] = state, stop: threading.Event = stop) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                while not stop.is_set():
                    try:
                        reply = stub.Refresh(
                            auth_pb2.RefreshRequest(refresh_token=str(state["token"])), timeout=5
                        )
                    except grpc.RpcError:
                        return  # the server is gone
                    state["token"] = reply.refresh_token
                    state["done"] = int(str(state["done"])) + 1

        worker = threading.Thread(target=hammer)
        worker.start()
        deadline = time.monotonic() + 30
        while int(str(state["done"])) < 20 and time.monotonic() < deadline:
            time.sleep(0.005)  # waiting for the worker's progress, not for a clock
        serve.kill()
        stop.set()
        worker.join(10)
        last, done = str(state["token"]), int(str(state["done"]))
        assert done >= 20

        head, spent = _session_state(database_url)
        spent -= spent_before
        # Either the kill came before the commit (the client's token is still the one to
        # spend), or after it and before the answer (it is spent, its successor is next):
        # never both spent, never neither.
        assert head is not None
        if spent == done:
            assert head == hash_refresh_token(last)
        else:
            assert spent == done + 1 and head != hash_refresh_token(last)

        # After a restart the client's last token still refreshes (a repeat within the
        # grace window gets the successor the killed server had already committed).
        serve.start()
        with grpc.insecure_channel(f"127.0.0.1:{serve.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            reply = stub.Refresh(auth_pb2.RefreshRequest(refresh_token=last), timeout=10)
            token = stub.Refresh(
                auth_pb2.RefreshRequest(refresh_token=reply.refresh_token), timeout=10
            ).refresh_token
