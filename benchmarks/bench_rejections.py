"""What refusing a hostile token costs the verifier, against the same-run cost of accepting one.

    python benchmarks/bench_rejections.py [--tokens 2000] [--repeats 5]

An attacker should not be able to make the verifier work harder than an honest caller
does. For each kind of hostile token this prints the median microseconds per
TokenVerifier.verify call (distinct tokens, so the verified-token cache never helps)
and its ratio to the baseline: a valid RS256 token, fully verified.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interceptors import AuthError, KeyCache, StaticSource, TokenPolicy, TokenVerifier  # noqa: E402

ISSUER = "https://auth.example.com"
AUDIENCE = "bench"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = "bench-key"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "sub": "u", "aud": AUDIENCE, "exp": now + 600, "iat": now}
    return {**base, "jti": uuid.uuid4().hex, **changes}


def header(**changes: Any) -> dict[str, Any]:
    return {"alg": "RS256", "kid": KID, "typ": "at+jwt", **changes}


def signed(h: dict[str, Any] | None = None, c: dict[str, Any] | None = None) -> str:
    return jwt.encode(c or claims(), KEY, algorithm="RS256", headers=h or header())


def raw(h: Any, c: Any, signature: bytes) -> str:
    return f"{b64u(json.dumps(h).encode())}.{b64u(json.dumps(c).encode())}.{b64u(signature)}"


PEM = KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def hs256_with_pem() -> str:
    signing_input = (
        f"{b64u(json.dumps(header(alg='HS256')).encode())}.{b64u(json.dumps(claims()).encode())}"
    )
    mac = hmac.new(PEM, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64u(mac)}"


KINDS: dict[str, Callable[[], str]] = {
    "baseline: valid token": lambda: signed(),
    "bad signature (real kid)": lambda: signed()[:-8] + "AAAAAAAA",
    "unknown kid": lambda: raw(header(kid=uuid.uuid4().hex), claims(), os.urandom(256)),
    "alg none": lambda: raw(header(alg="none"), claims(), b""),
    "HS256 keyed with the PEM": hs256_with_pem,
    "expired (valid signature)": lambda: signed(c=claims(exp=1, iat=0)),
    "JSON nested past the limit": lambda: raw(
        header(), {"x": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}, b"s"
    ),
    "8 KB of garbage": lambda: "a" * 8000,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
    jwk.update({"kid": KID, "alg": "RS256", "use": "sig"})
    keys = KeyCache(StaticSource({"keys": [jwk]}), background=False)
    assert keys.wait_until_loaded(5)
    verifier = TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE), cache_size=0)

    medians: dict[str, float] = {}
    for name, make in KINDS.items():
        runs = []
        for _ in range(args.repeats):
            tokens = [make() for _ in range(args.tokens)]
            started = time.perf_counter()
            for token in tokens:
                with contextlib.suppress(AuthError):
                    verifier.verify(token)
            runs.append((time.perf_counter() - started) / len(tokens) * 1e6)
        medians[name] = statistics.median(runs)
    baseline = medians["baseline: valid token"]
    print(f"{'token':<30} {'us/verify':>10} {'x baseline':>11}")
    for name, value in medians.items():
        print(f"{name:<30} {value:>10.1f} {value / baseline:>11.2f}")
    keys.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
