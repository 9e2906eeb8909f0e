"""What metrics and traces cost a protected RPC, against the same server without them.

    python benchmarks/bench_observability.py [--calls 2000] [--repeats 5] [--clients 4]

One resource server process per variant (sync and aio), all over the same static key
set, each answering ``GetProtectedResource`` with one reused token (verified-token
cache hits: the cheapest check, so the observers' share is the largest it gets):

- ``plain``: no observer, no tracing (the baseline);
- ``metrics``: :class:`interceptors.prometheus.VerifierMetrics` as the observer;
- ``traces``: :class:`interceptors.otel.Tracing` on the SDK, every span recorded and
  handed to a batch processor whose exporter drops it (the export's own cost is the
  collector's business; the recording and the batch thread's is ours);
- ``traces, not sampled``: the same with ``OTEL_TRACES_SAMPLER=always_off``;
- ``both``: metrics and traces together.

The variants alternate within each round; every figure is a median over the rounds,
and the ratio is against ``plain`` of the same round set. The server process's CPU
time per call (its own ``process_time``, the batch thread included) is the steady
figure on a shared machine; throughput is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_verify import make_key, mint, policy, start_resource_server  # noqa: E402

from interceptors import KeyCache, StaticSource, TokenVerifier  # noqa: E402
from protos import resource_pb2, resource_pb2_grpc  # noqa: E402

VARIANTS = ("plain", "metrics", "traces", "traces, not sampled", "both")


def serve(kind: str, variant: str, jwks_path: str) -> int:
    """Child process: one resource server variant; answers CPU-time requests on stdin."""
    keys = KeyCache(StaticSource(json.loads(Path(jwks_path).read_text())))
    keys.start()
    keys.wait_until_loaded(5)
    verifier = TokenVerifier(keys, policy())
    observer: Any = None
    tracing: Any = None
    if variant in ("metrics", "both"):
        from prometheus_client import CollectorRegistry

        from interceptors.prometheus import VerifierMetrics

        observer = VerifierMetrics(verifier, CollectorRegistry())
    if variant.startswith("traces") or variant == "both":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

        from interceptors.otel import Tracing

        class Dropping(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        sampler = ALWAYS_OFF if variant.endswith("not sampled") else ALWAYS_ON
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(BatchSpanProcessor(Dropping()))
        tracing = Tracing(provider)
    _server, port = start_resource_server(kind, verifier, observer=observer, tracing=tracing)
    print(port, flush=True)
    for _ in sys.stdin:
        print(f"{time.process_time():.6f}", flush=True)
    return 0


class Server:
    def __init__(self, kind: str, variant: str, jwks_path: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                kind,
                "--variant",
                variant,
                "--jwks",
                str(jwks_path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"},
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def cpu(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def face(kind: str, jwks_path: Path, token: str, calls: int, repeats: int, clients: int) -> None:
    servers = {variant: Server(kind, variant, jwks_path) for variant in VARIANTS}
    channels = {
        variant: [
            grpc.insecure_channel(
                f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(clients)
        ]
        for variant, server in servers.items()
    }
    pool = futures.ThreadPoolExecutor(clients)
    share = calls // clients
    done = share * clients
    request = resource_pb2.GetProtectedResourceRequest()
    metadata = (("authorization", f"Bearer {token}"),)

    def drive(variant: str) -> None:
        def caller(channel: grpc.Channel) -> None:
            stub = resource_pb2_grpc.ResourceServiceStub(channel)
            for _ in range(share):
                stub.GetProtectedResource(request, metadata=metadata)

        list(pool.map(caller, channels[variant]))

    results: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in VARIANTS}
    for variant in VARIANTS:
        drive(variant)  # warm-up
    for _ in range(repeats):
        for variant in VARIANTS:
            cpu0 = servers[variant].cpu()
            started = time.perf_counter()
            drive(variant)
            elapsed = time.perf_counter() - started
            # Let the batch thread export what this round recorded before reading CPU.
            time.sleep(0.1)
            cpu = servers[variant].cpu() - cpu0
            results[variant][0].append(done / elapsed)
            results[variant][1].append(cpu / done * 1e6)
    base_cpu = statistics.median(results["plain"][1])
    base_rate = statistics.median(results["plain"][0])
    for variant, (rates, cpus) in results.items():
        rate, cpu = statistics.median(rates), statistics.median(cpus)
        print(
            f"  {kind:4} {variant:20} {rate:7.0f} rpc/s  {rate / base_rate:.2f}"
            f"   server CPU {cpu:6.1f} us/call  this/plain {cpu / base_cpu:.2f}"
            f"  (+{cpu - base_cpu:5.1f} us)"
        )
    pool.shutdown()
    for group in channels.values():
        for channel in group:
            channel.close()
    for server in servers.values():
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--serve", choices=("sync", "aio"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--jwks", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.serve:
        return serve(ns.serve, ns.variant, ns.jwks)
    private, jwk = make_key()
    (token,) = mint(private, 1)
    print(
        f"protected unary RPC, one reused token, {ns.clients} callers, {ns.calls} calls per"
        f" run, {ns.repeats} rounds; medians\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        jwks_path = Path(tmp) / "jwks.json"
        jwks_path.write_text(json.dumps({"keys": [jwk]}))
        for kind in ("sync", "aio"):
            face(kind, jwks_path, token, ns.calls, ns.repeats, ns.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
