"""``--key-store pkcs11`` on SoftHSM2: keys made and used inside a token, never outside it.

Every test initialises a throwaway SoftHSM2 token (tests/softhsm.py) and skips,
with the reason, where python-pkcs11 or SoftHSM2 is missing. The token is made
unavailable by moving its directory away (SoftHSM2 then fails every call on it,
as a removed HSM or a lost network HSM does) and restored by moving it back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import sqlalchemy as sa
from softhsm import Token, make_token

from auth_server.cli import main
from auth_server.hsm import Pkcs11Custody, Pkcs11Settings
from auth_server.keys import SigningKeyStore
from auth_server.lifecycle import KeyLifecycle
from auth_server.storage import Database, signing_keys
from helpers import (
    AUDIENCE,
    PASSPHRASE,
    AuthHarness,
    Clock,
    EventLoopThread,
    make_config,
    start_harness,
    wait_until,
)
from protos import auth_pb2

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pkcs11 password"


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Token:
    return make_token(tmp_path, monkeypatch)


def _settings(token: Token) -> Pkcs11Settings:
    return Pkcs11Settings(module=Path(token.module), token_label=token.label, pin=token.pin)


@pytest.fixture
def hsm_auth(loop_thread: EventLoopThread, tmp_path: Path, token: Token) -> Iterator[AuthHarness]:
    harness = start_harness(
        loop_thread, make_config(tmp_path, key_store="pkcs11", pkcs11=_settings(token))
    )
    yield harness
    harness.channel.close()
    harness.stop()


def _rows(database: Database) -> dict[str, bytes]:
    with database.transaction() as conn:
        found = conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.private_key)).all()
    return {kid: bytes(stored) for kid, stored in found}


def _object_id(stored: bytes) -> bytes:
    attributes = dict(p.partition("=")[::2] for p in stored.decode().split(":", 1)[1].split(";"))
    return urllib.parse.unquote_to_bytes(attributes["id"])


def _objects_with_id(token: Token, object_id: bytes) -> list[Any]:
    return token.objects(ID=object_id)


def _verify(harness: AuthHarness, access_token: str) -> dict[str, Any]:
    """Check a token as a verifier would: against the published JWKS, by its kid."""
    kid = jwt.get_unverified_header(access_token)["kid"]
    published = harness.stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=10).keys
    jwk = next(k for k in published if k.kid == kid)
    members = {f: getattr(jwk, f) for f in ("kty", "kid", "alg", "n", "e", "crv", "x", "y")}
    key = jwt.PyJWK({k: v for k, v in members.items() if v})
    claims: dict[str, Any] = jwt.decode(
        access_token, key, algorithms=[jwk.alg], audience=AUDIENCE, leeway=10**10
    )
    return claims


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "EdDSA"])
def test_login_tokens_are_signed_in_the_token_and_verify_against_the_jwks(
    loop_thread: EventLoopThread, tmp_path: Path, token: Token, algorithm: str
) -> None:
    config = make_config(tmp_path, key_store="pkcs11", pkcs11=_settings(token), algorithm=algorithm)
    harness = start_harness(loop_thread, config)
    try:
        harness.add_user("alice", PASSWORD)
        response = harness.login("alice", PASSWORD)
        assert jwt.get_unverified_header(response.access_token)["alg"] == algorithm
        assert _verify(harness, response.access_token)["username"] == "alice"
        refreshed = harness.refresh(response.refresh_token)
        assert _verify(harness, refreshed.access_token)["username"] == "alice"
        # The database holds a reference to the token object, nothing secret.
        (stored,) = _rows(harness.server.components.database).values()
        assert stored.startswith(b"pkcs11:token=")
        assert b"PRIVATE KEY" not in stored
        assert len(_objects_with_id(token, _object_id(stored))) == 2  # private + public
    finally:
        harness.channel.close()
        harness.stop()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_the_private_key_object_cannot_be_read_out_of_the_token(
    tmp_path: Path, token: Token, algorithm: str
) -> None:
    import pkcs11

    database = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    database.create_schema()
    store = SigningKeyStore(
        database, PASSPHRASE, algorithm=algorithm, custody=Pkcs11Custody(_settings(token))
    )
    kid = store.ensure_signing_key().kid
    (private,) = token.objects(
        ID=_object_id(_rows(database)[kid]), CLASS=pkcs11.ObjectClass.PRIVATE_KEY
    )
    assert token.read(private, "SENSITIVE") is True
    assert token.read(private, "EXTRACTABLE") is False
    assert token.read(private, "NEVER_EXTRACTABLE") is True
    secret = "VALUE" if algorithm == "ES256" else "PRIVATE_EXPONENT"
    with pytest.raises(pkcs11.AttributeSensitive):
        token.read(private, secret)
    with pytest.raises((pkcs11.AttributeSensitive, pkcs11.AttributeTypeInvalid)):
        token.read(private, "VALUE")
    database.dispose()


def _serve_argv(tmp_path: Path, token: Token, **changes: str) -> list[str]:
    flags = dict(zip(token.flags()[::2], token.flags()[1::2], strict=True))
    flags.update({f"--{k.replace('_', '-')}": v for k, v in changes.items()})
    argv = ["serve", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"]
    argv += ["--issuer", "http://127.0.0.1:1", "--audience", AUDIENCE]
    argv += ["--data-dir", str(tmp_path / "data")]
    return argv + [part for pair in flags.items() for part in pair]


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        pytest.param("pin", "--pkcs11-pin-file", id="wrong-pin"),
        pytest.param("label", "--pkcs11-token-label", id="unknown-token"),
        pytest.param("module", "--pkcs11-module", id="not-a-module"),
        pytest.param("missing", "--pkcs11-pin-file", id="no-pin-file-flag"),
    ],
)
def test_an_unusable_token_at_start_is_a_one_line_error_naming_the_flag(
    tmp_path: Path,
    token: Token,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: str,
    flag: str,
) -> None:
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", PASSPHRASE.decode())
    wrong_pin = tmp_path / "wrong-pin"
    wrong_pin.write_text("not-the-pin\n")
    not_a_module = tmp_path / "libnothing.so"
    not_a_module.write_bytes(b"\x7fELF nothing")
    changes = {
        "pin": {"pkcs11_pin_file": str(wrong_pin)},
        "label": {"pkcs11_token_label": "no-such-token"},
        "module": {"pkcs11_module": str(not_a_module)},
        "missing": {},
    }[change]
    argv = _serve_argv(tmp_path, token, **changes)
    if change == "missing":
        argv = argv[: argv.index("--pkcs11-pin-file")] + argv[argv.index("--pkcs11-pin-file") + 2 :]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert flag in err
    assert token.pin not in err


def _cli(tmp_path: Path, token: Token, *args: str, kid: str | None = None) -> str:
    """Run ``ssot-auth`` in a process of its own (its own PKCS#11 session and login)."""
    env = dict(os.environ, SSOT_KEY_PASSPHRASE=PASSPHRASE.decode(), SOFTHSM2_CONF=str(token.conf))
    argv = [sys.executable, "-m", "auth_server", *args]
    argv += ["--data-dir", str(tmp_path), *token.flags()]
    if kid is not None:
        argv += ["--", kid]  # a kid may begin with "-" (base64url)
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _list(tmp_path: Path, token: Token) -> dict[str, dict[str, Any]]:
    out = _cli(tmp_path, token, "keys", "list", "--json")
    return {k["kid"]: k for k in map(json.loads, out.splitlines())}


def test_keys_rotate_and_revoke_make_and_destroy_token_objects(
    tmp_path: Path, token: Token
) -> None:
    _cli(tmp_path, token, "keys", "rotate")  # the first key signs at once
    (first,) = _list(tmp_path, token)
    _cli(tmp_path, token, "keys", "rotate", "--activate-after", "600")
    keys = _list(tmp_path, token)
    (upcoming,) = set(keys) - {first}
    assert keys[upcoming]["state"] == "next"
    database = Database(f"sqlite:///{tmp_path / 'ssot-auth.db'}")
    rows = _rows(database)
    assert _objects_with_id(token, _object_id(rows[first]))

    _cli(tmp_path, token, "keys", "revoke", kid=first)

    keys = _list(tmp_path, token)
    assert keys[first]["state"] == "revoked"
    assert keys[upcoming]["state"] == "current"  # the pre-published key took over
    assert _objects_with_id(token, _object_id(rows[first])) == []
    assert _rows(database)[first] == b""
    assert len(_objects_with_id(token, _object_id(rows[upcoming]))) == 2
    database.dispose()


def test_a_retired_key_is_destroyed_in_the_token(tmp_path: Path, token: Token) -> None:
    clock = Clock(time.time())
    database = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    database.create_schema()
    lifecycle = KeyLifecycle(rotation_interval=0, activate_after=60, retire_after=60)
    store = SigningKeyStore(
        database,
        PASSPHRASE,
        now=clock,
        lifecycle=lifecycle,
        custody=Pkcs11Custody(_settings(token)),
    )
    old = store.ensure_signing_key().kid
    old_id = _object_id(_rows(database)[old])
    new = store.rotate(activate_after=60).kid
    clock.advance(61)
    assert store.current().kid == new
    assert store.maintain().destroyed == ()
    assert _objects_with_id(token, old_id)
    clock.advance(61)
    assert store.maintain().destroyed == (old,)
    assert _objects_with_id(token, old_id) == []
    assert [k["kid"] for k in store.published_jwks()] == [new]
    database.dispose()


def test_a_token_outage_is_unavailable_and_signing_resumes_when_it_returns(
    hsm_auth: AuthHarness, token: Token
) -> None:
    hsm_auth.add_user("alice", PASSWORD)
    session = hsm_auth.login("alice", PASSWORD)
    _, secret = hsm_auth.server.components.client_side.clients.add(
        "cron", audiences=[AUDIENCE], secret=True
    )
    grant = auth_pb2.TokenRequest(
        grant_type="client_credentials", client_id="cron", client_secret=secret or ""
    )
    assert _verify(hsm_auth, hsm_auth.stub.Token(grant, timeout=10).access_token)
    away = token.directory.with_name("softhsm-tokens-away")
    token.directory.rename(away)
    try:
        # A service's grant is told to retry too (RFC 6749 §5.2), not a server error.
        with pytest.raises(grpc.RpcError) as failed:
            hsm_auth.stub.Token(grant, timeout=10)
        call: Any = failed.value
        assert call.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(call.trailing_metadata())["oauth-error"] == "temporarily_unavailable"
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as failed:
                hsm_auth.login("alice", PASSWORD)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "retry" in (failed.value.details() or "")
        with pytest.raises(grpc.RpcError) as failed:
            hsm_auth.refresh(session.refresh_token)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        # The published keys do not depend on the token: verifiers are unaffected.
        assert hsm_auth.stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=10).keys
    finally:
        away.rename(token.directory)

    def logs_in() -> bool:
        try:
            hsm_auth.login("alice", PASSWORD)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
            return False
        return True

    assert wait_until(logs_in, timeout=10), "signing did not resume"
    assert _verify(hsm_auth, hsm_auth.login("alice", PASSWORD).access_token)
    # The refresh token tried during the outage was not spent: it still works.
    assert _verify(hsm_auth, hsm_auth.refresh(session.refresh_token).access_token)
    assert _verify(hsm_auth, hsm_auth.stub.Token(grant, timeout=10).access_token)


