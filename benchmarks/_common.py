"""What the benchmarks share: the import path, an event-loop thread, a throwaway
PostgreSQL schema, a loopback port, a median rate and a cheap auth-server config.

Importing it puts the repository root on ``sys.path``, so ``python benchmarks/x.py``
finds the packages without installing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auth_server.config import AuthServerConfig  # noqa: E402
from auth_server.passwords import Argon2Parameters  # noqa: E402

T = TypeVar("T")
ISSUER = "http://127.0.0.1:8080"
# Cheap argon2: the benchmarks measure tokens, sessions and keys, not password hashing.
FAST_ARGON2 = Argon2Parameters(time_cost=1, memory_cost=1024, parallelism=1)


class Loop:
    """An asyncio loop on a daemon thread, for grpc.aio servers in a sync benchmark."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def auth_config(
    data_dir: Path, *, audience: str, passphrase: bytes, **changes: Any
) -> AuthServerConfig:
    """An auth server on loopback port 0 with :data:`FAST_ARGON2`, plus ``changes``."""
    settings: dict[str, Any] = {"argon2": FAST_ARGON2, **changes}
    return AuthServerConfig(
        grpc_address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        data_dir=data_dir,
        issuer=ISSUER,
        audience=audience,
        key_passphrase=passphrase,
        **settings,
    )


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A fresh schema in the database at ``base_url``, dropped afterwards; yields its URL."""
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


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median_rate(run: Callable[[], int], repeats: int) -> float:
    """Median of ``repeats`` runs of ``run()`` (which returns its count) per second."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - started))
    return statistics.median(rates)


def signing_rate(key: rsa.RSAPrivateKey, seconds: float = 0.5) -> float:
    """RS256 signatures per second on one core (thread CPU time)."""
    message = b"x" * 600  # about an access token's signing input
    count, started = 0, time.thread_time()
    while time.thread_time() - started < seconds:
        key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        count += 1
    return count / (time.thread_time() - started)
