"""``serve --workers N``: real processes sharing ports, supervised, stopped cleanly.

The auth service and the resource service each run with two workers; calls go
through fresh connections (which the kernel spreads over the workers), a worker
killed with SIGKILL is started again (and the parent says so), SIGTERM stops the
lot with exit code 0, and a port another program holds is one line of error.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from helpers import PASSPHRASE, protected_call, wait_until
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc

pytestmark = pytest.mark.slow  # real processes

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "workers-password-1"
AUDIENCE = "workers-test"
STARTUP = 90.0  # two workers on a shared 2-core machine, argon2 and a new RSA key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_port_pair() -> int:
    """A port P with P + 1 free too: with --workers 2, worker n serves --metrics on P + n - 1."""
    for _ in range(50):
        port = _free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    env.update(PYTHONPATH=str(ROOT), SSOT_KEY_PASSPHRASE=PASSPHRASE.decode())
    return env


@dataclass
class Served:
    proc: subprocess.Popen[str]
    log: Path

    def text(self) -> str:
        return self.log.read_text()

    def workers(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def _serve(module: str, args: list[str], log: Path, workers: int = 2) -> Served:
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "serve", *args, "--workers", str(workers)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
            env=_env(),
            cwd=ROOT,
        )
    return Served(proc, log)


@pytest.fixture
def running() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(30)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, waiting only for its (new) parent to reap it


def _restarted(served: Served, killed: int) -> bool:
    workers = served.workers()
    return len(workers) == 2 and killed not in workers and "restarting it" in served.text()


def test_two_workers_of_each_server_serve_restart_and_stop_cleanly(
    tmp_path: Path, running: list[Served]
) -> None:
    data = tmp_path / "data"
    added = subprocess.run(
        [
            *(sys.executable, "-m", "auth_server", "users", "add", "alice"),
            *("--scope", "resource.read", "--password-stdin", "--data-dir", str(data)),
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    grpc_port, http_port, resource_port = _free_port(), _free_port(), _free_port()
    auth_metrics, resource_metrics = _free_port_pair(), _free_port_pair()
    issuer = f"http://127.0.0.1:{http_port}"
    common = ["--issuer", issuer, "--audience", AUDIENCE]
    auth = _serve(
        "auth_server",
        [
            *("--data-dir", str(data), "--grpc", f"127.0.0.1:{grpc_port}"),
            *("--http", f"127.0.0.1:{http_port}", *common),
            *("--metrics", f"127.0.0.1:{auth_metrics}"),
        ],
        tmp_path / "auth.log",
    )
    running.append(auth)
    assert wait_until(lambda: "all 2 workers serving" in auth.text(), STARTUP), auth.text()
    resource = _serve(
        "resource_server",
        [
            *("--grpc", f"127.0.0.1:{resource_port}"),
            *("--auth-target", f"127.0.0.1:{grpc_port}", *common),
            *("--metrics", f"127.0.0.1:{resource_metrics}"),
        ],
        tmp_path / "resource.log",
    )
    running.append(resource)
    assert wait_until(lambda: "all 2 workers serving" in resource.text(), STARTUP), resource.text()

    def calls_pass(times: int = 6) -> None:
        # A new connection each time: the kernel hands each to one of the workers.
        for _ in range(times):
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                login = stub.Login(
                    auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=30
                )
                refreshed = stub.Refresh(
                    auth_pb2.RefreshRequest(refresh_token=login.refresh_token), timeout=30
                )
            with grpc.insecure_channel(f"127.0.0.1:{resource_port}") as channel:
                assert protected_call(channel, refreshed.access_token) == grpc.StatusCode.OK
                assert protected_call(channel, "not-a-token") == grpc.StatusCode.UNAUTHENTICATED
                resource_pb2_grpc.ResourceServiceStub(channel).GetPublicInfo(
                    resource_pb2.GetPublicInfoRequest(), timeout=10
                )

    calls_pass()
    # Each worker keeps its own counters, so each has its own metrics port.
    for port in (auth_metrics, auth_metrics + 1):
        assert "ssot_auth_rpcs_total" in _scrape(port)
    for port in (resource_metrics, resource_metrics + 1):
        assert "ssot_verifier_verifications_total" in _scrape(port)
    before = {served.proc.pid: served.workers() for served in (auth, resource)}
    assert all(len(workers) == 2 for workers in before.values()), before

    for served in (auth, resource):
        _kill_one_worker(served)
    # The restarted workers serve: wait for their ready lines, then call again.
    assert wait_until(lambda: auth.text().count("auth service ready") == 3, STARTUP), auth.text()
    assert wait_until(lambda: len([w for w in resource.workers() if not _gone(w)]) == 2, STARTUP)
    calls_pass()

    for served in (resource, auth):
        _stop_cleanly(served)


def _kill_one_worker(served: Served) -> None:
    killed = served.workers()[0]
    os.kill(killed, signal.SIGKILL)
    assert wait_until(lambda: _restarted(served, killed), STARTUP), served.text()
    assert f"(pid {killed}) exited unexpectedly (signal 9); restarting it" in served.text()
    assert wait_until(lambda: served.text().count("started (pid") == 3, STARTUP)


def _stop_cleanly(served: Served) -> None:
    workers = served.workers()
    assert served.stop() == 0, served.text()
    assert wait_until(lambda: all(_gone(pid) for pid in workers), 30), workers
    assert "stopping 2 workers" in served.text()
    assert served.text().count("stopped (exit code 0)") == 2, served.text()
    assert "Traceback" not in served.text()


@pytest.mark.parametrize("module", ["auth_server", "resource_server"])
def test_a_port_in_use_is_one_line_and_a_failing_exit(module: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--grpc", f"127.0.0.1:{port}", "--issuer", "http://127.0.0.1:1"]
        args += ["--audience", AUDIENCE]
        if module == "auth_server":
            args += ["--data-dir", str(tmp_path / "data"), "--http", f"127.0.0.1:{_free_port()}"]
        else:
            args += ["--jwks-url", "http://127.0.0.1:1/.well-known/jwks.json"]
        done = subprocess.run(
            [sys.executable, "-m", module, "serve", *args, "--workers", "2"],
            capture_output=True,
            text=True,
            env=_env(),
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    assert done.returncode not in (0, None)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port} (--grpc)" in lines[0]


def test_workers_are_a_positive_number_or_auto(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resource_server", "serve", "--workers", "0"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers: must be at least 1" in done.stderr


def test_two_workers_rotate_the_signing_key_once_per_interval(
    tmp_path: Path, running: list[Served]
) -> None:
    # Each worker runs the key scheduler; the database lock (SQLite's write lock
    # across processes here, an advisory lock on PostgreSQL) lets one act per change.
    data, interval = tmp_path / "data", 5
    http_port = _free_port()
    auth = _serve(
        "auth_server",
        [
            *("--data-dir", str(data), "--grpc", f"127.0.0.1:{_free_port()}"),
            *("--http", f"127.0.0.1:{http_port}", "--issuer", f"http://127.0.0.1:{http_port}"),
            *("--audience", AUDIENCE, "--jwks-max-age", "1", "--key-activate-after", "2"),
            *("--key-rotation-interval", str(interval), "--access-token-ttl", "30"),
        ],
        tmp_path / "auth.log",
    )
    running.append(auth)
    assert wait_until(lambda: "all 2 workers serving" in auth.text(), STARTUP), auth.text()
    assert wait_until(lambda: auth.text().count('"event":"key.created"') >= 4, 60), auth.text()
    _stop_cleanly(auth)
    listed = subprocess.run(
        [sys.executable, "-m", "auth_server", "keys", "list", "--json", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    keys = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(keys) == auth.text().count('"event":"key.created"')
    starts = sorted(float(key["activates_at"]) for key in keys)
    # One key per interval: a second worker acting on the same change would have
    # made a key activating at (nearly) the same time.
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps and min(gaps) >= interval - 0.5, starts
