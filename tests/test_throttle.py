"""Login throttling: each layer alone (on each database), then a brute force over real sockets."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from auth_server.errors import LoginThrottled
from auth_server.passwords import Argon2Parameters, PasswordHasher
from auth_server.storage import Database, users
from auth_server.throttle import LoginThrottle, ThrottlePolicy, client_address
from helpers import (
    AuthHarness,
    Clock,
    EventLoopThread,
    make_config,
    run_concurrently,
    start_harness,
)
from protos import auth_pb2, auth_pb2_grpc

T0 = 1_700_000_000.0
PASSWORD = "correct horse battery"


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def throttle(database: Database, clock: Clock, **policy: float) -> LoginThrottle:
    settings: dict[str, float] = {
        "window": 600,
        "per_user_address": 3,
        "per_address": 50,
        "per_user": 50,
        "max_delay": 8,
    }
    settings.update(policy)
    return LoginThrottle(database, ThrottlePolicy(**settings), now=clock)  # type: ignore[arg-type]


def refused(t: LoginThrottle, user: str, address: str) -> float | None:
    """The retry-after if the attempt is refused; None if it is admitted (and fails)."""
    try:
        t.admit(user, address)
    except LoginThrottled as exc:
        assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        return exc.retry_after
    return None


# -- the layers ----------------------------------------------------------------------------


def test_one_user_from_one_address_waits_for_the_window_after_a_few_failures(
    database: Database, clock: Clock
) -> None:
    t = throttle(database, clock)
    for _ in range(3):
        assert refused(t, "alice", "198.51.100.7") is None

    assert refused(t, "alice", "198.51.100.7") == 600
    assert refused(t, "alice", "203.0.113.9") is None  # the user from elsewhere
    assert refused(t, "bob", "198.51.100.7") is None  # another user from that address
    clock.now += 300
    assert refused(t, "alice", "198.51.100.7") == 300  # refused attempts did not extend it
    clock.now += 300
    assert refused(t, "alice", "198.51.100.7") is None


def test_a_success_takes_back_its_attempt_and_clears_the_pair(
    database: Database, clock: Clock
) -> None:
    t = throttle(database, clock)
    for _ in range(2):
        t.admit("alice", "198.51.100.7")
    t.succeeded(t.admit("alice", "198.51.100.7"))

    for _ in range(3):
        assert refused(t, "alice", "198.51.100.7") is None
    assert refused(t, "alice", "198.51.100.7") is not None


def test_one_address_spraying_many_users_is_stopped(database: Database, clock: Clock) -> None:
    t = throttle(database, clock, per_address=5)
    for i in range(5):
        assert refused(t, f"user{i}", "198.51.100.7") is None

    assert refused(t, "user99", "198.51.100.7") == 600
    assert refused(t, "user99", "203.0.113.9") is None


def test_the_per_user_layer_delays_with_a_growing_capped_wait_and_never_locks_out(
    database: Database, clock: Clock
) -> None:
    t = throttle(database, clock, per_user=3, per_user_address=100)
    home = "192.0.2.1"
    t.succeeded(t.admit("alice", home))  # alice logged in from home before the attack
    for i in range(3):
        assert refused(t, "alice", f"198.51.100.{i}") is None

    waits = []
    for i in range(8):
        wait = refused(t, "alice", f"203.0.113.{i}")
        assert wait is not None
        waits.append(wait)
        clock.now += wait
        assert refused(t, "alice", f"203.0.113.{i}") is None  # admitted once the wait is over
        # The victim's known address is never made to wait, nor makes anyone else wait.
        t.succeeded(t.admit("alice", home))

    assert waits == [1, 2, 4, 8, 8, 8, 8, 8]
    # A typo at home counts against the pair only, never delays the user layer.
    assert refused(t, "alice", home) is None
    assert refused(t, "alice", "203.0.113.99") == 8


def test_counters_are_shared_by_replicas(database: Database, clock: Clock) -> None:
    replica_a, replica_b = throttle(database, clock), throttle(database, clock)
    for t in (replica_a, replica_b, replica_a):
        assert refused(t, "alice", "198.51.100.7") is None

    assert refused(replica_b, "alice", "198.51.100.7") is not None


def test_parallel_guesses_cannot_slip_past_the_limit(database: Database, clock: Clock) -> None:
    t = throttle(database, clock, per_user_address=5)
    admitted = run_concurrently(
        lambda _: refused(t, "alice", "198.51.100.7") is None, range(16), timeout=30
    )

    assert admitted.count(True) == 5


def test_purge_forgets_stale_counters_but_remembers_known_addresses(
    database: Database, clock: Clock
) -> None:
    t = throttle(database, clock)
    t.admit("alice", "198.51.100.7")
    t.succeeded(t.admit("bob", "192.0.2.1"))
    clock.now += 3600

    assert t.purge() >= 3
    with database.transaction() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(sa.table("login_throttle")))
        assert left.scalar() == 1  # bob's known address


@pytest.mark.parametrize(
    ("peer", "subject"),
    [
        pytest.param("ipv4:203.0.113.7:51234", "203.0.113.7", id="ipv4"),
        pytest.param("ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64", id="ipv6-64"),
        pytest.param("ipv6:[::ffff:198.51.100.1]:9", "198.51.100.1", id="ipv4-mapped"),
        pytest.param("unix:/run/ssot.sock", "unix:/run/ssot.sock", id="unix"),
        pytest.param("ipv4:garbage", "ipv4:garbage", id="unparsable"),
    ],
)
def test_client_address_is_the_host_or_its_ipv6_64(peer: str, subject: str) -> None:
    assert client_address(peer) == subject


# -- over real sockets ---------------------------------------------------------------------


class SourceAddressProxy:
    """Forwards a local port to the auth server, connecting from another loopback address.

    The auth server then sees the client as ``source`` (as a second machine would look).
    """

    def __init__(self, target_port: int, source: str = "127.0.0.2") -> None:
        self._target = target_port
        self._source = source
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(
                ("127.0.0.1", self._target), source_address=(self._source, 0)
            )
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            s.close()


@pytest.fixture
def attacker(auth_any_db: AuthHarness) -> Iterator[auth_pb2_grpc.AuthServiceStub]:
    proxy = SourceAddressProxy(auth_any_db.server.grpc_port)
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
    yield auth_pb2_grpc.AuthServiceStub(channel)
    channel.close()
    proxy.close()


def _outcome(stub: auth_pb2_grpc.AuthServiceStub, user: str, password: str) -> tuple[str, str]:
    try:
        stub.Login(auth_pb2.LoginRequest(username=user, password=password), timeout=10)
    except grpc.RpcError as err:
        assert isinstance(err, grpc.Call)
        trailers = dict(err.trailing_metadata() or ())
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            retry_after = int(trailers["retry-after"])
            assert 0 < retry_after <= 900
            assert err.details() == "too many login attempts, retry later"
        return err.code().name, err.details() or ""
    return "OK", ""


def test_a_brute_force_is_throttled_while_the_user_still_logs_in_from_elsewhere(
    auth_any_db: AuthHarness,
    attacker: auth_pb2_grpc.AuthServiceStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth_any_db.add_user("alice", PASSWORD)
    hashings = {"n": 0}
    original = PasswordHasher.verify

    def counting_verify(self: PasswordHasher, password_hash: str, password: str) -> bool:
        hashings["n"] += 1
        return original(self, password_hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting_verify)

    answers = [_outcome(attacker, "alice", f"guess-{i:04d}") for i in range(200)]

    bad = ("UNAUTHENTICATED", "invalid username or password")
    throttled = ("RESOURCE_EXHAUSTED", "too many login attempts, retry later")
    assert answers == [bad] * 10 + [throttled] * 190
    assert hashings["n"] == 10  # a throttled attempt never reaches argon2
    # Even the right password is not checked from that address now ...
    assert _outcome(attacker, "alice", PASSWORD) == throttled
    # ... while alice, from her own address, logs in at once.
    assert auth_any_db.login("alice", PASSWORD).access_token
    # An account that does not exist is throttled exactly the same way.
    ghost = [_outcome(attacker, "nobody-here", f"guess-{i:04d}") for i in range(20)]
    assert ghost == [bad] * 10 + [throttled] * 10


def test_argon2_parameters_come_from_the_configuration_and_old_hashes_are_upgraded(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    stronger = Argon2Parameters(time_cost=2, memory_cost=2048, parallelism=2)
    harness = start_harness(loop_thread, make_config(tmp_path, argon2=stronger))
    try:
        harness.add_user("alice", PASSWORD)  # the server's own parameters
        db = harness.server.components.database
        with db.transaction(write=True) as conn:  # as if made by an older configuration
            old = PasswordHasher(Argon2Parameters(time_cost=1, memory_cost=1024)).hash(PASSWORD)
            conn.execute(users.update().values(password_hash=old))

        harness.login("alice", PASSWORD)

        with db.transaction() as conn:
            upgraded = conn.execute(sa.select(users.c.password_hash)).scalar_one()
        assert "m=2048,t=2,p=2" in upgraded
        assert harness.login("alice", PASSWORD).access_token
    finally:
        harness.channel.close()
        harness.stop()


def test_check_refuses_as_admit_would_without_counting(database: Database, clock: Clock) -> None:
    t = throttle(database, clock)
    for _ in range(10):
        t.check("alice", "198.51.100.7")  # counts nothing: never refused
    for _ in range(3):
        assert refused(t, "alice", "198.51.100.7") is None
    with pytest.raises(LoginThrottled) as info:
        t.check("alice", "198.51.100.7")
    assert info.value.retry_after == 600
    t.check("alice", "203.0.113.9")  # the user from elsewhere
    clock.now += 600
    t.check("alice", "198.51.100.7")  # the window is over
