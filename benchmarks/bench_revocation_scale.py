"""Revocation at scale: idle auth-server CPU, full-sync time, verifier memory, watermark reach.

    python benchmarks/bench_revocation_scale.py [--sizes 1000,10000,100000,1000000]
        [--window 10] [--baseline DIR] [--sync-sizes 100000,1000000]

Every figure comes from real processes on loopback, SQLite in a temporary data dir:
  1. Idle auth-server CPU (% of one core) against revoked sessions in the window: the
     sessions are inserted straight into the database (as after a burst of logouts),
     ``ssot-auth serve`` is started as a child process, and its CPU time is read from
     /proc/PID/stat over ``--window`` seconds once it is up. With ``--baseline DIR`` (a
     checkout of the code before this change, e.g. ``git archive 74f4884 | tar -x -C DIR``)
     the same is measured for that code ("before").
  2. Full sync: a fresh push verifier (RevocationList in a child process) connects and
     the time until its list is complete is measured, with its resident memory per entry
     (RSS after sync minus RSS before, over the entries).
  3. Watermark reach: 100,000 live sessions are ended by one ``revoke --all`` (the
     CLI's code path, straight on the database), and the time until a push verifier
     refuses a token issued before it is measured (median of --repeats).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from auth_server.sessions import SessionStore  # noqa: E402
from auth_server.storage import Database, sessions, sqlite_url_for, users  # noqa: E402

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "bench"
USER_ID = "00000000-0000-0000-0000-000000000001"
_TICKS = os.sysconf("SC_CLK_TCK")


def fill(data_dir: Path, revoked: int, *, live: int = 0) -> None:
    """Create the schema, one user, ``revoked`` revoked sessions and ``live`` live ones."""
    db = Database(sqlite_url_for(data_dir))
    db.create_schema()
    now = time.time()
    with db.transaction(write=True) as conn:
        conn.execute(
            users.insert().values(
                id=USER_ID,
                username="bench",
                password_hash="x",
                scopes="",
                disabled=False,
                created_at=now,
                updated_at=now,
            )
        )
    batch = 20_000
    for kind, count in (("revoked", revoked), ("live", live)):
        for start in range(0, count, batch):
            rows = [
                {
                    "id": str(uuid.uuid4()),
                    "user_id": USER_ID,
                    "created_at": now - 60,
                    "expires_at": now + 86400,
                    "revoked_at": now - 1 if kind == "revoked" else None,
                    "last_used_at": now - 60,
                    # Last access token expiring in ~13 minutes, as the issue measured.
                    "access_expires_at": now + 780,
                    "revoke_reason": "logout" if kind == "revoked" else None,
                }
                for _ in range(min(batch, count - start))
            ]
            with db.transaction(write=True) as conn:
                conn.execute(sessions.insert(), rows)
    db.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def auth_server(data_dir: Path, code: Path) -> Iterator[tuple[int, str]]:
    """``ssot-auth serve`` from ``code``, as a child process; yields (pid, gRPC target)."""
    grpc_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "SSOT_KEY_PASSPHRASE": "bench-passphrase-0123456789",
        "SSOT_DATA_DIR": str(data_dir),
    }
    argv = [
        sys.executable,
        "-m",
        "auth_server",
        "serve",
        "--grpc",
        f"127.0.0.1:{grpc_port}",
        "--http",
        f"127.0.0.1:{http_port}",
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
    ]
    log = (data_dir / "server.log").open("wb")
    child = subprocess.Popen(argv, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"auth server exited: {(data_dir / 'server.log').read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", grpc_port), timeout=0.5),
            ):
                break
            time.sleep(0.2)
        yield child.pid, f"127.0.0.1:{grpc_port}"
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the whole line (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


def idle_cpu(size: int, code: Path, window: float) -> float:
    """Percent of one core the idle auth server uses with ``size`` revoked sessions."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        fill(data_dir, size)
        with auth_server(data_dir, code) as (pid, _):
            time.sleep(3 + size / 200_000)  # start-up reads and the first polls
            before, start = cpu_seconds(pid), time.monotonic()
            time.sleep(window)
            used, elapsed = cpu_seconds(pid) - before, time.monotonic() - start
    return 100.0 * used / elapsed


# -- the verifier side (child process: clean memory figures) ---------------------------


