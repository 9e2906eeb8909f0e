"""The attack suite's kit: crafted tokens, the issuer under attack, and the one assertion.

Every family module builds a table of named cases; each case is a function from an
:class:`Issuer` (the real signing key of the server under attack) to a token or to
raw metadata. :meth:`Target.refuse` sends it through a real resource server and
checks what every case must get: the exact status (``UNAUTHENTICATED``,
never OK, UNKNOWN or INTERNAL), a safe status message that does not echo the
token, no JWKS fetch unless the case allows one, and afterwards the server still
serving and an honest token still passing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers import (
    AUDIENCE,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    running_resource,
    serving_resource,
    without_dropped,
)

# Re-exported: the family modules import them from here.
from helpers import DROP as DROP
from helpers import FACES as FACES
from helpers import bearer as bearer
from helpers import claims as default_claims
from interceptors import KeyCache, StaticSource, TokenPolicy, TokenVerifier
from interceptors._keyset import SUPPORTED_ALGORITHMS
from protos import resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig

PASSWORD = "honest-password-7f3a9c"
HONEST_USER = "honest"
REQUEST = resource_pb2.GetProtectedResourceRequest()
Metadata: TypeAlias = tuple[tuple[str, str | bytes], ...]
#: A case: the issuer under attack -> the token (str) or the raw metadata to send.
Attack: TypeAlias = Callable[["Issuer"], "str | Metadata"]

#: Every token and password the suite sent, for the audit leak scan.
SENT_SECRETS: set[str] = set()


def b64u(data: bytes) -> str:
    """Unpadded base64url, as JWS uses it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def compact(
    header: Mapping[str, Any] | bytes, payload: Mapping[str, Any] | bytes, sig: bytes
) -> str:
    """A compact JWS from a header and payload (objects, or raw JSON bytes) and a signature."""
    h = header if isinstance(header, bytes) else json_bytes(header)
    p = payload if isinstance(payload, bytes) else json_bytes(payload)
    return f"{b64u(h)}.{b64u(p)}.{b64u(sig)}"


@dataclass(frozen=True)
class Issuer:
    """A signing key the server under attack trusts, and how to make tokens with it."""

    kid: str
    algorithm: str
    private_key: Any = field(repr=False)
    jwk: Mapping[str, Any] = field(repr=False)  # the public JWK exactly as published
    jwks_body: bytes = field(repr=False)  # the JWKS document exactly as served

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()

    def claims(self, **changes: Any) -> dict[str, Any]:
        """Valid claims for the server under attack (``helpers.claims``), changed as asked."""
        return default_claims(
            issuer=ISSUER, audience=AUDIENCE, **{"username": "mallory", **changes}
        )

    def header(self, **changes: Any) -> dict[str, Any]:
        return without_dropped({"alg": self.algorithm, "kid": self.kid, "typ": "at+jwt"}, changes)

    def sign_input(
        self, signing_input: bytes, algorithm: str | None = None, key: Any = None
    ) -> bytes:
        """A signature over ``signing_input`` (default: this issuer's real key and algorithm)."""
        alg = jwt.get_algorithm_by_name(algorithm or self.algorithm)
        signature: bytes = alg.sign(signing_input, key if key is not None else self.private_key)
        return signature

    def sign(
        self,
        header: Mapping[str, Any] | bytes | None = None,
        claims: Mapping[str, Any] | bytes | None = None,
        *,
        algorithm: str | None = None,
        key: Any = None,
    ) -> str:
        """A token with this header and claims, validly signed (by default with the real key)."""
        h = header if isinstance(header, bytes) else json_bytes(header or self.header())
        p = claims if isinstance(claims, bytes) else json_bytes(claims or self.claims())
        signing_input = f"{b64u(h)}.{b64u(p)}".encode()
        return f"{signing_input.decode()}.{b64u(self.sign_input(signing_input, algorithm, key))}"

    def token(self, header: Mapping[str, Any] | None = None, **claim_changes: Any) -> str:
        """A valid token, changed as asked: ``issuer.token(exp="x")``."""
        return self.sign(self.header(**(header or {})), self.claims(**claim_changes))


@dataclass
class Target:
    """A running resource server (sync or aio), its key cache, and the issuer it trusts."""

    issuer: Issuer
    keys: KeyCache
    channel: grpc.Channel
    aio: bool
    honest_token: str
    honest_name: str

    @property
    def stub(self) -> resource_pb2_grpc.ResourceServiceStub:
        return resource_pb2_grpc.ResourceServiceStub(self.channel)

    def call(self, metadata: Metadata | None, timeout: float = 10) -> Any:
        return self.stub.GetProtectedResource(REQUEST, metadata=metadata, timeout=timeout)

    def assert_serving(self) -> None:
        """The server answers health checks and an honest token still gets through."""
        health = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reply = self.call(bearer(self.honest_token))
        assert reply.user.username == self.honest_name

    def refuse(
        self,
        attack: str | Metadata,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED,
        fetches: int | None = 0,
    ) -> grpc.Call:
        """Send ``attack`` (a token, or raw metadata) and check it is refused as it must be.

        Args:
            attack: The crafted token, or the whole metadata to send.
            code: The one status code expected.
            fetches: How many JWKS fetches the attempt may cause (``None``: not checked).
        """
        metadata = bearer(attack) if isinstance(attack, str) else attack
        for _, value in metadata:
            if isinstance(value, str):
                SENT_SECRETS.add(value.removeprefix("Bearer "))
        before = self.keys.stats.fetches
        with pytest.raises(grpc.RpcError) as info:
            self.call(metadata)
        error = info.value
        assert isinstance(error, grpc.Call)
        assert error.code() == code, f"{error.code()}: {error.details()}"
        details = error.details() or ""
        if isinstance(attack, str) and attack and details not in SAFE_MESSAGES:
            # A fixed category text echoes nothing, even when a tiny mutated token
            # (Hypothesis shrinks to "e") happens to be a substring of it.
            assert attack not in details
        if code == grpc.StatusCode.UNAUTHENTICATED:
            # The category names only, as the verifier's error classes define them.
            assert details in SAFE_MESSAGES, details
        if fetches is not None:
            assert self.keys.stats.fetches - before <= fetches
        self.assert_serving()
        return error


