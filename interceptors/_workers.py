"""``--workers N`` for the servers' ``serve`` commands: N processes sharing the listening ports.

One Python process uses one core for its Python work (the GIL); N processes
use N. Each worker is a whole server of its own (its key cache, push
subscriptions, database pool), and the kernel spreads connections over them:
every worker binds the same ports with ``SO_REUSEPORT``, as grpc's
multiprocessing example does (examples/python/multiprocessing).

The parent forks the workers before it has created any gRPC object (grpc
supports no fork after that), supervises them (a worker that dies is logged and
started again) and, on SIGTERM or SIGINT, stops them all and exits 0. It holds
each port bound (not listening) the whole time, so a port taken by another
program is refused before any worker starts, with one line, and no other
program takes a port between a worker's death and its successor's start.

Stdlib only: ``auth_server`` and ``resource_server`` both use it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

from interceptors._cli import add_env_argument

__all__ = [
    "WorkerError",
    "add_workers_argument",
    "run_workers",
    "worker_count",
]

_LOGGER = logging.getLogger(__name__)

# How long stopping workers may take before they are killed, seconds.
STOP_TIMEOUT = 30.0
# A worker that dies this many times in a row before it serves again stops the lot.
MAX_FAILED_STARTS = 5
_POLL = 0.1
_PR_SET_PDEATHSIG = 1


class WorkerError(Exception):
    """The workers could not be started (a port taken, a worker that cannot serve)."""


def worker_count(text: str) -> int:
    """Parse ``--workers``: a positive number, or ``auto`` for one per usable CPU."""
    if text == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number or auto") from None
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return count


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--workers N|auto`` (``SSOT_WORKERS``) to a ``serve`` command."""
    add_env_argument(
        parser,
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help="server processes sharing the listening ports (SO_REUSEPORT), each with its own"
        " caches and streams, under one supervising parent; auto: one per CPU",
        default_help=1,
    )


def reserve_ports(addresses: Sequence[tuple[str, str]]) -> list[socket.socket]:
    """Bind each ``(address, flag)`` with ``SO_REUSEPORT``, not listening, to hold it.

    A port another program listens on is refused here (``WorkerError`` naming the
    flag); only processes of the same user that also set ``SO_REUSEPORT`` (the
    workers) can bind it after this.
    """
    held: list[socket.socket] = []
    try:
        for address, flag in addresses:
            host, _, port_text = address.rpartition(":")
            host = host.strip("[]")
            if not port_text.isdigit() or int(port_text) == 0:
                raise WorkerError(f"--workers above 1 needs a fixed port in {flag} {address}")
            infos = socket.getaddrinfo(host or None, int(port_text), type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(sockaddr)
            except OSError:
                raise WorkerError(f"cannot listen on {address} ({flag})") from None
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


@dataclass
class _Slot:
    index: int
    process: Any = None  # multiprocessing.Process (its context's class)
    ready: Event | None = None
    failed_starts: int = 0
    serving: bool = False
    restart_at: float = 0.0
    pids: list[int] = field(default_factory=list)


_WORKER_INDEX: int | None = None


def worker_index() -> int | None:
    """This process's worker number (1..N) under :func:`run_workers`, else ``None``."""
    return _WORKER_INDEX


def per_worker_address(address: str | None) -> str | None:
    """``HOST:PORT`` moved to ``PORT + n - 1`` in worker ``n``; unchanged outside workers.

    For listeners whose answers are one process's own state (``/metrics``): each
    worker keeps its own counters, so a scrape that reached a random worker through
    a shared port would see counters jump. Port 0 stays 0 (each picks a free one).
    """
    index = worker_index()
    if address is None or index is None:
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) == 0:
        return address
    return f"{host}:{int(port) + index - 1}"


def run_workers(
    count: int,
    serve: Callable[[Callable[[], None]], int],
    *,
    prog: str,
    errors: tuple[type[BaseException], ...],
    ports: Sequence[tuple[str, str]] = (),
) -> int:
    """Run ``serve(ready)`` in ``count`` worker processes until SIGTERM or SIGINT.

    ``serve`` runs one whole server in the worker, calls ``ready()`` once it
    listens, and returns (its exit code) when the worker is told to stop
    (SIGTERM). An exception of ``errors`` is printed as one ``prog: error:``
    line and ends the worker with 1. ``ports``, ``(address, flag)`` pairs, are
    held by this process (:func:`reserve_ports`) from before the first worker
    starts until the last one stops, so no other program takes one meanwhile.

    Returns:
        0 after a clean stop; the failing worker's exit code (or 1) when a worker
        could not start the first time or failed :data:`MAX_FAILED_STARTS` times in a row.

    Raises:
        WorkerError: A port of ``ports`` cannot be held (nothing was started).
    """
    held = reserve_ports(ports)
    try:
        return _run_workers(count, serve, prog, errors, held)
    finally:
        for sock in held:
            sock.close()


