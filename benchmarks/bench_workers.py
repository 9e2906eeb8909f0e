"""``serve --workers N``: 1 worker against 2, the real CLI servers, load from another process.

    python benchmarks/bench_workers.py [--workers 1 2] [--clients 16] [--seconds 4] [--repeats 3]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

For each worker count, ``ssot-auth serve --workers N`` and ``ssot-resource serve
--workers N`` run as real processes on fixed loopback ports (SQLite, or PostgreSQL
with ``--postgres``). A load generator in its own process drives, in turn:

  * ``Refresh`` with ``--clients`` threads, each chaining its own session;
  * ``GetProtectedResource`` with ``--clients`` threads and one reused token
    (the verified-token cache hit: the interceptor's cost, not the RSA check).

Each channel is opened per thread, so the kernel spreads connections over the
workers. Printed per row: calls per second (wall clock) and the servers' CPU time
per call, summed over the parent and every worker from ``/proc/<pid>/stat`` (the
servers' own counters). Medians over ``--repeats`` rounds after a warm-up.

What it can show depends on the machine: the load generator runs on the same
cores as the workers, so on a 2-core box two workers compete with it (and each
other) for the same two cores, and throughput cannot double. CPU per call says
whether a second worker costs extra work per call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from _common import ROOT, free_port, postgres_schema

from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc

AUDIENCE = "bench"
PASSWORD = "bench-password-1"
PASSPHRASE = "benchmark-passphrase-000"
FAST = ["--argon2-time-cost", "1", "--argon2-memory-cost", "1024", "--argon2-parallelism", "1"]
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live children (the workers), from ``/proc``."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    except FileNotFoundError:
        pass
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


def drive(spec: dict[str, Any], seconds: float) -> int:
    """Child process: one thread (and channel) per client until ``seconds`` pass."""
    tokens: list[str] = spec["tokens"]
    counts = [0] * len(tokens)
    failures: list[str] = []
    start = threading.Barrier(len(tokens) + 1)

    def refresh(index: int, deadline: float) -> None:
        with grpc.insecure_channel(spec["target"]) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            token = tokens[index]
            while time.perf_counter() < deadline:
                request = auth_pb2.RefreshRequest(refresh_token=token)
                token = stub.Refresh(request, timeout=30).refresh_token
                counts[index] += 1
            tokens[index] = token

    def protected(index: int, deadline: float) -> None:
        metadata = (("authorization", f"Bearer {tokens[index]}"),)
        with grpc.insecure_channel(spec["target"]) as channel:
            call = resource_pb2_grpc.ResourceServiceStub(channel).GetProtectedResource
            request = resource_pb2.GetProtectedResourceRequest()
            while time.perf_counter() < deadline:
                call(request, metadata=metadata, timeout=30)
                counts[index] += 1

    loop = refresh if spec["kind"] == "refresh" else protected

    def run(index: int) -> None:
        start.wait()
        try:
            loop(index, time.perf_counter() + seconds)
        except Exception as exc:  # reported to the parent
            failures.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(tokens))]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    print(json.dumps({"count": sum(counts), "elapsed": time.perf_counter() - started, **spec}))
    if failures:
        print(f"{len(failures)} clients failed: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    return {**env, "PYTHONPATH": str(ROOT), "SSOT_KEY_PASSPHRASE": PASSPHRASE}


def _start(command: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """Start a server; return once its port answers (and, with workers, all of them serve)."""
    with log.open("w") as sink:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink, env=_env())
    several = command[command.index("--workers") + 1] != "1"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{command[2]} did not start: {log.read_text()[-500:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
            continue
        if not several or "workers serving" in log.read_text():
            return proc
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _round(server: subprocess.Popen[bytes], spec: dict[str, Any], seconds: float) -> dict[str, Any]:
    cpu0 = cpu_seconds(server.pid)
    done = subprocess.run(
        [sys.executable, __file__, "--drive", "--seconds", str(seconds)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=seconds * 10 + 60,
        check=False,
    )
    cpu = cpu_seconds(server.pid) - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["cpu"] = cpu
    return result


def run_workers(
    workers: int, database_url: str | None, clients: int, seconds: float, repeats: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        data, grpc_port, http_port = Path(tmp) / "data", free_port(), free_port()
        database = ["--database-url", database_url] if database_url else []
        cli = [sys.executable, "-m", "auth_server"]
        subprocess.run(
            [
                *(*cli, "users", "add", "bench", "--scope", "resource.read"),
                *("--password-stdin", "--data-dir", str(data), *database),
            ],
            input=PASSWORD + "\n",
            text=True,
            env=_env(),
            check=True,
            capture_output=True,
        )
        issuer = f"http://127.0.0.1:{http_port}"
        auth = _start(
            [
                *(*cli, "serve", "--data-dir", str(data), *database, *FAST),
                *("--grpc", f"127.0.0.1:{grpc_port}", "--http", f"127.0.0.1:{http_port}"),
                *("--issuer", issuer, "--audience", AUDIENCE, "--workers", str(workers)),
            ],
            Path(tmp) / "auth.log",
            grpc_port,
        )
        resource_port = free_port()
        resource = _start(
            [
                *(sys.executable, "-m", "resource_server", "serve", "--aio"),
                *("--grpc", f"127.0.0.1:{resource_port}"),
                *("--jwks-url", f"{issuer}/.well-known/jwks.json"),
                *("--issuer", issuer, "--audience", AUDIENCE, "--workers", str(workers)),
            ],
            Path(tmp) / "resource.log",
            resource_port,
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                logins = [
                    stub.Login(auth_pb2.LoginRequest(username="bench", password=PASSWORD))
                    for _ in range(clients)
                ]
            refresh_tokens = [login.refresh_token for login in logins]
            access = [logins[0].access_token] * clients
            figures: dict[str, list[tuple[float, float]]] = {"refresh": [], "protected": []}
            for round_ in range(repeats + 1):
                for kind, server, target, tokens in (
                    ("refresh", auth, f"127.0.0.1:{grpc_port}", refresh_tokens),
                    ("protected", resource, f"127.0.0.1:{resource_port}", access),
                ):
                    spec = {"kind": kind, "target": target, "tokens": tokens}
                    result = _round(server, spec, seconds)
                    if kind == "refresh":
                        refresh_tokens = result["tokens"]
                    if round_:
                        rate = result["count"] / result["elapsed"]
                        figures[kind].append((rate, result["cpu"] / result["count"] * 1e6))
        finally:
            _stop(resource)
            _stop(auth)
    refresh, protected = (
        (statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows))
        for rows in (figures["refresh"], figures["protected"])
    )
    return refresh, protected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("SSOT_TEST_DATABASE_URL"))
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.drive:
        return drive(json.loads(sys.stdin.read()), ns.seconds)
    print(
        f"serve --workers N, real CLI servers, {ns.clients} client threads in another process;"
        f" {ns.repeats} rounds of {ns.seconds:g} s, medians; {os.cpu_count()} cores shared by"
        " the servers and the load generator"
    )
    backends: list[tuple[str, str | None]] = [("sqlite", None)]
    for name, url in backends + ([("postgresql", ns.postgres)] if ns.postgres else []):
        base: dict[str, float] = {}
        for workers in ns.workers:
            if url is None:
                results = run_workers(workers, None, ns.clients, ns.seconds, ns.repeats)
            else:
                with postgres_schema(url) as schema_url:
                    results = run_workers(workers, schema_url, ns.clients, ns.seconds, ns.repeats)
            for label, (rate, cpu) in zip(("Refresh", "protected RPC"), results, strict=True):
                key = f"{name}-{label}"
                base.setdefault(key, rate)
                print(
                    f"  {name:10} {label:14} workers={workers}  {rate:7.0f} /s"
                    f"  x{rate / base[key]:.2f}   server CPU {cpu:7.1f} us/call"
                )
    if not ns.postgres:
        print("  postgresql skipped (no --postgres / SSOT_TEST_DATABASE_URL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
