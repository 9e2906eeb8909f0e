"""Refresh and Logout latency while logins flood the auth service (issue 15).

    python benchmarks/bench_overload.py [--floods 10 40 200] [--seconds 8] [--shed-pause 0]
        [--argon2-time-cost 3 --argon2-memory-cost 65536] [--hash-workers 0] [--hash-max-wait 3]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

Three processes, as in production: ``ssot-auth serve`` (per-address throttling
raised out of the way, production argon2 parameters unless told otherwise), a
flood of concurrent ``Login`` calls for unknown users (``tests/login_flood.py``;
each costs a full argon2 verification, by design), and this process: an honest
client and a resource server that follows ``WatchRevocations``. For no flood
(quiet) and each flood size it prints:

  * Refresh latency, median and p99, one call every 50 ms;
  * Logout -> refusal: from calling Logout until the resource server refuses the
    session's (cached) access token, probing back to back; and the Logout RPC alone;
  * GetJwks latency (key publication);
  * logins completed (answered UNAUTHENTICATED) and shed (RESOURCE_EXHAUSTED) per second;
  * the server's CPU time (user + system) per second of wall time and per RPC answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from _common import (  # before ours: it puts the repository on sys.path
    ROOT,
    free_port,
    postgres_schema,
)

from interceptors import (
    AuthServiceSource,
    RevocationList,
    TokenPolicy,
    TokenVerifier,
)
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig, build_server

AUDIENCE = "bench-overload"
PASSWORD = "bench-overload-password"
PASSPHRASE = "bench-overload-passphrase-0123"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    proc: subprocess.Popen[str]
    target: str
    issuer: str

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def cli(ns: argparse.Namespace, data_dir: Path, *args: str, stdin: str = "") -> None:
    cmd = [sys.executable, "-m", "auth_server", "--log-level", "WARNING", *args]
    cmd += ["--data-dir", str(data_dir)]
    if ns.database_url:
        cmd += ["--database-url", ns.database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    env.update(PYTHONPATH=str(ROOT), SSOT_KEY_PASSPHRASE=PASSPHRASE)
    subprocess.run(cmd, input=stdin, env=env, check=True, text=True, capture_output=True)


@contextlib.contextmanager
def auth_server(ns: argparse.Namespace, data_dir: Path) -> Iterator[Server]:
    grpc_port, http_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{http_port}"
    argon2 = ["--argon2-time-cost", str(ns.argon2_time_cost)]
    argon2 += ["--argon2-memory-cost", str(ns.argon2_memory_cost)]
    # Hashed with the default parameters; the first login upgrades it to the server's.
    cli(ns, data_dir, "users", "add", "bench", "--scope", "resource.read", "--password-stdin",
        stdin=PASSWORD + "\n")  # fmt: skip
    cmd = [sys.executable, "-m", "auth_server", "--log-level", "WARNING", "serve"]
    cmd += ["--data-dir", str(data_dir), "--grpc", f"127.0.0.1:{grpc_port}"]
    cmd += ["--http", f"127.0.0.1:{http_port}", "--issuer", issuer, "--audience", AUDIENCE]
    # One address floods: the per-address layers are raised out of the way, as when
    # the flood comes from many addresses.
    cmd += ["--throttle-address", "1000000000", "--throttle-user-address", "1000000000"]
    cmd += [*argon2, "--hash-max-wait", str(ns.hash_max_wait)]
    cmd += ["--hash-workers", str(ns.hash_workers)]
    if ns.database_url:
        cmd += ["--database-url", ns.database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    env.update(PYTHONPATH=str(ROOT), SSOT_KEY_PASSPHRASE=PASSPHRASE)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    if "serving" not in proc.stdout.readline():
        proc.kill()
        raise RuntimeError("the auth service did not start")
    try:
        yield Server(proc=proc, target=f"127.0.0.1:{grpc_port}", issuer=issuer)
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def flood(target: str, concurrency: int, shed_pause: float) -> Iterator[dict[str, int]]:
    """Yields a dict the flood's counts land in once it has stopped."""
    result: dict[str, int] = {}
    if concurrency == 0:
        yield result
        return
    proc = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "tests" / "login_flood.py"), target),
            *("--concurrency", str(concurrency), "--shed-pause", str(shed_pause)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.readline()  # started
    try:
        yield result
    finally:
        proc.stdin.close()
        result.update(json.loads(proc.stdout.read().strip().splitlines()[-1]))
        proc.wait(30)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} {pct(values, 0.99) * 1000:7.1f}"


