"""A revocation made by another process, to a push verifier: polling alone vs LISTEN/NOTIFY.

    python benchmarks/bench_replica_notify.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
        [--samples 30]

PostgreSQL only (on SQLite another process is heard by the 0.25 s poll alone:
the script says "skipped" without ``--postgres``). The auth service runs in
this process; a second process (another replica, or ``ssot-auth sessions
revoke``: the same transaction) revokes a session at a random moment and
reports when its transaction committed; a verifier following
``WatchRevocations`` (``RevocationList``, what ``ssot-resource`` uses) is
polled until it refuses the session. Prints median and p95 of commit ->
refusal, with the auth service polling only (``listen_for_changes=False``, the
baseline) and with its LISTEN connection (the default on PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_push_fanout import postgres_schema, sessions_for  # noqa: E402

from auth_server.app import start_auth_server  # noqa: E402
from auth_server.config import AuthServerConfig  # noqa: E402
from auth_server.kdf import KdfParameters  # noqa: E402
from auth_server.passwords import Argon2Parameters  # noqa: E402
from auth_server.throttle import ThrottlePolicy  # noqa: E402
from interceptors import AuthServiceSource, RevocationList  # noqa: E402

REVOKER = """
import sys, time
sys.path.insert(0, {root!r})
from auth_server.revocation_store import RevocationStore
from auth_server.storage import Database
store = RevocationStore(Database({url!r}))
for line in sys.stdin:
    store.revoke(line.strip())
    print(time.time(), flush=True)
"""


def measure(url: str, data: Path, *, listen: bool, samples: int) -> list[float]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    config = AuthServerConfig(
        grpc_address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        data_dir=data,
        database_url=url,
        issuer="http://127.0.0.1:8080",
        audience="bench",
        key_passphrase=b"benchmark-passphrase-000",
        argon2=Argon2Parameters(time_cost=1, memory_cost=1024),
        key_kdf=KdfParameters(time_cost=1, memory_cost=1024, parallelism=1),
        throttle=ThrottlePolicy(enabled=False),
        listen_for_changes=listen,
    )
    server = asyncio.run_coroutine_threadsafe(start_auth_server(config), loop).result(60)
    if server.listener is not None:
        server.listener.wait_connected(10)
    verifier = RevocationList(AuthServiceSource(server.grpc_target))
    verifier.start()
    verifier.wait_until_synced(10)
    revoker = subprocess.Popen(
        [sys.executable, "-c", REVOKER.format(root=str(ROOT), url=url)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert revoker.stdin is not None and revoker.stdout is not None
    delays = []
    try:
        for sid, _ in sessions_for(url, samples):
            time.sleep(random.uniform(0, 0.3))  # a random point of the poll cycle
            revoker.stdin.write(sid + "\n")
            revoker.stdin.flush()
            committed = float(revoker.stdout.readline())
            while not verifier.is_revoked(sid):
                time.sleep(0.0005)
            delays.append(time.time() - committed)
    finally:
        revoker.stdin.close()
        revoker.wait(10)
        verifier.close()
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
    return delays


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default=None)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    if not args.postgres:
        print("skipped: LISTEN/NOTIFY needs --postgres URL")
        return 0
    print(f"{'auth service':<26} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    rows = {}
    for listen in (False, True):
        with tempfile.TemporaryDirectory() as data, postgres_schema(args.postgres) as url:
            delays = sorted(measure(url, Path(data), listen=listen, samples=args.samples))
        name = "LISTEN/NOTIFY + poll" if listen else "poll every 0.25 s (before)"
        p95 = delays[min(len(delays) - 1, int(0.95 * len(delays)))]
        rows[listen] = median = statistics.median(delays)
        print(f"{name:<26} {median * 1000:>10.1f} {p95 * 1000:>8.1f} {delays[-1] * 1000:>8.1f}")
    print(f"ratio median before/after: {rows[False] / rows[True]:.1f}x (goal: after < 50 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
