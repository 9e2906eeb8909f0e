"""How many WatchRevocations streams one auth process holds, and how fast a revocation reaches all.

    python benchmarks/bench_push_fanout.py [--streams 1000 5000 10000] [--revocations 5]
        [--clients 4] [--per-channel 50] [--postgres URL] [--watch-auth none token]

The auth service runs in a process of its own (SQLite in a temporary directory,
or a fresh schema on PostgreSQL), and the subscribers in ``--clients`` other
processes, each holding its share of the streams over channels of
``--per-channel`` streams (one HTTP/2 connection carries at most the server's
``max_concurrent_streams``, 100 by default). For each size it prints:

  * streams synced (got their first message) of those opened;
  * revocation to all: from the Logout RPC being sent until the last stream has
    received the session id, median and max of ``--revocations`` Logouts;
  * server RSS per stream: (RSS with the streams open - RSS before) / streams;
  * server CPU per revocation: the auth process's own user+system time per Logout
    pushed to every stream (from /proc), the figure that stays put on a noisy machine.

Baseline in the same run: one Logout with no stream open (what the push adds).
With ``--watch-auth none token`` each size runs twice, against two auth processes
(``--watch-auth none``, and ``token``: every stream opened with a client-credentials
token of the ``ssot.watch`` scope, checked at open and timed to its ``exp``), so the
guard's cost per stream and per push shows beside the open streams' in one run.
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
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protos import auth_pb2, auth_pb2_grpc  # noqa: E402

PASSPHRASE = "benchmark-passphrase-000"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

SERVER = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from auth_server._gc import tune_gc_for_streams
from auth_server.app import start_auth_server
from auth_server.config import AuthServerConfig
from auth_server.passwords import Argon2Parameters
from auth_server.throttle import ThrottlePolicy
from auth_server.kdf import KdfParameters

async def main():
    if {tune_gc!r}:
        tune_gc_for_streams()  # as `ssot-auth serve` does
    config = AuthServerConfig(
        grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", data_dir=Path({data!r}),
        database_url={url!r}, issuer="http://127.0.0.1:8080", audience="bench",
        key_passphrase={passphrase!r}.encode(),
        argon2=Argon2Parameters(time_cost=1, memory_cost=1024),
        key_kdf=KdfParameters(time_cost=1, memory_cost=1024, parallelism=1),
        throttle=ThrottlePolicy(enabled=False), watch_auth={watch_auth!r})
    server = await start_auth_server(config)
    print(server.grpc_target, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(1)

asyncio.run(main())
"""

CLIENT = """
import asyncio, sys, time
sys.path.insert(0, {root!r})
import grpc
from protos import auth_pb2, auth_pb2_grpc

async def main(target, streams, per_channel, token):
    metadata = (("authorization", "Bearer " + token),) if token else None
    seen = {{}}   # sid -> [streams that got it, last receipt]
    synced = 0
    channels = []
    async def follow(stub):
        nonlocal synced
        first = True
        request = auth_pb2.WatchRevocationsRequest(watermarks=True)
        async for update in stub.WatchRevocations(request, metadata=metadata):
            now = time.time()
            if first:
                synced += 1
                first = False
                continue
            for entry in update.sessions:
                got = seen.setdefault(entry.session_id, [0, 0.0])
                got[0] += 1
                got[1] = max(got[1], now)
    tasks = []
    for start in range(0, streams, per_channel):
        channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        channels.append(channel)
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        for _ in range(min(per_channel, streams - start)):
            tasks.append(asyncio.ensure_future(follow(stub)))
        # Open gradually, as a fleet that reconnects with jitter does.
        while synced < len(tasks) - 2 * per_channel:
            await asyncio.sleep(0.01)
    deadline = time.monotonic() + 30
    while synced < streams and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print("ready", synced, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        got = seen.get(line[1], [0, 0.0])
        print(got[0], got[1], flush=True)
    for channel in channels:
        await channel.close(None)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
"""


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    name = "bench_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        sep = "&" if "?" in base_url else "?"
        yield f"{base_url}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


class Client:
    def __init__(self, target: str, streams: int, per_channel: int, token: str) -> None:
        code = CLIENT.format(root=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, target, str(streams), str(per_channel), token],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"subscriber process failed: {line}")
        return int(line[1])

    def query(self, sid: str) -> tuple[int, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"q {sid}\n")
        self.proc.stdin.flush()
        count, last = self.proc.stdout.readline().split()
        return int(count), float(last)

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def sessions_for(url: str, n: int) -> list[tuple[str, str]]:
    """``(session id, refresh token)`` of ``n`` new sessions, made in storage (no argon2)."""
    from auth_server.passwords import Argon2Parameters, PasswordHasher
    from auth_server.sessions import SessionStore
    from auth_server.storage import Database
    from auth_server.users import UserStore

    db = Database(url)
    try:
        user = UserStore(db, PasswordHasher(Argon2Parameters(time_cost=1, memory_cost=1024))).add(
            "u" + uuid.uuid4().hex[:8], "bench-password-000"
        )
        store = SessionStore(db)
        made = [store.create(user.id, access_ttl=900) for _ in range(n)]
        return [(m.session_id, m.refresh_token) for m in made]
    finally:
        db.dispose()


