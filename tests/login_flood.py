"""A login flood from its own process: unknown users, wrong passwords, as fast as answered.

    python tests/login_flood.py HOST:PORT [--concurrency 40] [--seconds 60] [--shed-pause 0]

Runs until stdin closes (or ``--seconds`` pass), then prints one JSON object of
counts by status code, plus how many refusals carried ``retry-after``. A
separate process, so the flood's own Python work does not share a GIL with
the server or with the client that measures it (tests and benchmarks start it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter

import grpc

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from protos import auth_pb2, auth_pb2_grpc

# Calls per connection: under the server's max-concurrent-streams (100).
_PER_CHANNEL = 25


async def _flood(target: str, concurrency: int, seconds: float, shed_pause: float) -> Counter[str]:
    counts: Counter[str] = Counter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # stdin closing is the stop signal (the parent holds the other end).
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        await reader.read()
        stop.set()

    channels = [
        # A distinct option per channel: its own connection, not a shared subchannel.
        grpc.aio.insecure_channel(target, options=[("ssot.flood.channel", i)])
        for i in range((concurrency + _PER_CHANNEL - 1) // _PER_CHANNEL)
    ]
    stubs = [auth_pb2_grpc.AuthServiceStub(c) for c in channels]

    async def client(n: int) -> None:
        stub = stubs[n // _PER_CHANNEL]
        while not stop.is_set():
            request = auth_pb2.LoginRequest(
                username=f"flood-{uuid.uuid4().hex[:12]}", password="not the password"
            )
            try:
                await stub.Login(request, timeout=30)
                counts["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                counts[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    trailers = dict(exc.trailing_metadata() or ())
                    if "retry-after" in trailers:
                        counts["retry_after"] += 1
                    if shed_pause:
                        await asyncio.sleep(shed_pause)

    watcher = asyncio.create_task(watch_stdin())
    started = time.monotonic()
    print(json.dumps({"started": True}), flush=True)
    tasks = [asyncio.create_task(client(n)) for n in range(concurrency)]
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    counts["elapsed_ms"] = round((time.monotonic() - started) * 1000)
    watcher.cancel()
    for channel in channels:
        await channel.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--shed-pause", type=float, default=0.0, help="seconds a client waits after being shed"
    )
    ns = parser.parse_args()
    counts = asyncio.run(_flood(ns.target, ns.concurrency, ns.seconds, ns.shed_pause))
    print(json.dumps(dict(counts)), flush=True)


if __name__ == "__main__":
    main()
