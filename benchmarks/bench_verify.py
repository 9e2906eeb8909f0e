"""Cost of verifying a token, standalone and inside a gRPC server, against same-run baselines.

    python benchmarks/bench_verify.py [--calls 1000] [--repeats 5] [--clients 4]
        [--jose-dir DIR | --no-jose]

Every figure is a median of ``--repeats`` paired rounds (the variants of a row
alternate within each round, so drift on a shared machine hits them alike), and
every goal row is printed as a ratio against its baseline measured in the same run:

  1. Signature checks, one thread, distinct tokens (no cache hits):
     ``TokenVerifier.verify`` vs raw ``cryptography`` RSA-2048 verify of the same
     tokens' signatures (the floor any verifier pays), the verified-token cache hit,
     and Node ``jose``'s ``jwtVerify`` (the seed's verifier) on the same tokens. The
     jose row needs ``node`` and ``npm``: jose is installed once into ``--jose-dir``
     (outside the repository); without them the row says "skipped".
  2. Unary RPCs on one resource server (sync, then aio) running in its own process,
     driven by ``--clients`` concurrent callers from this process: the public method
     (no token) vs the protected method with one reused token (verified-token cache
     hits) vs a fresh token per call (a full check each time). Beside throughput, the
     server process's CPU time per call (its own ``process_time``), which a noisy
     machine disturbs far less than throughput.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt.algorithms import RSAAlgorithm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interceptors import KeyCache, StaticSource, TokenPolicy, TokenVerifier  # noqa: E402
from protos import resource_pb2, resource_pb2_grpc  # noqa: E402

ISSUER = "https://auth.bench.test"
AUDIENCE = "bench"
KID = "bench-rs256"

_JOSE_SCRIPT = """
const { importJWK, jwtVerify } = require("jose");
const fs = require("fs");
(async () => {
  const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const key = await importJWK(input.jwk, "RS256");
  const options = { issuer: input.issuer, audience: input.audience,
                    typ: "at+jwt", algorithms: ["RS256"] };
  for (const token of input.tokens.slice(0, 200)) await jwtVerify(token, key, options);
  const rates = [];
  for (let round = 0; round < input.repeats; round++) {
    // CPU time, as for the Python rows: waiting for a core on a shared machine is left out.
    const started = process.cpuUsage();
    for (const token of input.tokens) await jwtVerify(token, key, options);
    const used = process.cpuUsage(started);
    const seconds = (used.user + used.system) / 1e6;
    rates.push(input.tokens.length / seconds);
  }
  rates.sort((a, b) => a - b);
  console.log(JSON.stringify({ rate: rates[Math.floor(rates.length / 2)],
                               version: require("jose/package.json").version }));
})().catch((err) => { console.error(err); process.exit(1); });
"""


# -- key material and tokens -----------------------------------------------------------------


def make_key() -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=KID, alg="RS256", use="sig")
    return private, jwk


def mint(private: rsa.RSAPrivateKey, count: int) -> list[str]:
    """``count`` distinct access tokens shaped as the auth service issues them."""
    now = int(time.time())
    headers = {"kid": KID, "typ": "at+jwt"}
    return [
        jwt.encode(
            {
                "iss": ISSUER,
                "sub": "user-1",
                "aud": AUDIENCE,
                "exp": now + 3600,
                "iat": now,
                "nbf": now,
                "jti": uuid.uuid4().hex,
                "sid": "session-1",
                "username": "bench",
                "scope": "resource.read",
            },
            private,
            algorithm="RS256",
            headers=headers,
        )
        for _ in range(count)
    ]


def policy() -> TokenPolicy:
    return TokenPolicy(issuer=ISSUER, audience=AUDIENCE)


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def cpu_rates(
    runs: Sequence[Callable[[slice], None]],
    count: int,
    repeats: int,
    before_round: Callable[[], None] = lambda: None,
) -> list[float]:
    """Median rate of each run over ``count`` items, in this thread's CPU time.

    The runs alternate in chunks of 50 items, so a neighbour's burst of load or a
    change of clock speed hits every run alike; thread CPU time leaves out the time
    this thread waited for a core.
    """
    figures: list[list[float]] = [[] for _ in runs]
    chunks = [slice(i, min(i + 50, count)) for i in range(0, count, 50)]
    for _ in range(repeats):
        before_round()
        spent = [0] * len(runs)
        for chunk in chunks:
            for i, run in enumerate(runs):
                started = time.thread_time_ns()
                run(chunk)
                spent[i] += time.thread_time_ns() - started
        for i, ns in enumerate(spent):
            figures[i].append(count / (ns / 1e9))
    return [statistics.median(f) for f in figures]


# -- 1. standalone ---------------------------------------------------------------------------


def jose_rate(
    jose_dir: Path | None, jwk: dict[str, Any], tokens: list[str], repeats: int
) -> str | float:
    """jose's jwtVerify rate on ``tokens``, or why the row is skipped."""
    if jose_dir is None:
        return "skipped (--no-jose)"
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "skipped (node and npm are needed)"
    if not (jose_dir / "node_modules" / "jose").is_dir():
        jose_dir.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(jose_dir), "jose@5"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if installed.returncode != 0:
            return "skipped (npm install jose failed)"
    with tempfile.TemporaryDirectory() as tmp:
        script, data = Path(tmp) / "verify.js", Path(tmp) / "input.json"
        script.write_text(_JOSE_SCRIPT)
        data.write_text(
            json.dumps(
                {
                    "jwk": jwk,
                    "tokens": tokens,
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "repeats": repeats,
                }
            )
        )
        env = {**os.environ, "NODE_PATH": str(jose_dir / "node_modules")}
        done = subprocess.run(
            [node, str(script), str(data)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
    if done.returncode != 0:
        return f"skipped (node failed: {done.stderr.strip()[:80]})"
    result = json.loads(done.stdout)
    return float(result["rate"])


def standalone(
    private: rsa.RSAPrivateKey,
    jwk: dict[str, Any],
    tokens: list[str],
    repeats: int,
    jose_dir: Path | None,
) -> None:
    print("1. signature checks per second, one thread, distinct tokens (no cache hits)")
    keys = KeyCache(StaticSource({"keys": [jwk]}))
    keys.start()
    keys.wait_until_loaded(5)
    public_key = private.public_key()
    inputs = [(f"{h}.{p}".encode(), b64decode(s)) for h, p, s in (t.split(".") for t in tokens)]

    def raw(chunk: slice) -> None:
        for signing_input, signature in inputs[chunk]:
            public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())

    verifiers = [TokenVerifier(keys, policy())]

    def new_verifier() -> None:
        # A fresh verifier each round, so no token is a cache hit.
        verifiers[0] = TokenVerifier(keys, policy())

    def full(chunk: slice) -> None:
        verify = verifiers[0].verify
        for token in tokens[chunk]:
            verify(token)

    cached = TokenVerifier(keys, policy())
    cached.verify(tokens[0])

    def hits(chunk: slice) -> None:
        for _ in range(chunk.stop - chunk.start):
            cached.verify(tokens[0])

    full(slice(0, len(tokens)))  # warm-up
    r_raw, r_full, r_hit = cpu_rates([raw, full, hits], len(tokens), repeats, new_verifier)
    r_jose = jose_rate(jose_dir, jwk, tokens, repeats)
    print(f"  raw cryptography RSA-2048 verify {r_raw:9.0f} /s   1.00")
    ratio = r_full / r_raw
    print(f"  TokenVerifier.verify             {r_full:9.0f} /s   {ratio:.2f}  (goal >= 0.6)")
    print(f"  TokenVerifier.verify, cache hit  {r_hit:9.0f} /s   {r_hit / r_raw:.2f}")
    if isinstance(r_jose, str):
        print(f"  jose jwtVerify (node)            {r_jose}")
    else:
        print(
            f"  jose jwtVerify (node)            {r_jose:9.0f} /s   {r_jose / r_raw:.2f}"
            f"   -> TokenVerifier.verify / jose = {r_full / r_jose:.2f}x  (goal >= 2)"
        )
    keys.close()


# -- 2. RPCs against a server in its own process ----------------------------------------------


def _timed_verifier(verifier: TokenVerifier, spent: list[int]) -> None:
    """Count the thread CPU time and the calls of ``verifier``'s checks (``--diagnose``)."""
    verify, averify = verifier.verify, verifier.averify

    def timed(token: str) -> Any:
        started = time.thread_time_ns()
        try:
            return verify(token)
        finally:
            spent[0] += time.thread_time_ns() - started
            spent[1] += 1

    async def atimed(token: str) -> Any:
        # The event loop's thread runs the whole check (no await yields for a known key).
        started = time.thread_time_ns()
        try:
            return await averify(token)
        finally:
            spent[0] += time.thread_time_ns() - started
            spent[1] += 1

    verifier.verify = timed  # type: ignore[method-assign]
    verifier.averify = atimed  # type: ignore[method-assign]


def start_resource_server(kind: str, verifier: TokenVerifier, **options: Any) -> tuple[Any, int]:
    """The example resource server, ``sync`` or ``aio``, on a loopback port: (server, port).

    ``options`` go to ``build_server`` / ``start_aio_server`` (observer, tracing).
    """
    import asyncio

    from resource_server import ResourceServerConfig, build_server, start_aio_server

    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url="http://127.0.0.1:1/unused",
        reflection=False,
    )
    if kind == "aio":
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        return asyncio.run_coroutine_threadsafe(
            start_aio_server(config, verifier, **options), loop
        ).result(30)
    return build_server(config, verifier, **options)


