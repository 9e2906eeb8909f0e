"""Rotation and revocation with a real clock, against real processes.

``python -m auth_server serve`` with short settings rotates its keys every few
seconds; two ``python -m resource_server serve`` processes verify its tokens, one
subscribed by push (``--auth-target``) and one reading the HTTP JWKS. Client
threads call both throughout; ``python -m auth_server keys revoke`` is the emergency.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from helpers import PASSPHRASE, kid_of, protected_call, wait_until
from protos import auth_pb2, auth_pb2_grpc

pytestmark = pytest.mark.slow  # real processes

ROOT = Path(__file__).resolve().parent.parent
AUDIENCE = "rotation-e2e"
PASSWORD = "rotation e2e password"
MAX_AGE = 2
# Each key is pre-published for a whole interval, so a standby key that every
# verifier has held for over 2 x max-age exists during the last second of each.
INTERVAL = 8
ACTIVATE_AFTER = 8
OK = grpc.StatusCode.OK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class System:
    data_dir: Path
    env: dict[str, str]
    auth_target: str
    push_target: str
    http_target: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "auth_server",
                "--log-level",
                "WARNING",
                *args,
                "--data-dir",
                str(self.data_dir),
            ],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )

    def key_rows(self) -> list[dict[str, object]]:
        out = self.cli("keys", "list", "--json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]


def _start(cmd: list[str], env: dict[str, str], ready: str, log: Path) -> subprocess.Popen[str]:
    # stderr (the servers' log lines) goes to a file: an undrained pipe fills after
    # ~64 KiB of log and then blocks the server in the middle of a call.
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=sink, text=True, env=env, cwd=ROOT
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server prints that it serves
    if ready not in line:
        proc.kill()
        proc.communicate(timeout=10)
        pytest.fail(f"{cmd[2]} did not start: {line!r} {log.read_text()[-2000:]}")
    return proc


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    env.update(PYTHONPATH=str(ROOT), SSOT_KEY_PASSPHRASE=PASSPHRASE.decode())
    return env


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    env = _env()
    grpc_port, http_port = _free_port(), _free_port()
    issuer = f"http://127.0.0.1:{http_port}"
    sysm = System(
        data_dir=tmp_path / "data",
        env=env,
        auth_target=f"127.0.0.1:{grpc_port}",
        push_target=f"127.0.0.1:{_free_port()}",
        http_target=f"127.0.0.1:{_free_port()}",
    )
    added = sysm.cli(
        "users",
        "add",
        "alice",
        "--scope",
        "resource.read",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    common = ["--issuer", issuer, "--audience", AUDIENCE]
    try:
        sysm.procs.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "auth_server",
                    "serve",
                    "--data-dir",
                    str(sysm.data_dir),
                    "--grpc",
                    sysm.auth_target,
                    "--http",
                    f"127.0.0.1:{http_port}",
                    *common,
                    "--jwks-max-age",
                    str(MAX_AGE),
                    "--key-activate-after",
                    str(ACTIVATE_AFTER),
                    "--key-rotation-interval",
                    str(INTERVAL),
                    "--access-token-ttl",
                    "30",
                    # The fresh client logs in every 0.3 s; at the default limit of 50
                    # its logins would end the other client's session (oldest first),
                    # and the push verifier would rightly refuse that token. This test
                    # is about keys, so no session may end for another reason.
                    "--max-sessions-per-user",
                    "100000",
                ],
                env,
                "ssot-auth serving",
                tmp_path / "auth.log",
            )
        )
        for name, target, source in (
            ("push", sysm.push_target, ["--auth-target", sysm.auth_target]),
            ("http", sysm.http_target, ["--jwks-url", f"{issuer}/.well-known/jwks.json"]),
        ):
            sysm.procs.append(
                _start(
                    [
                        sys.executable,
                        "-m",
                        "resource_server",
                        "serve",
                        "--grpc",
                        target,
                        *source,
                        *common,
                    ],
                    env,
                    "ssot-resource serving",
                    tmp_path / f"resource-{name}.log",
                )
            )
        yield sysm
    finally:
        for proc in sysm.procs:
            proc.terminate()
        for proc in sysm.procs:
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=10)


@dataclass
class Log:
    calls: list[tuple[str, str, grpc.StatusCode, bool]] = field(default_factory=list)
    revoked: str | None = None
    revoking: bool = False
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(sysm: System, log: Log, fresh: bool, stop: threading.Event) -> None:
    channels = {
        "auth": grpc.insecure_channel(sysm.auth_target),
        "push": grpc.insecure_channel(sysm.push_target),
        "http": grpc.insecure_channel(sysm.http_target),
    }
    login = auth_pb2_grpc.AuthServiceStub(channels["auth"]).Login
    token: str | None = None
    expires = issued = 0.0
    try:
        while not stop.is_set():
            # The fresh client takes a new token every 0.3 s (a login costs ~0.1 s of
            # argon2 here), so new keys reach the verifiers right as they start signing.
            renew = fresh and time.time() > issued + 0.3
            if token is None or renew or time.time() > expires - 5:
                reply = login(
                    auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=10
                )
                issued = time.time()
                token, expires = reply.access_token, issued + reply.expires_in
            for name in ("push", "http"):
                code = protected_call(channels[name], token)
                # Read after the call: a revocation that lands while the call is in
                # flight (a descheduled thread on a loaded machine) is then counted.
                after = log.revoking
                with log.lock:
                    log.calls.append((name, kid_of(token), code, after))
                if code is grpc.StatusCode.UNAUTHENTICATED:
                    token = None
                    break
            stop.wait(0.02)  # pace the loop: two cores also run three servers
    except BaseException as exc:
        log.errors.append(exc)
    finally:
        for channel in channels.values():
            channel.close()


def _watch(target: str, token: str, refused: dict[str, float], name: str) -> None:
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(target) as channel:
        while time.monotonic() < deadline:
            if protected_call(channel, token) is not OK:
                refused[name] = time.time()
                return


def test_rotations_and_revocation_with_real_processes(system: System) -> None:
    log = Log()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(system, log, fresh, stop), daemon=True)
        for fresh in (True, False, False)
    ]
    for thread in threads:
        thread.start()

    def signed_ok() -> list[str]:
        with log.lock:
            kids = [kid for name, kid, code, _ in log.calls if code is OK and name == "http"]
        return list(dict.fromkeys(kids))

    try:
        assert wait_until(lambda: len(signed_ok()) >= 4, 6 * INTERVAL), "three rotations"
        # Revoke the current key while the standby has been published for > 2 x max-age.
        for _ in range(3):
            [standby] = [r for r in system.key_rows() if r["state"] == "next"]
            opens = float(standby["created_at"]) + 2 * MAX_AGE + 0.2  # type: ignore[arg-type]
            # Room for a login and the CLI's start-up before the standby signs anyway.
            closes = float(standby["activates_at"]) - 2.5  # type: ignore[arg-type]
            if time.time() < closes:
                time.sleep(max(opens - time.time(), 0))
                break
            time.sleep(max(closes + 2.6 - time.time(), 0))
        else:
            pytest.fail("never found the standby key's window")
        with grpc.insecure_channel(system.auth_target) as channel:
            stolen = (
                auth_pb2_grpc.AuthServiceStub(channel)
                .Login(auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=10)
                .access_token
            )
        compromised = kid_of(stolen)
        # Watch the stolen token from before the revocation, to time its refusal exactly.
        refused: dict[str, float] = {}
        watchers = [
            threading.Thread(target=_watch, args=(target, stolen, refused, name), daemon=True)
            for name, target in (("push", system.push_target), ("http", system.http_target))
        ]
        for watcher in watchers:
            watcher.start()
        log.revoked = compromised
        log.revoking = True
        out = system.cli("keys", "revoke", compromised)
        assert out.returncode == 0, out.stderr
        # Usually the standby is promoted ("...; key <standby> signs now"); on a slow
        # machine the CLI may start after the standby took over on schedule, and
        # the revoked key was already the previous one. Either way it must go.
        assert f"revoked key {compromised}" in out.stdout
        for watcher in watchers:
            watcher.join(2 * MAX_AGE + 5)
        # From the commit (the stored revoked_at) to the first refusal.
        [row] = [r for r in system.key_rows() if r["kid"] == compromised]
        push_seconds = refused["push"] - float(row["revoked_at"])  # type: ignore[arg-type]
        http_seconds = refused["http"] - float(row["revoked_at"])  # type: ignore[arg-type]
        calls = len(log.calls)
        assert wait_until(lambda: len(log.calls) > calls + 50, 10), (
            "honest calls on the promoted key"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)

    assert not log.errors, log.errors
    honest_failures = [
        c for c in log.calls if c[2] is not OK and not (c[3] and c[1] == compromised)
    ]
    assert honest_failures == []
    assert len(log.calls) > 100
    assert push_seconds < 1.0
    print(
        f"\nreal processes: {len(signed_ok())} signing keys seen, {len(log.calls)} calls;"
        f" revoked key refused after {push_seconds * 1000:.0f} ms (push),"
        f" {http_seconds * 1000:.0f} ms (HTTP, max-age {MAX_AGE} s)"
    )


def test_the_server_refuses_a_pre_publication_shorter_than_two_max_ages(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "auth_server",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--issuer",
            "http://127.0.0.1:1",
            "--audience",
            "a",
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--jwks-max-age",
            "2",
            "--key-activate-after",
            "3",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )

    assert out.returncode == 1
    assert "--key-activate-after is 3 s but must be at least 2 x --jwks-max-age = 4 s" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
