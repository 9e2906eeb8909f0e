"""``ssot-auth up``: the whole system on embedded defaults, for trying it out."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import shlex
from pathlib import Path
from typing import Any

from auth_server.app import start_auth_server
from auth_server.commands._demo_client import DEMO_CLIENT, ensure_demo_client
from auth_server.commands.serve import audiences_of, server_config
from auth_server.commands.serve_flags import add_server_arguments
from auth_server.commands.settings import write_secret_file
from auth_server.users import UserStore
from interceptors._cli import add_env_argument, run_until_signalled
from resource_server import ResourceServerConfig, open_verifier, start_aio_server

_LOGGER = logging.getLogger(__name__)

DEMO_USER = "demo"
DEMO_SCOPES = ("resource.read", "resource.admin")
DEMO_PASSWORD_FILE = "demo-password"  # noqa: S105 - a file name
DEMO_ISSUER = "http://127.0.0.1:8080"
DEMO_AUDIENCE = "ssot-demo"


def register(commands: Any) -> None:
    up = commands.add_parser("up", help="run auth + resource servers on embedded defaults")
    add_server_arguments(up, required=False)
    add_env_argument(
        up,
        "--resource-grpc",
        default="127.0.0.1:50052",
        help="resource server listen address",
        default_help="127.0.0.1:50052",
    )
    add_env_argument(
        up,
        "--ca-cert",
        type=Path,
        help="with TLS: the CA that signed --tls-cert, which the resource server trusts for the "
        "auth service",
        default_help="--client-ca, else --tls-cert itself",
    )
    up.set_defaults(run=run_demo)


def _ensure_demo_user(users: UserStore, password_file: str) -> str | None:
    """Create the demo user once; returns the new password, or None if it existed."""
    if users.get(DEMO_USER) is not None:
        return None
    password = secrets.token_urlsafe(12)
    users.add(DEMO_USER, password, DEMO_SCOPES)
    write_secret_file(Path(password_file), password.encode() + b"\n")
    return password


def run_demo(ns: argparse.Namespace) -> int:
    issuer = ns.issuer or DEMO_ISSUER
    audiences = audiences_of(ns) or [DEMO_AUDIENCE]
    audience = audiences[0]
    config = server_config(ns, issuer=issuer, audience=audiences)
    password_file = str(config.data_dir / DEMO_PASSWORD_FILE)
    link_ca = (ns.ca_cert or config.client_ca or config.tls_cert) if config.tls_cert else None

    async def serve(stop: asyncio.Event) -> None:
        auth = await start_auth_server(config)
        verifier = None
        resource = None
        try:
            created = await asyncio.to_thread(
                _ensure_demo_user, auth.components.users, password_file
            )
            key_file, _ = await asyncio.to_thread(
                ensure_demo_client,
                auth.components.client_side.clients,
                config.data_dir,
                scopes=DEMO_SCOPES[:1],
                audiences=[audience],
            )
            rconfig = ResourceServerConfig(
                grpc_address=ns.resource_grpc,
                issuer=issuer,
                audience=audience,
                auth_target=auth.grpc_target,
                # With TLS on, the resource server serves the same certificate, trusts
                # --ca-cert for the auth service and presents the certificate as its
                # client certificate when --client-ca asks for one.
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
                client_ca=config.client_ca,
                auth_tls=config.tls_cert is not None,
                auth_ca_cert=link_ca,
                auth_client_cert=config.tls_cert if config.client_ca else None,
                auth_client_key=config.tls_key if config.client_ca else None,
            )
            verifier = await asyncio.to_thread(open_verifier, rconfig)
            resource, rport = await start_aio_server(rconfig, verifier)
            pw = shlex.quote(password_file)
            tls = _client_tls_flags(link_ca, config.client_ca is not None)
            lines = [
                "",
                "ssot-auth is up:",
                f"  auth service      grpc {auth.grpc_target}",
                f"  JWKS              {auth.http_base_url}/.well-known/jwks.json",
                f"  resource service  grpc {rconfig.grpc_address.rsplit(':', 1)[0]}:{rport}",
                f"  demo user         {DEMO_USER} (scopes: {' '.join(DEMO_SCOPES)})",
                f"  demo password     {'created in' if created else 'in'} {password_file}",
                "",
                "Try it in another terminal:",
                f"  ssot-auth login {DEMO_USER} --target {auth.grpc_target}{tls} --password-stdin "
                f"< {pw} > token.json",
                f"  ssot-resource get --target 127.0.0.1:{rport}{tls} --token-file token.json",
                f"  curl -s{_curl_tls_flags(link_ca)} {auth.http_base_url}/.well-known/jwks.json",
                "",
                f"Service to service (client {DEMO_CLIENT}, its private key in {key_file}):",
                f"  ssot-auth token --client {DEMO_CLIENT} --key-file {shlex.quote(str(key_file))} "
                f"--issuer {shlex.quote(issuer)} --target {auth.grpc_target}{tls} "
                "> service-token.json",
                f"  ssot-resource get --target 127.0.0.1:{rport}{tls} "
                "--token-file service-token.json",
                "",
                "Ctrl-C stops both servers.",
            ]
            print("\n".join(lines), flush=True)
            await stop.wait()
            _LOGGER.info("shutting down")
        finally:
            if resource is not None:
                await resource.stop(2)
            if verifier is not None:
                await verifier.aclose()
            await auth.stop()

    return run_until_signalled(serve)


def _client_tls_flags(ca_cert: Path | None, mutual: bool) -> str:
    if ca_cert is None:
        return ""
    flags = f" --ca-cert {shlex.quote(str(ca_cert))}"
    if mutual:
        flags += " --client-cert CERT --client-key KEY"
    return flags


def _curl_tls_flags(ca_cert: Path | None) -> str:
    return "" if ca_cert is None else f" --cacert {shlex.quote(str(ca_cert))}"
