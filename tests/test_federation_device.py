"""Signing in at a real OpenID Provider (panva's oidc-provider on loopback) with the device flow.

The test plays the person's browser over HTTP (enter the code, confirm, sign in,
consent); ``ssot-auth login --idp`` runs as a real process; its token opens a
protected RPC at a resource server, and logging out is refused there within a
second (push revocation). Skips where Node.js or the npm package is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from oidc_provider_fixture import (
    CLIENT_KEY_PEM,
    CLIENT_SECRET,
    KEY_CLIENT,
    PUBLIC_CLIENT,
    SECRET_CLIENT,
    Browser,
    running_provider,
)

from auth_server.__main__ import main
from auth_server.idps import IdpStore
from auth_server.upstream_auth import DeviceFlow, DeviceFlowError, ProviderCredential
from helpers import (
    PASSPHRASE,
    AuthHarness,
    EventLoopThread,
    make_config,
    protected_call,
    run_cli,
    running_resource,
    start_harness,
    wait_until,
)
from interceptors import TokenManager

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with running_provider() as url:
        yield url


@pytest.fixture
def auth(loop_thread: EventLoopThread, tmp_path: Path, database_url: str) -> Iterator[AuthHarness]:
    harness = start_harness(loop_thread, make_config(tmp_path, database_url))
    yield harness
    harness.channel.close()
    harness.stop()


def _database_args(auth: AuthHarness) -> list[str]:
    return [
        "--database-url",
        str(auth.server.components.database.engine.url.render_as_string(hide_password=False)),
    ]


def _approve(process: Any, login: str) -> str:
    """Read the CLI's instructions, approve like a person would; the CLI's standard output."""
    assert process.stderr is not None
    shown: list[str] = []
    while not shown or "enter the code" not in shown[-1]:
        line = process.stderr.readline()
        assert line, f"login --idp said no code: {shown}"
        shown.append(line)
    code = shown[-1].rsplit(" ", 1)[1].strip()
    url = shown[-2].split("open ", 1)[1].strip().split("?")[0]
    page = Browser().approve_device(url, code, login)
    assert "Success" in page, page[:300]
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return str(out)


def _login_process(auth: AuthHarness, *extra: str, env: dict[str, str] | None = None) -> Any:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    clean.update(env or {})
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "auth_server",
            "login",
            *extra,
            "--target",
            auth.target,
            *_database_args(auth),
        ],
        cwd=ROOT,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_login_idp_runs_the_device_flow_and_logout_reaches_a_push_verifier(
    issuer: str, auth: AuthHarness, loop_thread: EventLoopThread
) -> None:
    assert (
        run_cli(
            main,
            [
                "idp",
                "add",
                "corp",
                "--issuer",
                issuer,
                "--client-id",
                PUBLIC_CLIENT,
                "--default-scope",
                "resource.read",
                *_database_args(auth),
            ],
        )
        == 0
    )
    out = _approve(_login_process(auth, "--idp", "corp"), "carol")
    response = json.loads(out)
    claims = jwt.decode(response["access_token"], options={"verify_signature": False})
    assert claims["username"] == "carol" and claims["scope"] == "resource.read"
    assert response["refresh_token"]

    with running_resource(loop_thread, auth, aio=True, push=True) as resource:
        assert protected_call(resource.channel, response["access_token"]) == grpc.StatusCode.OK
        auth.logout(response["refresh_token"])
        started = time.monotonic()
        assert wait_until(
            lambda: (
                protected_call(resource.channel, response["access_token"])
                == grpc.StatusCode.UNAUTHENTICATED
            ),
            timeout=1.0,
        )
        assert time.monotonic() - started < 1.0


def test_login_idp_with_a_client_secret_sealed_under_the_passphrase(
    issuer: str, auth: AuthHarness
) -> None:
    passphrase = {"SSOT_KEY_PASSPHRASE": PASSPHRASE.decode()}
    os.environ.update(passphrase)
    try:
        assert (
            run_cli(
                main,
                [
                    "idp",
                    "add",
                    "corp",
                    "--issuer",
                    issuer,
                    "--client-id",
                    SECRET_CLIENT,
                    "--client-secret-stdin",
                    *_database_args(auth),
                ],
                stdin=CLIENT_SECRET + "\n",
            )
            == 0
        )
    finally:
        os.environ.pop("SSOT_KEY_PASSPHRASE")
    # The secret is stored sealed: not in the row in the clear.
    database = auth.server.components.database
    with database.transaction() as conn:
        stored = conn.exec_driver_sql("SELECT sealed_credential FROM identity_providers").scalar()
    assert CLIENT_SECRET.encode() not in bytes(stored)
    # Without the passphrase the CLI cannot use it, and says so.
    refused = _login_process(auth, "--idp", "corp")
    _, err = refused.communicate(timeout=30)
    assert refused.returncode != 0 and "passphrase" in err
    assert CLIENT_SECRET not in err

    out = _approve(_login_process(auth, "--idp", "corp", env=passphrase), "dave")
    assert (
        jwt.decode(json.loads(out)["access_token"], options={"verify_signature": False})["username"]
        == "dave"
    )


def _real_id_token(issuer: str, login: str) -> str:
    flow = DeviceFlow(issuer, ProviderCredential(client_id=PUBLIC_CLIENT), sleep=lambda s: None)
    authorization = flow.start()
    Browser().approve_device(authorization.verification_uri, authorization.user_code, login)
    return str(flow.poll(authorization)["id_token"])


def test_the_device_flow_reports_a_refusal_without_secrets(issuer: str) -> None:
    flow = DeviceFlow(issuer, ProviderCredential(client_id=SECRET_CLIENT, secret="wrong-secret"))
    with pytest.raises(DeviceFlowError) as info:
        flow.start()
    assert "invalid_client" in str(info.value) and "wrong-secret" not in str(info.value)


def test_token_manager_starts_from_an_upstream_id_token(
    issuer: str, auth: AuthHarness, loop_thread: EventLoopThread
) -> None:
    IdpStore(auth.server.components.database).add(
        "corp", issuer=issuer, client_id=PUBLIC_CLIENT, default_scopes=["resource.read"]
    )
    tokens = TokenManager.from_id_token(auth.channel, _real_id_token(issuer, "erin"))
    first = tokens.token()
    assert jwt.decode(first, options={"verify_signature": False})["username"] == "erin"
    with running_resource(loop_thread, auth, aio=False) as resource:
        assert protected_call(resource.channel, first) == grpc.StatusCode.OK
    # Renewal goes through the session's refresh token, not the (spent) ID token.
    tokens.invalidate(first)
    second = tokens.token()
    assert second != first
    assert (
        jwt.decode(second, options={"verify_signature": False})["sid"]
        == jwt.decode(first, options={"verify_signature": False})["sid"]
    )


def test_the_device_flow_authenticates_with_private_key_jwt(issuer: str, auth: AuthHarness) -> None:
    IdpStore(auth.server.components.database).add("corp", issuer=issuer, client_id=KEY_CLIENT)
    credential = ProviderCredential(client_id=KEY_CLIENT, private_key_pem=CLIENT_KEY_PEM)
    flow = DeviceFlow(issuer, credential, sleep=lambda s: None)
    authorization = flow.start()
    Browser().approve_device(authorization.verification_uri, authorization.user_code, "frank")
    id_token = str(flow.poll(authorization)["id_token"])
    assert jwt.decode(id_token, options={"verify_signature": False})["aud"] == KEY_CLIENT
    tokens = TokenManager.from_id_token(auth.channel, id_token)
    assert jwt.decode(tokens.token(), options={"verify_signature": False})["username"] == "frank"
    # The same key pair, but another client's name: the provider refuses it.
    impostor = ProviderCredential(client_id=PUBLIC_CLIENT, private_key_pem=CLIENT_KEY_PEM)
    with pytest.raises(DeviceFlowError, match="invalid_client"):
        DeviceFlow(issuer, impostor).start()