def run_size(
    target: str,
    server_pid: int,
    url: str,
    streams: int,
    args: argparse.Namespace,
    stub: auth_pb2_grpc.AuthServiceStub,
    watch_token: str = "",
) -> dict[str, float]:
    rss_before = proc_rss(server_pid)
    share = [streams // args.clients + (i < streams % args.clients) for i in range(args.clients)]
    clients = [Client(target, n, args.per_channel, watch_token) for n in share if n]
    opened = time.perf_counter()
    synced = sum(c.ready() for c in clients)
    open_seconds = time.perf_counter() - opened
    time.sleep(1.0)
    rss_open = proc_rss(server_pid)
    latencies, cpus = [], []
    tokens = sessions_for(url, args.revocations)
    for sid, token in tokens:
        cpu0 = proc_cpu(server_pid)
        sent = time.time()
        stub.Logout(auth_pb2.LogoutRequest(refresh_token=token), timeout=30)
        deadline = time.monotonic() + 15
        while True:
            results = [c.query(sid) for c in clients]
            if sum(r[0] for r in results) >= synced or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        got = sum(r[0] for r in results)
        if got < synced:
            print(f"  warning: {synced - got} of {synced} streams never got {sid[:8]}")
        latencies.append(max(r[1] for r in results) - sent)
        time.sleep(0.3)  # let the server go idle before the next reading
        cpus.append(proc_cpu(server_pid) - cpu0)
    for client in clients:
        client.close()
    time.sleep(1.0)
    return {
        "streams": streams,
        "synced": synced,
        "open_s": open_seconds,
        "median_ms": statistics.median(latencies) * 1000,
        "max_ms": max(latencies) * 1000,
        "rss_kib_per_stream": (rss_open - rss_before) / max(synced, 1) / 1024,
        "cpu_ms_per_revocation": statistics.median(cpus) * 1000,
    }


def watch_token(url: str, stub: auth_pb2_grpc.AuthServiceStub) -> str:
    """A client-credentials token with the ``ssot.watch`` scope (a client registered now)."""
    from auth_server.clients import ClientStore
    from auth_server.storage import Database

    db = Database(url)
    try:
        name = "w" + uuid.uuid4().hex[:8]
        _, secret = ClientStore(db).add(
            name, secret=True, scopes=["ssot.watch"], audiences=["bench"]
        )
    finally:
        db.dispose()
    request = auth_pb2.TokenRequest(
        grant_type="client_credentials", client_id=name, client_secret=secret or ""
    )
    return str(stub.Token(request, timeout=30).access_token)


@contextlib.contextmanager
def auth_process(
    args: argparse.Namespace, mode: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """An auth service in a process of its own with ``--watch-auth mode``: (process, its DB URL)."""
    with contextlib.ExitStack() as stack:
        data = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.postgres:
            url = stack.enter_context(postgres_schema(args.postgres))
        else:
            url = f"sqlite:///{data / 'ssot-auth.db'}"
        code = SERVER.format(
            root=str(ROOT),
            data=str(data),
            url=url,
            passphrase=PASSPHRASE,
            tune_gc=args.tune_gc,
            watch_auth=mode,
        )
        server = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdin is not None
        try:
            yield server, url
        finally:
            server.stdin.close()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--revocations", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-channel", type=int, default=50)
    parser.add_argument("--postgres", default=None)
    parser.add_argument(
        "--watch-auth", nargs="+", choices=["none", "token"], default=["none"], dest="modes"
    )
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument(
        "--default-gc",
        dest="tune_gc",
        action="store_false",
        help="keep the collector's default schedule (what `ssot-auth serve` changes)",
    )
    args = parser.parse_args()
    rows = []
    for mode in args.modes:
        with auth_process(args, mode) as (server, url):
            assert server.stdout is not None
            target = server.stdout.readline().strip()
            channel = grpc.insecure_channel(target)
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            try:
                token = watch_token(url, stub) if mode == "token" else ""
                # Baseline: a Logout that pushes to nobody.
                baseline = []
                for _, refresh in sessions_for(url, 5):
                    started = time.perf_counter()
                    stub.Logout(auth_pb2.LogoutRequest(refresh_token=refresh), timeout=30)
                    baseline.append(time.perf_counter() - started)
                print(
                    f"--watch-auth {mode}; baseline: Logout with no stream open"
                    f" {statistics.median(baseline) * 1000:.1f} ms"
                )
                print(
                    f"{'streams':>8} {'synced':>7} {'open s':>7} {'to all ms':>10} {'max ms':>8}"
                    f" {'RSS KiB/stream':>15} {'CPU ms/revocation':>18}"
                )
                for streams in args.streams:
                    row = run_size(target, server.pid, url, streams, args, stub, token)
                    row["watch_auth"] = mode  # type: ignore[assignment]
                    rows.append(row)
                    print(
                        f"{streams:>8} {row['synced']:>7.0f} {row['open_s']:>7.1f}"
                        f" {row['median_ms']:>10.0f} {row['max_ms']:>8.0f}"
                        f" {row['rss_kib_per_stream']:>15.1f}"
                        f" {row['cpu_ms_per_revocation']:>18.0f}",
                        flush=True,
                    )
            finally:
                channel.close()
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