@pytest.mark.slow
def test_two_replicas_on_one_token_rotate_retire_and_revoke_under_live_traffic(
    loop_thread: EventLoopThread, tmp_path: Path, token: Token, database_url: str
) -> None:
    """Pre-publish, activate, retire and revoke while clients log in on both replicas.

    On SQLite (one file) and on PostgreSQL (replicas hear each other by LISTEN/NOTIFY).
    """
    clock = Clock(time.time())
    url = database_url
    replicas = [
        start_harness(
            loop_thread,
            make_config(
                tmp_path / f"replica-{i}",
                url,
                key_store="pkcs11",
                pkcs11=_settings(token),
                key_rotation_interval=0,
            ),
            now=clock,
        )
        for i in range(2)
    ]
    replicas[0].add_user("alice", PASSWORD)
    failures: list[str] = []
    kids: list[str] = []
    stop = threading.Event()
    revoked: set[str] = set()

    def client(n: int) -> None:
        while not stop.is_set():
            signer, verifier = replicas[n % 2], replicas[(n + 1) % 2]
            n += 1
            try:
                access_token = signer.login("alice", PASSWORD).access_token
            except grpc.RpcError as exc:
                failures.append(f"login: {exc.code()}")
                continue
            kid = jwt.get_unverified_header(access_token)["kid"]
            kids.append(kid)
            try:
                _verify(verifier, access_token)
            except (StopIteration, jwt.InvalidTokenError) as exc:
                if kid not in revoked:  # a revoked key's tokens are refused, as they must be
                    failures.append(f"verify {kid}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()

    def calls_pass(more: int = 10) -> None:
        target = len(kids) + more
        assert wait_until(lambda: len(kids) >= target or bool(failures), timeout=30)
        assert not failures, failures

    try:
        calls_pass()
        (first,) = set(kids)
        # Pre-publish: a key made in the token by another process, published at once.
        _cli(tmp_path / "replica-0", token, "keys", "rotate", "--database-url", url)
        database = Database(url)
        (second,) = set(_rows(database)) - {first}
        for replica in replicas:
            assert wait_until(
                lambda r=replica: second in {k["kid"] for k in r.server.publisher.snapshot.keys}
            )
        calls_pass()
        # Activate: both replicas sign with the new key.
        clock.now = time.time() + 601
        kids.clear()
        calls_pass(20)
        assert wait_until(lambda: kids[-1] == second)
        # Retire: the old key leaves the set and its token object is destroyed.
        first_id = _object_id(_rows(database)[first])
        clock.now = time.time() + 601 + 1000
        assert wait_until(lambda: _objects_with_id(token, first_id) == [], timeout=10)
        calls_pass()
        # Revoke the current key while a next key is pre-published: the next key
        # (known to every verifier already) signs at once on both replicas. (On the
        # replicas' clock, ahead of the real one now: `keys rotate` and `keys revoke`
        # are the same calls, tested on real time above.)
        third = replicas[0].server.components.keys.rotate(activate_after=600).kid
        for replica in replicas:
            assert wait_until(
                lambda r=replica: third in {k["kid"] for k in r.server.publisher.snapshot.keys}
            )
        calls_pass()
        revoked.add(second)
        second_id = _object_id(_rows(database)[second])
        replicas[1].server.components.keys.revoke(second)
        assert _objects_with_id(token, second_id) == []
        kids.clear()
        calls_pass(20)
        assert kids[-1] == third
        database.dispose()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for replica in replicas:
            replica.channel.close()
            replica.stop()
    assert not failures, failures
