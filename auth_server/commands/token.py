"""``ssot-auth token --client NAME``: get a client-credentials token over gRPC and print it as JSON.

With ``--key-file`` the command signs an RFC 7523 assertion with the client's
private key (``aud`` = the issuer identifier, a fresh ``jti``, 60 s lifetime);
with ``--secret-stdin`` it sends the secret read from standard input; with only
``--client-cert``/``--client-key`` it authenticates by mutual TLS.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from auth_server.client_assertion import ASSERTION_TYPE
from auth_server.commands._common import CommandError
from auth_server.commands.login import add_connection_arguments, open_channel
from auth_server.jwk import public_jwk
from interceptors._cli import add_env_argument
from protos import auth_pb2, auth_pb2_grpc

ASSERTION_LIFETIME = 60


def register(commands: Any) -> None:
    token = commands.add_parser(
        "token", help="get a client-credentials token and print the token response as JSON"
    )
    token.add_argument("--client", required=True, help="the client id")
    how = token.add_mutually_exclusive_group()
    how.add_argument(
        "--key-file", type=Path, help="the client's private key (PEM): private_key_jwt"
    )
    how.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the client secret from the first line of standard input",
    )
    token.add_argument("--kid", help="the key id to name (default: the key's RFC 7638 thumbprint)")
    add_env_argument(
        token, "--issuer", help="the auth service's issuer identifier, the assertion's aud"
    )
    token.add_argument("--audience", default="", help="the audience to ask for")
    token.add_argument("--scope", default="", help="space-separated scopes to ask for")
    add_connection_arguments(token)
    token.set_defaults(run=_cmd_token)


def algorithm_for(key: object) -> str:
    """The assertion algorithm of a key: RS256, ES256 (P-256) or EdDSA (Ed25519)."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("the key must be RSA, EC P-256 or Ed25519")


def sign_assertion(
    key: Any, *, client_id: str, issuer: str, kid: str | None = None, now: float | None = None
) -> str:
    """An RFC 7523 client assertion: iss = sub = client id, aud = issuer, 60 s, fresh jti."""
    algorithm = algorithm_for(key)
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": issuer,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
        "jti": secrets.token_urlsafe(16),
    }
    headers = {"kid": kid or public_jwk(key, algorithm)["kid"], "typ": "JWT"}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _request(ns: argparse.Namespace) -> auth_pb2.TokenRequest:
    request = auth_pb2.TokenRequest(
        grant_type="client_credentials",
        client_id=ns.client,
        scope=ns.scope,
        audience=ns.audience,
    )
    if ns.key_file is not None:
        if not ns.issuer:
            raise CommandError("--key-file needs --issuer (the assertion's audience)")
        try:
            key = load_pem_private_key(ns.key_file.read_bytes(), password=None)
            request.client_assertion = sign_assertion(
                key, client_id=ns.client, issuer=ns.issuer, kid=ns.kid
            )
        except (OSError, ValueError, TypeError) as exc:
            raise CommandError(f"cannot use --key-file {ns.key_file}: {exc}") from None
        request.client_assertion_type = ASSERTION_TYPE
    elif ns.secret_stdin:
        secret = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        if not secret:
            raise CommandError("no secret on standard input")
        request.client_secret = secret
    elif not ns.client_cert:
        raise CommandError("give --key-file, --secret-stdin, or --client-cert/--client-key")
    return request


def _cmd_token(ns: argparse.Namespace) -> int:
    request = _request(ns)
    with open_channel(ns) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            response = stub.Token(request, timeout=15)
        except grpc.RpcError as exc:
            call = exc if isinstance(exc, grpc.Call) else None
            trailers: dict[str, Any] = dict(call.trailing_metadata() or ()) if call else {}
            error = trailers.get("oauth-error", "")
            code = call.code().name if call else "UNKNOWN"
            raise CommandError(f"token request failed: {code} {error}".rstrip()) from None
    body: dict[str, Any] = {
        "access_token": response.access_token,
        "token_type": response.token_type,
        "expires_in": response.expires_in,
        "scope": response.scope,
    }
    print(json.dumps(body, indent=2))
    return 0
