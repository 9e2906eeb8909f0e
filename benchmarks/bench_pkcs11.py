"""Signing rate through a PKCS#11 token (SoftHSM2) against the in-process key, same run.

    python benchmarks/bench_pkcs11.py [--seconds 1.0] [--repeats 5] [--algorithms RS256,ES256]

Prints medians over ``--repeats`` runs of, per algorithm:
  1. ``pkcs11``: a token access token signed by ``TokenIssuer`` with a key made in
     a throwaway SoftHSM2 token (``C_Sign``, one call at a time per process);
  2. ``db``: the same with a key held in this process (``--key-store db``);
  3. ``jwt.encode``: the database key through PyJWT, as tokens were signed before
     the key custody seam, so the ``db`` path can be checked for a slowdown.
Needs python-pkcs11 and SoftHSM2 (``apt-get install softhsm2``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auth_server.hsm import Pkcs11Custody, Pkcs11Settings  # noqa: E402
from auth_server.jwk import generate_private_key  # noqa: E402
from auth_server.jws import encode_compact  # noqa: E402
from auth_server.keys import SigningKey  # noqa: E402

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-pin-1234"
HEADERS = {"kid": "bench", "typ": "at+jwt"}
CLAIMS = {
    "iss": "https://auth.example",
    "sub": "7f0c1f52-3c8e-4a43-9a57-3f8b8a1f3b1e",
    "aud": "bench",
    "exp": 2_000_000_900,
    "iat": 2_000_000_000,
    "nbf": 2_000_000_000,
    "jti": "Zk3x2JkqW0m8bQ0oR1xj4A",
    "sid": "b6a3c2e1-1d7b-4a53-8d49-6f2f5f0b9f41",
    "username": "alice",
    "scope": "read write",
}


def rate(sign_one: Callable[[], object], seconds: float) -> float:
    """Signatures per second over about ``seconds``."""
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sign_one()
        count += 1
    return count / elapsed


def token(key: SigningKey) -> str:
    header = {"alg": key.algorithm, "kid": key.kid, "typ": "at+jwt"}
    return encode_compact(header, CLAIMS, key.sign)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--algorithms", default="RS256,PS256,ES256,EdDSA")
    args = parser.parse_args()
    if not os.path.exists(MODULE):
        print(f"no SoftHSM2 module at {MODULE}: apt-get install softhsm2", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp, "tokens")
        tokens.mkdir()
        conf = Path(tmp, "softhsm2.conf")
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                "bench",
                *("--pin", PIN),
                "--so-pin",
                "bench-so-pin",
            ],
            check=True,
            capture_output=True,
        )
        custody = Pkcs11Custody(Pkcs11Settings(module=Path(MODULE), token_label="bench", pin=PIN))
        print(
            f"{'algorithm':<9} {'pkcs11/s':>10} {'db/s':>10} {'jwt.encode/s':>13} {'db/pkcs11':>10}"
        )
        for algorithm in args.algorithms.split(","):
            try:
                custody.check_algorithm(algorithm)
            except Exception as exc:
                print(f"{algorithm:<9} skipped: {exc}")
                continue
            in_token = custody.generate(algorithm, rsa_bits=2048).key
            private_key = generate_private_key(algorithm)
            in_process = SigningKey(
                kid="bench", algorithm=algorithm, public_jwk={}, private_key=private_key
            )
            runs: dict[str, list[float]] = {"pkcs11": [], "db": [], "pyjwt": []}
            for _ in range(args.repeats):
                runs["pkcs11"].append(rate(lambda k=in_token: token(k), args.seconds))
                runs["db"].append(rate(lambda k=in_process: token(k), args.seconds))
                runs["pyjwt"].append(
                    rate(
                        lambda k=private_key, a=algorithm: jwt.encode(
                            CLAIMS, k, algorithm=a, headers=HEADERS
                        ),
                        args.seconds,
                    )
                )
            median = {name: statistics.median(values) for name, values in runs.items()}
            print(
                f"{algorithm:<9} {median['pkcs11']:>10.0f} {median['db']:>10.0f}"
                f" {median['pyjwt']:>13.0f} {median['db'] / median['pkcs11']:>9.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
