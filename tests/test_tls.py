"""TLS and mutual TLS on both servers, tokens as call credentials, certificate-bound tokens."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from auth_server.__main__ import main as auth_main
from auth_server.app import RunningAuthServer, start_auth_server
from helpers import (
    AUDIENCE,
    FACES,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    bearer,
    make_config,
    run_cli,
    serving_resource,
    start_harness,
)
from interceptors import (
    HttpJwksSource,
    KeySourceError,
    TokenManager,
    cert_thumbprint,
)
from pki import Identity, Pki, make_pki
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig, build_server, open_verifier
from resource_server.__main__ import main as resource_main

PASSWORD = "correct horse battery"
REQUEST = resource_pb2.GetProtectedResourceRequest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def credentials(pki: Pki, client: Identity | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )


@contextlib.contextmanager
def tls_auth(
    loop_thread: EventLoopThread, tmp_path: Path, **changes: Any
) -> Iterator[RunningAuthServer]:
    server = loop_thread.run(start_auth_server(make_config(tmp_path, **changes)))
    server.components.users.add("alice", PASSWORD, ("resource.read",))
    try:
        yield server
    finally:
        loop_thread.run(server.stop(0.5))


def login(target: str, creds: grpc.ChannelCredentials) -> auth_pb2.TokenResponse:
    with grpc.secure_channel(target, creds) as channel:
        return auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=10
        )


def test_the_auth_service_speaks_tls_on_grpc_and_https(
    loop_thread: EventLoopThread, tmp_path: Path, pki: Pki
) -> None:
    with tls_auth(
        loop_thread, tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key
    ) as server:
        assert login(server.grpc_target, credentials(pki)).access_token
        with (
            grpc.insecure_channel(server.grpc_target) as plain,
            pytest.raises(grpc.RpcError) as info,
        ):
            auth_pb2_grpc.AuthServiceStub(plain).GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]

        assert server.http_base_url.startswith("https://")
        jwks_url = f"{server.http_base_url}/.well-known/jwks.json"
        document = HttpJwksSource(jwks_url, ca_cert=pki.ca).fetch(5).document
        assert [key["kid"] for key in document["keys"]] == [server.components.keys.current().kid]
        with pytest.raises(KeySourceError):  # the system roots do not know our CA
            HttpJwksSource(jwks_url).fetch(5)
        with pytest.raises(KeySourceError):  # plain HTTP to the TLS port
            HttpJwksSource(jwks_url.replace("https", "http")).fetch(5)


@pytest.mark.parametrize(
    ("client", "accepted"),
    [
        pytest.param(None, False, id="no-client-certificate"),
        pytest.param("rogue", False, id="certificate-from-another-ca"),
        pytest.param("alice", True, id="certificate-from-the-client-ca"),
    ],
)
def test_mutual_tls_on_the_auth_service_requires_a_certificate_from_the_client_ca(
    loop_thread: EventLoopThread, tmp_path: Path, pki: Pki, client: str | None, accepted: bool
) -> None:
    identity = {None: None, "rogue": pki.rogue, "alice": pki.clients["alice"]}[client]
    with tls_auth(
        loop_thread, tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca
    ) as server:
        if accepted:
            assert login(server.grpc_target, credentials(pki, identity)).access_token
        else:
            with pytest.raises(grpc.RpcError) as info:
                login(server.grpc_target, credentials(pki, identity))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        # The key documents are public: HTTPS without a client certificate.
        jwks_url = f"{server.http_base_url}/.well-known/jwks.json"
        assert HttpJwksSource(jwks_url, ca_cert=pki.ca).fetch(5).document["keys"]


# -- the resource server over TLS ----------------------------------------------------------


@pytest.fixture(scope="module")
def auth_module(
    loop_thread: EventLoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthHarness]:
    harness = start_harness(loop_thread, make_config(tmp_path_factory.mktemp("auth")))
    for name in ("alice", "bob"):
        harness.add_user(name, PASSWORD, ("resource.read",))
    yield harness
    harness.channel.close()
    harness.stop()


@contextlib.contextmanager
def tls_resource(
    loop_thread: EventLoopThread, jwks_url: str, pki: Pki, *, aio: bool, **changes: Any
) -> Iterator[str]:
    """A TLS resource server verifying tokens with the keys at ``jwks_url``; yields its target."""
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=jwks_url,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        **changes,
    )
    with (
        open_verifier(config) as verifier,
        serving_resource(loop_thread, config, verifier, aio=aio) as port,
    ):
        yield f"127.0.0.1:{port}"


def call(target: str, creds: grpc.ChannelCredentials, metadata: Any = None) -> Any:
    with grpc.secure_channel(target, creds) as channel:
        return resource_pb2_grpc.ResourceServiceStub(channel).GetProtectedResource(
            REQUEST, metadata=metadata, timeout=10
        )


def refused(target: str, creds: grpc.ChannelCredentials, metadata: Any = None) -> grpc.Call:
    with pytest.raises(grpc.RpcError) as info:
        call(target, creds, metadata)
    error = info.value
    assert isinstance(error, grpc.Call)
    return error


@pytest.mark.parametrize("aio", FACES)
def test_the_token_helper_sends_tokens_as_call_credentials_over_tls(
    loop_thread: EventLoopThread, auth_module: AuthHarness, pki: Pki, aio: bool
) -> None:
    tokens = TokenManager(auth_module.channel, "alice", PASSWORD)
    with tls_resource(loop_thread, auth_module.jwks_url, pki, aio=aio) as target:
        creds = grpc.composite_channel_credentials(credentials(pki), tokens.call_credentials())
        assert call(target, creds).user.username == "alice"
        assert refused(target, credentials(pki)).code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("aio", FACES)
def test_subject_binding_needs_the_certificate_of_the_tokens_user(
    loop_thread: EventLoopThread,
    auth_module: AuthHarness,
    pki: Pki,
    aio: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ssot.audit")
    alice = auth_module.login("alice", PASSWORD).access_token
    bob = auth_module.login("bob", PASSWORD).access_token
    with tls_resource(
        loop_thread, auth_module.jwks_url, pki, aio=aio, client_ca=pki.ca, cert_binding="subject"
    ) as target:
        as_alice = credentials(pki, pki.clients["alice"])
        as_bob = credentials(pki, pki.clients["bob"])
        assert call(target, as_alice, bearer(alice)).user.username == "alice"
        error = refused(target, as_bob, bearer(alice))  # alice's token from bob's client
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "token not bound to the client certificate"
        assert call(target, as_bob, bearer(bob)).user.username == "bob"
        assert (
            refused(target, credentials(pki), bearer(alice)).code() == grpc.StatusCode.UNAVAILABLE
        )
    assert '"reason":"certificate_mismatch"' in caplog.text


@pytest.mark.parametrize("aio", FACES)
def test_cnf_binding_needs_the_certificate_whose_thumbprint_the_token_carries(
    loop_thread: EventLoopThread, auth_module: AuthHarness, pki: Pki, aio: bool
) -> None:
    bound = auth_module.forge({"cnf": {"x5t#S256": cert_thumbprint(pki.clients["alice"].cert_pem)}})
    unbound = auth_module.forge({})
    with tls_resource(
        loop_thread, auth_module.jwks_url, pki, aio=aio, client_ca=pki.ca, cert_binding="cnf"
    ) as target:
        as_alice = credentials(pki, pki.clients["alice"])
        as_bob = credentials(pki, pki.clients["bob"])
        assert call(target, as_alice, bearer(bound)).user.username == "mallory"
        assert refused(target, as_bob, bearer(bound)).code() == grpc.StatusCode.UNAUTHENTICATED
        assert refused(target, as_alice, bearer(unbound)).code() == grpc.StatusCode.UNAUTHENTICATED


# -- warnings and settings ----------------------------------------------------------------


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "SECURITY WARNING" in r.getMessage()]


@pytest.mark.parametrize("tls", [pytest.param(False, id="plaintext"), pytest.param(True, id="tls")])
def test_listening_beyond_loopback_without_tls_logs_a_loud_warning(
    loop_thread: EventLoopThread,
    tmp_path: Path,
    pki: Pki,
    tls: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    material: dict[str, Any] = (
        {"tls_cert": pki.server.cert, "tls_key": pki.server.key} if tls else {}
    )
    with tls_auth(
        loop_thread, tmp_path, grpc_address="0.0.0.0:0", http_address="0.0.0.0:0", **material
    ):
        pass
    config = ResourceServerConfig(
        grpc_address="0.0.0.0:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url="http://127.0.0.1:9/jwks.json",
        **material,
    )
    with open_verifier(config) as verifier:
        server, _ = build_server(config, verifier)
        server.stop(0).wait()
    warnings = _warnings(caplog)
    if tls:
        assert warnings == []
    else:
        # auth gRPC, auth HTTP, resource gRPC; and the auth service's open push streams
        # (--watch-auth none: tests/test_watch_auth.py).
        assert len(warnings) == 4
        assert sum("WITHOUT TLS" in w and "--tls-cert" in w for w in warnings) == 3
        assert sum("--watch-auth token" in w for w in warnings) == 1


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"tls_cert": Path("c.pem")}, id="cert-without-key"),
        pytest.param({"client_ca": Path("ca.pem")}, id="client-ca-without-tls"),
        pytest.param(
            {"tls_cert": Path("c"), "tls_key": Path("k"), "cert_binding": "subject"},
            id="binding-without-client-ca",
        ),
        pytest.param(
            {
                "tls_cert": Path("c"),
                "tls_key": Path("k"),
                "client_ca": Path("ca"),
                "cert_binding": "sub",
            },
            id="unknown-binding",
        ),
        pytest.param({"auth_client_cert": Path("c")}, id="auth-client-cert-without-key"),
    ],
)
def test_resource_tls_settings_are_checked(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ResourceServerConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://a/j", **changes)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"tls_key": Path("k.pem")}, id="key-without-cert"),
        pytest.param({"client_ca": Path("ca.pem")}, id="client-ca-without-tls"),
    ],
)
def test_auth_tls_settings_are_checked(tmp_path: Path, changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_config(tmp_path, **changes)


def test_an_unreadable_certificate_fails_start_up_with_the_flag_named(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    from auth_server.app import StartupError

    config = make_config(tmp_path, tls_cert=tmp_path / "missing.pem", tls_key=tmp_path / "k.pem")
    with pytest.raises(StartupError, match="--tls-cert"):
        loop_thread.run(start_auth_server(config))


# -- the command line over mutual TLS -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(main: Callable[[list[str]], int], *argv: str, stdin: str = "") -> int:
    return run_cli(main, argv, stdin)


@pytest.mark.slow
def test_up_login_and_get_work_over_mutual_tls_from_the_command_line(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("SSOT_")]:
        monkeypatch.delenv(name)
    ports = {name: _free_port() for name in ("grpc", "http", "resource")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    tls = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "auth_server", "up", "--data-dir", str(tmp_path / "data"),
            "--grpc", f"127.0.0.1:{ports['grpc']}", "--http", f"127.0.0.1:{ports['http']}",
            "--resource-grpc", f"127.0.0.1:{ports['resource']}",
            *tls, "--client-ca", str(pki.ca), "--ca-cert", str(pki.ca),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = ""
        deadline = time.monotonic() + 60
        while "Ctrl-C" not in banner and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner += line
        assert "ssot-auth is up" in banner, banner
        assert f"https://127.0.0.1:{ports['http']}" in banner
        assert f"--ca-cert {pki.ca}" in banner

        alice = pki.clients["alice"]
        client = ["--ca-cert", str(pki.ca), "--client-cert", str(alice.cert)]
        client += ["--client-key", str(alice.key)]
        password = (tmp_path / "data" / "demo-password").read_text()
        capsys.readouterr()
        login = ["login", "demo", "--password-stdin", "--target", f"127.0.0.1:{ports['grpc']}"]
        assert _cli(auth_main, *login, *client, stdin=password) == 0
        token_file = tmp_path / "token.json"
        token_file.write_text(capsys.readouterr().out)

        get = ["get", "--target", f"127.0.0.1:{ports['resource']}", "--token-file", str(token_file)]
        assert _cli(resource_main, *get, *client) == 0
        assert json.loads(capsys.readouterr().out)["user"]["username"] == "demo"

        assert _cli(resource_main, *get, "--ca-cert", str(pki.ca)) == 1  # no client certificate
        assert capsys.readouterr().err.startswith("ssot-resource: error: UNAVAILABLE")
        assert _cli(resource_main, *get) == 1  # plaintext
        assert capsys.readouterr().err.startswith("ssot-resource: error: UNAVAILABLE")
        assert _cli(resource_main, *get, "--client-cert", str(alice.cert)) == 1
        assert capsys.readouterr().err == (
            "ssot-resource: error: give both --client-cert and --client-key, or neither\n"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.mark.parametrize("aio", FACES)
def test_a_login_over_mutual_tls_yields_a_token_bound_to_that_certificate(
    loop_thread: EventLoopThread, tmp_path: Path, pki: Pki, aio: bool
) -> None:
    alice, bob = pki.clients["alice"], pki.clients["bob"]
    with tls_auth(
        loop_thread, tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca
    ) as server:
        token = login(server.grpc_target, credentials(pki, alice)).access_token
        assert _claims(token)["cnf"] == {"x5t#S256": cert_thumbprint(alice.cert_pem)}
        with tls_resource(
            loop_thread,
            f"{server.http_base_url}/.well-known/jwks.json",
            pki,
            aio=aio,
            client_ca=pki.ca,
            cert_binding="cnf",
            auth_ca_cert=pki.ca,
        ) as target:
            assert call(target, credentials(pki, alice), bearer(token)).user.username == "alice"
            error = refused(target, credentials(pki, bob), bearer(token))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_login_without_a_client_certificate_yields_an_unbound_token(
    loop_thread: EventLoopThread, tmp_path: Path, pki: Pki
) -> None:
    with tls_auth(
        loop_thread, tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key
    ) as server:
        assert "cnf" not in _claims(login(server.grpc_target, credentials(pki)).access_token)


def test_a_plain_http_jwks_url_beyond_loopback_needs_the_explicit_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("SSOT_")]:
        monkeypatch.delenv(name)
    serve = ["serve", "--issuer", ISSUER, "--audience", AUDIENCE, "--grpc", "127.0.0.1:0"]
    assert resource_main([*serve, "--jwks-url", "http://auth.example.com/jwks.json"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ssot-resource: error: key source URL must be https")
    assert "allow_insecure_http" in error


def _refresh(target: str, creds: grpc.ChannelCredentials, token: str) -> auth_pb2.TokenResponse:
    with grpc.secure_channel(target, creds) as channel:
        return auth_pb2_grpc.AuthServiceStub(channel).Refresh(
            auth_pb2.RefreshRequest(refresh_token=token), timeout=10
        )


def test_a_session_bound_at_login_refreshes_only_with_its_certificate(
    loop_thread: EventLoopThread, tmp_path: Path, pki: Pki
) -> None:
    alice, bob = pki.clients["alice"], pki.clients["bob"]
    with tls_auth(
        loop_thread, tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca
    ) as server:
        first = login(server.grpc_target, credentials(pki, alice))
        # A stolen refresh token is no use with another certificate (RFC 8705 §4) ...
        with pytest.raises(grpc.RpcError) as info:
            _refresh(server.grpc_target, credentials(pki, bob), first.refresh_token)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        # ... and refusing it did not end the session: with its certificate it renews, and
        # the new access token stays bound to that certificate.
        renewed = _refresh(server.grpc_target, credentials(pki, alice), first.refresh_token)
        bound = {"x5t#S256": cert_thumbprint(alice.cert_pem)}
        assert _claims(renewed.access_token)["cnf"] == bound
        assert _claims(renewed.access_token)["sid"] == _claims(first.access_token)["sid"]