def login(stub: auth_pb2_grpc.AuthServiceStub) -> auth_pb2.TokenResponse:
    request = auth_pb2.LoginRequest(username="bench", password=PASSWORD)
    while True:
        try:
            return stub.Login(request, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                raise
            time.sleep(0.2)


def run_phase(
    server: Server,
    auth: auth_pb2_grpc.AuthServiceStub,
    resource: resource_pb2_grpc.ResourceServiceStub,
    concurrency: int,
    ns: argparse.Namespace,
) -> str:
    sessions = [login(auth) for _ in range(ns.logouts)]
    for s in sessions:  # every access token is in the verifier's cache before it is revoked
        md = (("authorization", f"Bearer {s.access_token}"),)
        resource.GetProtectedResource(resource_pb2.GetProtectedResourceRequest(), metadata=md)
    token = login(auth).refresh_token
    refresh, logout_rpc, refusal, jwks = [], [], [], []
    with flood(server.target, concurrency, ns.shed_pause) as counts:
        time.sleep(ns.warmup)
        cpu0, wall0 = server.cpu_seconds(), time.monotonic()
        end = wall0 + ns.seconds
        every = ns.seconds / (ns.logouts + 1)
        next_logout = wall0 + every
        while time.monotonic() < end:
            started = time.perf_counter()
            token = auth.Refresh(auth_pb2.RefreshRequest(refresh_token=token), timeout=30)
            refresh.append(time.perf_counter() - started)
            token = token.refresh_token
            started = time.perf_counter()
            auth.GetJwks(auth_pb2.GetJwksRequest(), timeout=30)
            jwks.append(time.perf_counter() - started)
            if sessions and time.monotonic() >= next_logout:
                next_logout += every
                s = sessions.pop()
                md = (("authorization", f"Bearer {s.access_token}"),)
                started = time.perf_counter()
                auth.Logout(auth_pb2.LogoutRequest(refresh_token=s.refresh_token), timeout=30)
                logout_rpc.append(time.perf_counter() - started)
                while time.perf_counter() - started < 30:
                    try:
                        resource.GetProtectedResource(
                            resource_pb2.GetProtectedResourceRequest(), metadata=md, timeout=5
                        )
                    except grpc.RpcError:
                        break
                refusal.append(time.perf_counter() - started)
            time.sleep(0.05)
        cpu, wall = server.cpu_seconds() - cpu0, time.monotonic() - wall0
    # The flood's counts cover warm-up and measurement; rates use its own elapsed time.
    elapsed = counts.get("elapsed_ms", 1) / 1000
    done = counts.get("UNAUTHENTICATED", 0)
    shed = counts.get("RESOURCE_EXHAUSTED", 0)
    expected = ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED")
    other = sum(v for k, v in counts.items() if k.isupper() and k not in expected)
    calls = len(refresh) + len(jwks) + len(logout_rpc) + (done + shed) * wall / elapsed
    name = "quiet" if concurrency == 0 else f"flood {concurrency}"
    return (
        f"{name:9} {ms(refresh)} {ms(logout_rpc)} {ms(refusal)} {ms(jwks)}"
        f" {done / elapsed:7.1f} {shed / elapsed:8.1f} {other:5d}"
        f" {cpu / wall:6.2f} {cpu / calls * 1000:7.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--floods", type=int, nargs="+", default=[10, 40, 200])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--logouts", type=int, default=8)
    parser.add_argument("--shed-pause", type=float, default=0.0)
    parser.add_argument("--argon2-time-cost", type=int, default=3)
    parser.add_argument("--argon2-memory-cost", type=int, default=65536)
    parser.add_argument("--hash-workers", type=int, default=0)
    parser.add_argument("--hash-max-wait", type=float, default=3.0)
    parser.add_argument("--postgres", default=None)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        ns.database_url = stack.enter_context(postgres_schema(ns.postgres)) if ns.postgres else None
        server = stack.enter_context(auth_server(ns, Path(tmp)))
        verifier = stack.enter_context(
            TokenVerifier.from_source(
                AuthServiceSource(server.target),
                TokenPolicy(issuer=server.issuer, audience=AUDIENCE),
            )
        )
        assert isinstance(verifier.revocations, RevocationList)
        verifier.revocations.wait_until_synced(10)
        rconfig = ResourceServerConfig(
            grpc_address="127.0.0.1:0", issuer=server.issuer, audience=AUDIENCE, auth_target="x:1"
        )
        rserver, port = build_server(rconfig, verifier)
        auth = auth_pb2_grpc.AuthServiceStub(
            stack.enter_context(grpc.insecure_channel(server.target))
        )
        resource = resource_pb2_grpc.ResourceServiceStub(
            stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
        )
        backend = "postgresql" if ns.database_url else "sqlite"
        print(
            f"{backend}; argon2id t={ns.argon2_time_cost} m={ns.argon2_memory_cost} KiB;"
            f" --hash-workers {ns.hash_workers or 'CPUs'} --hash-max-wait {ns.hash_max_wait};"
            f" {os.cpu_count()} CPUs; flood clients pause {ns.shed_pause} s after being shed"
        )
        print("latencies in ms (median p99); logins per second; server CPU s per s and ms per RPC")
        print(
            f"{'':9} {'Refresh':>15} {'Logout RPC':>15} {'Logout->refused':>15} {'GetJwks':>15}"
            f" {'logins':>7} {'shed':>8} {'other':>5} {'CPU/s':>6} {'ms/RPC':>7}"
        )
        for concurrency in [0, *ns.floods]:
            print(run_phase(server, auth, resource, concurrency, ns), flush=True)
        rserver.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
