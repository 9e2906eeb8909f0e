"""``ssot-auth login --idp NAME``: the device flow at an upstream provider, then our token.

The provider's issuer and our client id there come from the deployment's
database (``--data-dir``/``--database-url``, as ``ssot-auth idp`` stores them;
a provider with a sealed client credential also needs the key passphrase), or,
on a terminal without database access, from ``--idp-issuer`` and
``--idp-client-id`` (a public client). The verification URL and user code go to
standard error; standard output gets only our token response.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import grpc

from auth_server.commands._common import CommandError
from auth_server.commands.settings import add_passphrase_argument, add_storage_arguments
from auth_server.federation import ID_TOKEN_TYPE
from auth_server.idps import CLIENT_SECRET, DEFAULT_SCOPE, PRIVATE_KEY_JWT
from auth_server.token_exchange import TOKEN_EXCHANGE
from auth_server.upstream_auth import DeviceFlow, DeviceFlowError, ProviderCredential
from protos import auth_pb2, auth_pb2_grpc


def add_idp_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--idp`` flags of ``ssot-auth login``."""
    group = parser.add_argument_group("sign in at an upstream identity provider (device flow)")
    group.add_argument("--idp", metavar="NAME", help="the provider's name (ssot-auth idp list)")
    group.add_argument(
        "--idp-issuer", help="the provider's issuer, instead of reading it from the database"
    )
    group.add_argument("--idp-client-id", help="our client id there (with --idp-issuer)")
    group.add_argument(
        "--idp-scope", default=DEFAULT_SCOPE, help="asked of the provider (with --idp-issuer)"
    )
    add_storage_arguments(parser)
    add_passphrase_argument(parser)


def _flow(ns: argparse.Namespace) -> DeviceFlow:
    if ns.idp_issuer is not None:
        if not ns.idp_client_id:
            raise CommandError("--idp-issuer needs --idp-client-id")
        issuer, scope = ns.idp_issuer, ns.idp_scope
        credential = ProviderCredential(client_id=ns.idp_client_id)
    else:
        from auth_server.commands.idp import open_idp_store

        store = open_idp_store(ns)
        provider = store.require(ns.idp)
        if provider.disabled:
            raise CommandError(f"identity provider {provider.name} is disabled")
        issuer, scope = provider.issuer, provider.scope
        secret = None
        if provider.auth_method in (CLIENT_SECRET, PRIVATE_KEY_JWT):
            secret = open_idp_store(ns, credentials=True).credential(provider.name)
        credential = ProviderCredential(
            client_id=provider.client_id,
            secret=secret.decode() if secret and provider.auth_method == CLIENT_SECRET else None,
            private_key_pem=secret if provider.auth_method == PRIVATE_KEY_JWT else None,
        )
    try:
        return DeviceFlow(issuer, credential, scope=scope)
    except ValueError as exc:
        raise CommandError(f"the provider's issuer is not acceptable: {exc}") from None


def sign_in_with_idp(ns: argparse.Namespace, channel: grpc.Channel) -> auth_pb2.TokenResponse:
    """Run the device flow at the provider, then exchange its ID token for ours on ``channel``."""
    flow = _flow(ns)
    try:
        authorization = flow.start()
        shown = authorization.verification_uri_complete or authorization.verification_uri
        print(
            f"To sign in, open {shown}\nand enter the code {authorization.user_code}",
            file=sys.stderr,
            flush=True,
        )
        answer = flow.poll(authorization)
    except DeviceFlowError as exc:
        raise CommandError(str(exc)) from None
    request: dict[str, Any] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": answer["id_token"],
        "subject_token_type": ID_TOKEN_TYPE,
        "scope": ns.scope,
        "audience": ns.audience,
    }
    try:
        response: auth_pb2.TokenResponse = auth_pb2_grpc.AuthServiceStub(channel).Token(
            auth_pb2.TokenRequest(**request), timeout=15
        )
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else ""
        raise CommandError(f"sign-in refused: {code.name}: {details}") from None
    return response