SAFE_MESSAGES = frozenset(
    {
        "missing bearer token",
        "invalid token",
        "malformed token",
        "invalid signature",
        "token expired",
        "token not yet valid",
        "invalid token claims",
        "unknown signing key",
        "token not bound to the client certificate",
    }
)


def issuer_from_auth(auth: AuthHarness) -> Issuer:
    key = auth.signing_key()
    with urllib.request.urlopen(auth.jwks_url, timeout=10) as response:
        body = response.read()
    (jwk,) = [entry for entry in json.loads(body)["keys"] if entry["kid"] == key.kid]
    return Issuer(
        kid=key.kid, algorithm=key.algorithm, private_key=key.private_key, jwk=jwk, jwks_body=body
    )


def issuer_from_key(private_key: Any, algorithm: str) -> Issuer:
    """An issuer whose key only a static key set publishes (curves our auth server lacks)."""
    algo = jwt.get_algorithm_by_name(algorithm)
    jwk = json.loads(algo.to_jwk(private_key.public_key()))
    jwk.update({"alg": algorithm, "use": "sig"})
    jwk["kid"] = jwt.PyJWK(jwk).key_id or f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
    body = json_bytes({"keys": [jwk]})
    return Issuer(
        kid=jwk["kid"], algorithm=algorithm, private_key=private_key, jwk=jwk, jwks_body=body
    )


# -- attacker material ----------------------------------------------------------------------


@dataclass(frozen=True)
class Attacker:
    """Keys the attacker controls."""

    rsa: rsa.RSAPrivateKey
    rsa_1024: rsa.RSAPrivateKey
    p256: ec.EllipticCurvePrivateKey
    ed25519: ed25519.Ed25519PrivateKey

    def key_for(self, algorithm: str) -> Any:
        if algorithm.startswith(("RS", "PS")):
            return self.rsa
        if algorithm == "ES256":
            return self.p256
        if algorithm == "ES384":
            return ec.generate_private_key(ec.SECP384R1())
        if algorithm == "ES512":
            return ec.generate_private_key(ec.SECP521R1())
        return self.ed25519


ATTACKER = Attacker(
    rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    rsa_1024=rsa.generate_private_key(public_exponent=65537, key_size=1024),
    p256=ec.generate_private_key(ec.SECP256R1()),
    ed25519=ed25519.Ed25519PrivateKey.generate(),
)


# -- servers in front of an issuer ----------------------------------------------------------


@contextlib.contextmanager
def auth_target(
    loop_thread: EventLoopThread, auth: AuthHarness, *, aio: bool, **cache: Any
) -> Iterator[Target]:
    """A resource server in front of ``auth`` (HTTP JWKS), with a logged-in honest user."""
    honest = auth.login(HONEST_USER, PASSWORD).access_token
    SENT_SECRETS.add(honest)
    with running_resource(loop_thread, auth, aio=aio, **cache) as resource:
        assert resource.keys.wait_until_loaded(10)
        target = Target(
            issuer=issuer_from_auth(auth),
            keys=resource.keys,
            channel=resource.channel,
            aio=aio,
            honest_token=honest,
            honest_name=HONEST_USER,
        )
        target.assert_serving()
        yield target


@contextlib.contextmanager
def serve_verifier(
    loop_thread: EventLoopThread,
    keys: KeyCache,
    policy: TokenPolicy,
    *,
    aio: bool,
    config: ResourceServerConfig | None = None,
) -> Iterator[grpc.Channel]:
    """A resource server over any key cache and policy; yields a channel to it."""
    config = config or ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=policy.issuer,
        audience=policy.audience,
        jwks_url="http://127.0.0.1:9/unused",  # the key cache is given; no source is built
    )
    with serving_resource(loop_thread, config, TokenVerifier(keys, policy), aio=aio) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield channel
        finally:
            channel.close()


@contextlib.contextmanager
def static_targets(
    loop_thread: EventLoopThread, issuers: Sequence[Issuer], *, aio: bool
) -> Iterator[dict[str, Target]]:
    """One resource server trusting a static set of ``issuers``; a Target per algorithm."""
    document = {"keys": [dict(i.jwk) for i in issuers]}
    keys = KeyCache(StaticSource(document), background=False)
    policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE, algorithms=SUPPORTED_ALGORITHMS)
    try:
        with serve_verifier(loop_thread, keys, policy, aio=aio) as channel:
            targets = {}
            for issuer in issuers:
                honest = issuer.token(sub="user-honest", username=HONEST_USER)
                targets[issuer.algorithm] = Target(
                    issuer=issuer,
                    keys=keys,
                    channel=channel,
                    aio=aio,
                    honest_token=honest,
                    honest_name=HONEST_USER,
                )
                targets[issuer.algorithm].assert_serving()
            yield targets
    finally:
        keys.close()