def verifier_probe(target: str, expected: int) -> None:
    """Child: follow the stream until synced; print seconds and bytes per entry."""
    from interceptors import AuthServiceSource, RevocationList

    gc.collect()
    rss_before = _rss()
    source = AuthServiceSource(target)
    started = time.monotonic()
    revocations = RevocationList(source)
    revocations.start()
    try:
        synced = revocations.wait_until_synced(600)
        took = time.monotonic() - started
        held = revocations.stats.revoked
        gc.collect()
        rss = _rss() - rss_before
    finally:
        revocations.close()
        source.close()
    print(f"{synced} {took:.3f} {held} {rss / max(held, 1):.1f}")
    assert held >= expected, (held, expected)


def _rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def full_sync(size: int, code: Path) -> tuple[bool, float, float]:
    """(synced, seconds, verifier bytes per entry) for a fresh verifier joining ``size`` entries."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        fill(data_dir, size)
        with auth_server(data_dir, code) as (_, target):
            out = subprocess.run(
                [sys.executable, __file__, "--verifier-probe", target, str(size)],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return False, float("nan"), float("nan")
    synced, took, _, per_entry = out.stdout.split()
    return synced == "True", float(took), float(per_entry)


def watermark_reach(live: int, code: Path, repeats: int) -> list[float]:
    """Seconds from ``revoke --all`` committing until a push verifier refuses an older token."""
    from interceptors import AuthServiceSource, RevocationList

    results = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            fill(data_dir, 0, live=live)
            with auth_server(data_dir, code) as (_, target):
                source = AuthServiceSource(target)
                with RevocationList(source) as revocations:
                    assert revocations.wait_until_synced(30)
                    db = Database(sqlite_url_for(data_dir))
                    issued = int(time.time()) - 5

                    def refused(
                        issued: int = issued, revocations: RevocationList = revocations
                    ) -> bool:
                        return revocations.refuses(
                            session_id=None, subject=USER_ID, issued_at=issued
                        )

                    assert not refused()
                    SessionStore(db).revocations.revoke_all()  # what `sessions revoke --all` runs
                    done = time.monotonic()
                    while not refused():
                        if time.monotonic() - done > 10:
                            raise RuntimeError("the watermark never arrived")
                        time.sleep(0.001)
                    results.append(time.monotonic() - done)
                    with db.transaction() as conn:
                        ended = conn.execute(
                            sa.select(sa.func.count()).where(sessions.c.revoked_at.isnot(None))
                        ).scalar()
                    assert ended == live, ended
                    db.dispose()
                source.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--sync-sizes", default="100000,1000000")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before the change")
    parser.add_argument("--baseline-max", type=int, default=100_000, help="largest size to run it")
    parser.add_argument("--live", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: cpu,sync,reach")
    parser.add_argument("--verifier-probe", nargs=2, metavar=("TARGET", "EXPECTED"))
    args = parser.parse_args()
    if args.verifier_probe:
        verifier_probe(args.verifier_probe[0], int(args.verifier_probe[1]))
        return 0
    skip = set(args.skip.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    if "cpu" not in skip:
        print(f"1. idle auth-server CPU, % of one core over {args.window:.0f} s (SQLite)")
        for size in sizes:
            after = idle_cpu(size, ROOT, args.window)
            line = f"   {size:>9,} revoked sessions: after {after:6.2f} %"
            if args.baseline is not None and size <= args.baseline_max:
                before = idle_cpu(size, args.baseline, args.window)
                line += f"   before {before:6.2f} %   ratio {before / max(after, 1e-9):7.1f}x"
            print(line, flush=True)
    if "sync" not in skip:
        print("2. a fresh push verifier's full sync")
        for size in (int(s) for s in args.sync_sizes.split(",")):
            synced, took, per_entry = full_sync(size, ROOT)
            print(
                f"   {size:>9,} entries: synced={synced} in {took:6.2f} s,"
                f" verifier memory {per_entry:6.0f} B/entry",
                flush=True,
            )
    if "reach" not in skip:
        times = watermark_reach(args.live, ROOT, args.repeats)
        print(
            f"3. revoke --all of {args.live:,} live sessions -> refusal at a push verifier:"
            f" median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
            f" ({len(times)} runs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