def serve(kind: str, jwks_path: str, diagnose: bool = False) -> int:
    """Child process: a resource server over a static key set; answers CPU-time requests."""
    import resource

    document = json.loads(Path(jwks_path).read_text())
    keys = KeyCache(StaticSource(document))
    keys.start()
    keys.wait_until_loaded(5)
    verifier = TokenVerifier(keys, policy())
    spent = [0, 0]
    if diagnose:
        _timed_verifier(verifier, spent)
    _server, port = start_resource_server(kind, verifier)
    print(port, flush=True)
    # Each line asks for this process's CPU seconds so far (then, for --diagnose, its
    # user and system seconds, minor page faults, voluntary and involuntary context
    # switches, and the thread CPU ns and count of verifier calls); end of input ends it.
    for _ in sys.stdin:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"{time.process_time():.6f} {usage.ru_utime:.6f} {usage.ru_stime:.6f}"
            f" {usage.ru_minflt} {usage.ru_nvcsw} {usage.ru_nivcsw} {spent[0]} {spent[1]}",
            flush=True,
        )
    return 0


class ServerProcess:
    def __init__(self, kind: str, jwks_path: Path, diagnose: bool = False) -> None:
        extra = ["--diagnose"] if diagnose else []
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--jwks", str(jwks_path), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def counters(self) -> list[float]:
        """The server's CPU seconds, then the ``--diagnose`` counters (see ``serve``)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return [float(field) for field in self.proc.stdout.readline().split()]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


Stub = resource_pb2_grpc.ResourceServiceStub


def rpc_face(
    kind: str,
    jwks_path: Path,
    reused: str,
    next_fresh: Callable[[], str],
    next_sent: Callable[[], str],
    calls: int,
    repeats: int,
    clients: int,
    diagnose: bool = False,
) -> None:
    server = ServerProcess(kind, jwks_path, diagnose)
    channels = [
        # One connection per caller, as separate clients would have.
        grpc.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(clients)
    ]
    stubs = [Stub(channel) for channel in channels]
    pool = futures.ThreadPoolExecutor(clients)
    share = calls // clients
    done = share * clients

    def drive(call: Callable[[Stub], object]) -> None:
        def caller(stub: Stub) -> None:
            for _ in range(share):
                call(stub)

        list(pool.map(caller, stubs))

    public_req = resource_pb2.GetPublicInfoRequest()
    prot_req = resource_pb2.GetProtectedResourceRequest()
    reused_md = (("authorization", f"Bearer {reused}"),)
    modes: dict[str, Callable[[Stub], object]] = {
        "public method": lambda stub: stub.GetPublicInfo(public_req),
        # The same bytes on the wire as the reused-token call: what is left between
        # this row and that one is the interceptor's own cost.
        "public, token sent anyway": lambda stub: stub.GetPublicInfo(
            public_req, metadata=reused_md
        ),
        # A new token per call costs the transport too (a header HPACK cannot index):
        # the public method with never-verified tokens, the baseline of the fresh row.
        "public, new token sent": lambda stub: stub.GetPublicInfo(
            public_req, metadata=(("authorization", f"Bearer {next_sent()}"),)
        ),
        "protected, reused token": lambda stub: stub.GetProtectedResource(
            prot_req, metadata=reused_md
        ),
        "protected, fresh token": lambda stub: stub.GetProtectedResource(
            prot_req, metadata=(("authorization", f"Bearer {next_fresh()}"),)
        ),
    }
    results: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in modes}
    # Per call: user µs, system µs, minor faults, voluntary and involuntary switches;
    # then µs of thread CPU per verifier call (nan without one).
    details: dict[str, list[list[float]]] = {m: [] for m in modes}
    for call in modes.values():
        drive(call)  # warm-up: connections, caches
    for _ in range(repeats):
        for mode, call in modes.items():
            before = server.counters()
            started = time.perf_counter()
            drive(call)
            elapsed = time.perf_counter() - started
            after = server.counters()
            cpu = after[0] - before[0]
            results[mode][0].append(done / elapsed)
            results[mode][1].append(cpu / done * 1e6)
            if diagnose:
                delta = [b - a for a, b in zip(before, after, strict=True)]
                per_verify = delta[6] / delta[7] / 1e3 if delta[7] else float("nan")
                details[mode].append(
                    [delta[1] / done * 1e6, delta[2] / done * 1e6]
                    + [d / done for d in delta[3:6]]
                    + [per_verify]
                )
    base_rate = statistics.median(results["public method"][0])
    base_cpu = statistics.median(results["public method"][1])
    for mode, (rates, cpus) in results.items():
        rate, cpu = statistics.median(rates), statistics.median(cpus)
        print(
            f"  {kind:4} {mode:25} {rate:7.0f} rpc/s  {rate / base_rate:.2f}"
            f"   server CPU {cpu:6.1f} us/call  public/this {base_cpu / cpu:.2f}"
        )
        if diagnose:
            user, system, faults, voluntary, involuntary, verify = (
                statistics.median(column) for column in zip(*details[mode], strict=True)
            )
            print(
                f"         user {user:6.1f} sys {system:6.1f} us/call, minor faults {faults:5.2f},"
                f" switches {voluntary:5.2f} vol {involuntary:5.2f} invol per call,"
                f" verifier {verify:6.1f} us thread CPU per verify"
            )
    pool.shutdown()
    for channel in channels:
        channel.close()
    server.close()


def rpcs(
    jwk: dict[str, Any],
    tokens: list[str],
    calls: int,
    repeats: int,
    clients: int,
    diagnose: bool = False,
) -> None:
    print(
        f"\n2. unary RPCs, server in its own process, {clients} concurrent callers;"
        " rate and server CPU per call"
    )
    fresh = iter(tokens[1:])
    lock = threading.Lock()

    def next_fresh() -> str:
        with lock:
            return next(fresh)

    # The public method verifies nothing, so it may send the same tokens again.
    sent = itertools.cycle(tokens[1:])

    def next_sent() -> str:
        with lock:
            return next(sent)

    with tempfile.TemporaryDirectory() as tmp:
        jwks_path = Path(tmp) / "jwks.json"
        jwks_path.write_text(json.dumps({"keys": [jwk]}))
        for kind in ("sync", "aio"):
            rpc_face(
                kind, jwks_path, tokens[0], next_fresh, next_sent, calls, repeats, clients, diagnose
            )
    print(
        "  goals: reused >= 0.95 and fresh >= 0.80 of the public method. The rates are"
        " bounded by this\n  process's callers on the same 2 cores; the server's CPU per"
        " call is the steadier figure, and\n  the 'sent' rows show what the token costs the"
        " transport before any interceptor runs."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--jose-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ssot-bench-jose",
        help="where jose is installed with npm (outside the repository)",
    )
    parser.add_argument("--no-jose", action="store_true")
    parser.add_argument("--skip-rpc", action="store_true")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="also print the servers' user/system time, page faults, context switches"
        " and thread CPU per verifier call",
    )
    parser.add_argument("--serve", choices=("sync", "aio"), help=argparse.SUPPRESS)
    parser.add_argument("--jwks", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.serve:
        return serve(ns.serve, ns.jwks, ns.diagnose)

    private, jwk = make_key()
    # Fresh tokens for each face: one per call of every round and of the warm-up.
    rpc_tokens = 0 if ns.skip_rpc else 2 * ns.calls * (ns.repeats + 1) + 1
    tokens = mint(private, ns.calls + rpc_tokens)
    print(f"calls per run: {ns.calls}, rounds: {ns.repeats}, figures are medians\n")
    standalone(private, jwk, tokens[: ns.calls], ns.repeats, None if ns.no_jose else ns.jose_dir)
    if not ns.skip_rpc:
        rpcs(jwk, tokens[ns.calls :], ns.calls, ns.repeats, ns.clients, ns.diagnose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
