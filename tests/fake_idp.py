"""A test-controlled OpenID Provider: discovery + JWKS on a real loopback HTTP server.

It signs ID tokens with keys the test holds, so the tests can craft the attacks
a real provider would never produce (``alg: none``, HS256 keyed with the public
key, a key outside the JWKS, tampered claims). The device-flow tests use a real
provider instead (``tests/oidc_provider``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.jwk import public_jwk
from helpers import EventLoopThread, without_dropped


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FakeProvider:
    """One provider: its issuer URL, signing key and the JWKS it publishes."""

    issuer: str = ""
    client_id: str = "ssot-test-client"
    key: rsa.RSAPrivateKey = field(default_factory=new_rsa_key)
    fetches: int = 0

    @property
    def jwk(self) -> dict[str, Any]:
        return dict(public_jwk(self.key.public_key(), "RS256"))

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "u-1001",
            "aud": self.client_id,
            "exp": now + 300,
            "iat": now,
            "auth_time": now,
            "email": "alice@example.com",
            "email_verified": True,
            "preferred_username": "alice",
        }
        return without_dropped(base, changes)

    def id_token(
        self,
        *,
        key: Any = None,
        kid: str | None = None,
        header: Mapping[str, Any] | None = None,
        **changes: Any,
    ) -> str:
        """An ID token signed RS256 with the provider's key (or ``key``), claims changed."""
        headers = without_dropped({"kid": kid or self.kid, "typ": "JWT"}, header or {})
        return jwt.encode(
            self.claims(**changes), key or self.key, algorithm="RS256", headers=headers
        )

    def unsigned(self, alg: str, secret: bytes = b"", **changes: Any) -> str:
        """A token with ``alg`` ``none`` (``secret`` as signature), or an HMAC keyed with it."""
        header = b64(json.dumps({"alg": alg, "kid": self.kid, "typ": "JWT"}).encode())
        payload = b64(json.dumps(self.claims(**changes)).encode())
        signing_input = f"{header}.{payload}".encode()
        if alg.startswith("HS"):
            signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
        else:
            signature = secret
        return f"{header}.{payload}.{b64(signature)}"

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": self.issuer + "/jwks.json",
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": [self.jwk]}, headers={"Cache-Control": "max-age=300"})


@contextlib.contextmanager
def serve_provider(loop_thread: EventLoopThread, **settings: Any) -> Iterator[FakeProvider]:
    """Serve a :class:`FakeProvider` on ``127.0.0.1`` (its issuer is ``http://127.0.0.1:PORT``)."""
    provider = FakeProvider(**settings)
    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", provider.discovery)
    app.router.add_get("/jwks.json", provider.jwks)
    runner = web.AppRunner(app)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    port = loop_thread.run(start())
    provider.issuer = f"http://127.0.0.1:{port}"
    try:
        yield provider
    finally:
        loop_thread.run(runner.cleanup())
