"""Readiness and drain: health follows the database and a usable signing key; SIGTERM drains.

The PostgreSQL outage goes through a loopback TCP proxy the test closes (every
connection cut, nothing accepted) and reopens on the same port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_server.storage import signing_keys
from helpers import EventLoopThread, make_config, postgres_schema, start_harness, wait_until
from protos import auth_pb2, auth_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def loop() -> Iterator[EventLoopThread]:
    lt = EventLoopThread()
    yield lt
    lt.close()


def health_of(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def readyz(base_url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_no_usable_signing_key_is_not_ready_until_one_exists(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    auth = start_harness(loop, make_config(tmp_path, readiness_interval=0.1))
    try:
        assert health_of(auth.channel) == SERVING
        assert readyz(auth.server.http_base_url) == (200, "ready\n")
        database = auth.server.components.database
        with database.transaction(write=True) as conn:
            conn.execute(signing_keys.update().values(revoked_at=1.0))
        assert wait_until(lambda: health_of(auth.channel) == NOT_SERVING)
        assert readyz(auth.server.http_base_url) == (503, "not ready: no usable signing key\n")
        with urllib.request.urlopen(f"{auth.server.http_base_url}/healthz", timeout=5) as r:
            assert r.status == 200  # alive all the same
        auth.server.components.keys.ensure_signing_key()
        assert wait_until(lambda: health_of(auth.channel) == SERVING)
        assert readyz(auth.server.http_base_url)[0] == 200
    finally:
        auth.channel.close()
        auth.stop()


class TcpProxy:
    """Forwards a loopback port to ``upstream``; ``close()`` cuts everything, ``open()`` resumes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            listener.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.mark.postgres
def test_readiness_follows_a_postgresql_outage_through_a_proxy(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    base = os.environ.get("SSOT_TEST_DATABASE_URL")
    if not base:
        pytest.skip("SSOT_TEST_DATABASE_URL is not set")
    url = sa.make_url(base)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.open()
    try:
        with postgres_schema(base) as schema_url:
            proxied = sa.make_url(schema_url).set(host="127.0.0.1", port=proxy.port)
            config = make_config(
                tmp_path,
                proxied.render_as_string(hide_password=False),
                readiness_interval=0.1,
            )
            auth = start_harness(loop, config)
            try:
                assert health_of(auth.channel) == SERVING
                proxy.close()
                assert wait_until(lambda: health_of(auth.channel) == NOT_SERVING, 20)
                assert readyz(auth.server.http_base_url) == (
                    503,
                    "not ready: database unreachable\n",
                )
                proxy.open()
                assert wait_until(lambda: health_of(auth.channel) == SERVING, 20)
                assert readyz(auth.server.http_base_url)[0] == 200
            finally:
                auth.channel.close()
                auth.stop()
    finally:
        proxy.close()


def test_stopping_turns_health_off_and_ends_push_streams_with_the_drain_status(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    auth = start_harness(loop, make_config(tmp_path))
    stream = auth_pb2_grpc.AuthServiceStub(auth.channel).WatchJwks(
        auth_pb2.WatchJwksRequest(), timeout=30
    )
    assert next(stream).keys  # the stream is open and has delivered the set
    statuses: list[int] = []

    def watch_health() -> None:
        replies = health_pb2_grpc.HealthStub(auth.channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=30
        )
        with contextlib.suppress(grpc.RpcError):  # the server went away, as it should
            statuses.extend(int(r.status) for r in replies)

    watcher = threading.Thread(target=watch_health, daemon=True)
    try:
        watcher.start()
        assert wait_until(lambda: statuses == [SERVING])
        loop.run(auth.server.stop(1.0))
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert ended.value.details() == "server shutting down"  # type: ignore[attr-defined]
        watcher.join(10)
        assert statuses[:2] == [SERVING, NOT_SERVING]
    finally:
        auth.channel.close()
