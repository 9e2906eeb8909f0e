"""``ssot-auth clients ...`` and ``ssot-auth token`` through the CLI entry point."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth_server.__main__ import main as auth_main
from helpers import (
    AUDIENCE,
    ISSUER,
    PASSPHRASE,
    AuthHarness,
    EventLoopThread,
    make_config,
    run_cli,
    start_harness,
)


@pytest.fixture
def served(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, loop_thread: EventLoopThread
) -> Iterator[AuthHarness]:
    for name in list(os.environ):
        if name.startswith("SSOT_") and name != "SSOT_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SSOT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", PASSPHRASE.decode())
    harness = start_harness(loop_thread, make_config(tmp_path))
    monkeypatch.setenv("SSOT_TARGET", harness.target)
    monkeypatch.setenv("SSOT_ISSUER", ISSUER)
    yield harness
    harness.channel.close()
    harness.stop()


def run(argv: list[str], stdin: str = "") -> int:
    return run_cli(auth_main, argv, stdin)


def test_secret_client_lifecycle_and_token(
    served: AuthHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["clients", "add", "cron", "--audience", AUDIENCE, "--scope", "reports.read", "--secret"]
    assert run(add) == 0
    secret = capsys.readouterr().out.split("client_secret: ")[1].strip()

    assert run(["token", "--client", "cron", "--secret-stdin"], stdin=secret + "\n") == 0
    response = json.loads(capsys.readouterr().out)
    claims = jwt.decode(response["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "cron" and claims["scope"] == "reports.read"

    assert run(["clients", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["client_id"] == "cron" and "secret" not in json.dumps(listed).replace(
        "client_secret_basic", ""
    ).replace("old_secret_expires_at", "")
    assert run(["clients", "disable", "cron"]) == 0
    assert run(["token", "--client", "cron", "--secret-stdin"], stdin=secret + "\n") == 1
    assert "invalid_client" in capsys.readouterr().err
    assert run(["clients", "enable", "cron"]) == 0
    assert run(["clients", "rotate-secret", "cron", "--keep-old", "1h"]) == 0
    new = capsys.readouterr().out.split("client_secret: ")[1].strip()
    for value in (secret, new):
        assert run(["token", "--client", "cron", "--secret-stdin"], stdin=value + "\n") == 0
    assert run(["clients", "remove", "cron"]) == 0
    assert run(["clients", "show", "cron"]) == 1


def test_key_client_from_a_public_key_file_and_token_with_the_key_file(
    served: AuthHarness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    private = tmp_path / "edge.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = tmp_path / "edge.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert (
        run(["clients", "add", "edge", "--audience", AUDIENCE, "--public-key-file", str(public)])
        == 0
    )
    capsys.readouterr()

    assert run(["token", "--client", "edge", "--key-file", str(private)]) == 0
    claims = jwt.decode(
        json.loads(capsys.readouterr().out)["access_token"], options={"verify_signature": False}
    )
    assert claims["client_id"] == "edge"
    assert run(["clients", "show", "edge"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["token_endpoint_auth_method"] == "private_key_jwt" and shown["jwks_kids"]
    other = ed25519.Ed25519PrivateKey.generate()
    private.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert run(["token", "--client", "edge", "--key-file", str(private)]) == 1
    assert (
        run(["clients", "add", "bad", "--audience", AUDIENCE, "--jwks-uri", "http://example.com/j"])
        == 1
    )