def _run_workers(
    count: int,
    serve: Callable[[Callable[[], None]], int],
    prog: str,
    errors: tuple[type[BaseException], ...],
    held: Sequence[socket.socket],
) -> int:
    context = multiprocessing.get_context("fork")
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    slots = [_Slot(index=i + 1) for i in range(count)]

    def start(slot: _Slot) -> None:
        slot.ready = context.Event()
        slot.serving = False
        slot.process = context.Process(
            target=_worker_main,
            args=(serve, slot.ready, prog, errors, held, os.getpid(), slot.index),
            name=f"{prog}-worker-{slot.index}",
            daemon=False,
        )
        slot.process.start()
        slot.pids.append(slot.process.pid)
        _LOGGER.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    try:
        # The first worker alone until it serves: it creates the schema and the first
        # key, which the others then find (no race of N processes at a fresh database).
        first = slots[0]
        start(first)
        ready = first.ready
        while not stop["signal"] and first.process.exitcode is None:
            if ready is not None and ready.wait(_POLL):
                break
        for slot in slots[1:]:
            if first.process.exitcode is None and not stop["signal"]:
                start(slot)
        result = _supervise(slots, start, stop)
    finally:
        clean = _stop_all(slots)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A stop is clean when every worker stopped on its own with exit code 0.
    return result if result or clean else 1


def _supervise(slots: list[_Slot], start: Callable[[_Slot], None], stop: dict[str, int]) -> int:
    all_ready_logged = False
    while not stop["signal"]:
        time.sleep(_POLL)
        now = time.monotonic()
        for slot in slots:
            process = slot.process
            if process is None:
                if now >= slot.restart_at:
                    start(slot)
                continue
            if not slot.serving and slot.ready is not None and slot.ready.is_set():
                slot.serving, slot.failed_starts = True, 0
            code = process.exitcode
            if code is None:
                continue
            process.join()
            if stop["signal"]:
                break
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            if not slot.serving and len(slot.pids) == 1:
                # A worker that cannot start the first time will not start the next:
                # a bad flag, a port, the database. It printed why.
                _LOGGER.error(
                    "worker %d (pid %d) failed to start (%s)", slot.index, process.pid, how
                )
                return code if code > 0 else 1
            slot.process = None
            slot.failed_starts += 0 if slot.serving else 1
            if slot.failed_starts >= MAX_FAILED_STARTS:
                _LOGGER.error(
                    "worker %d failed to start %d times in a row; stopping",
                    slot.index,
                    slot.failed_starts,
                )
                return 1
            # Back off while it keeps failing; at once after a crash of a serving worker.
            slot.restart_at = now + min(0.5 * (2**slot.failed_starts - 1), 10.0)
            _LOGGER.warning(
                "worker %d (pid %d) exited unexpectedly (%s); restarting it",
                slot.index,
                process.pid,
                how,
            )
        if not all_ready_logged and all(slot.serving for slot in slots):
            all_ready_logged = True
            _LOGGER.info("all %d workers serving", len(slots))
    _LOGGER.info("stopping %d workers (signal %d)", len(slots), stop["signal"])
    return 0


def _stop_all(slots: list[_Slot]) -> bool:
    """Stop the live workers (SIGTERM, then SIGKILL); True if each exited with 0."""
    live = [s for s in slots if s.process is not None and s.process.exitcode is None]
    for slot in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    clean = True
    for slot in live:
        process = slot.process
        process.join(max(deadline - time.monotonic(), 0.0))
        if process.exitcode is None:
            _LOGGER.warning(
                "worker %d (pid %d) did not stop in time; killing it", slot.index, process.pid
            )
            process.kill()
            process.join()
        _LOGGER.info(
            "worker %d (pid %d) stopped (exit code %s)", slot.index, process.pid, process.exitcode
        )
        clean = clean and process.exitcode == 0
    return clean


def _worker_main(
    serve: Callable[[Callable[[], None]], int],
    ready: Event,
    prog: str,
    errors: tuple[type[BaseException], ...],
    held: Sequence[socket.socket],
    parent: int,
    index: int,
) -> None:
    global _WORKER_INDEX  # set once, in the worker process only
    _WORKER_INDEX = index
    # The parent's handlers only set its flag: a worker stops on its own terms.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    for sock in held:
        sock.close()  # the parent's reservations, not this worker's listeners
    _die_with_parent(parent)
    try:
        code = serve(ready.set)
    except errors as exc:
        message = getattr(exc, "message", None) or str(exc)  # AuthServerError: .message
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


def _die_with_parent(parent: int) -> None:
    # A parent killed with SIGKILL cannot stop its workers: have the kernel send
    # them SIGTERM then (Linux), rather than leave servers nobody supervises.
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
