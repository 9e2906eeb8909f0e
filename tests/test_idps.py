"""Identity providers and identity links: the stores, ``ssot-auth idp ...`` and ``users link``.

On SQLite and PostgreSQL. The sign-in itself is ``test_federation`` (crafted
providers) and ``test_federation_device`` (a real one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth_server.__main__ import main
from auth_server._envelope import KeyEncryption
from auth_server.errors import (
    IdentityLinked,
    IdpExists,
    IdpNotFound,
    InvalidRequest,
    KeyStoreError,
    UserNotFound,
)
from auth_server.id_tokens import IdTokenRefused, IdTokenVerifier
from auth_server.identities import IdentityStore
from auth_server.idps import IdentityProvider, IdpStore
from auth_server.keys import SigningKeyStore
from auth_server.passwords import PasswordHasher
from auth_server.sessions import SessionStore
from auth_server.storage import Database
from auth_server.users import UserStore
from helpers import FAST_ARGON2, FAST_KDF, PASSPHRASE, run_cli

ISSUER = "https://login.example.com"
SECRET = "upstream-client-secret-1234567890"


def sealer(passphrase: bytes = PASSPHRASE) -> KeyEncryption:
    return KeyEncryption(passphrase, FAST_KDF)


def test_a_provider_is_stored_and_listed(database: Database) -> None:
    store = IdpStore(database)
    added = store.add(
        "corp",
        issuer=ISSUER,
        client_id="ssot",
        allowed_domains=["Example.com", "example.com"],
        default_scopes=["resource.read"],
    )
    assert added.allowed_domains == ("example.com",)
    assert store.require("corp") == added
    assert store.by_issuer(ISSUER) == added
    assert store.by_issuer(ISSUER + "/") is None  # the issuer is compared exactly
    assert [p.name for p in store.list()] == ["corp"]
    assert store.require("corp").as_json()["auth_method"] == "none"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        pytest.param({"name": "-corp"}, InvalidRequest, id="bad-name"),
        pytest.param({"issuer": "http://login.example.com"}, InvalidRequest, id="plain-http"),
        pytest.param({"issuer": ISSUER + "?x=1"}, InvalidRequest, id="issuer-query"),
        pytest.param({"client_id": ""}, InvalidRequest, id="no-client-id"),
        pytest.param({"scope": "email profile"}, InvalidRequest, id="no-openid"),
        pytest.param({"allowed_domains": ["not a domain"]}, InvalidRequest, id="bad-domain"),
        pytest.param({"default_scopes": ['a"b']}, InvalidRequest, id="bad-scope"),
        pytest.param({"client_secret": SECRET}, KeyStoreError, id="secret-without-passphrase"),
    ],
)
def test_a_bad_provider_is_refused(
    database: Database, changes: dict[str, object], error: type[Exception]
) -> None:
    settings: dict[str, object] = {"name": "corp", "issuer": ISSUER, "client_id": "ssot"}
    settings.update(changes)
    with pytest.raises(error):
        IdpStore(database).add(**settings)  # type: ignore[arg-type]
    assert IdpStore(database).list() == []


def test_names_and_issuers_are_unique(database: Database) -> None:
    store = IdpStore(database)
    store.add("corp", issuer=ISSUER, client_id="ssot")
    with pytest.raises(IdpExists):
        store.add("corp", issuer="https://other.example.com", client_id="ssot")
    with pytest.raises(IdpExists):
        store.add("other", issuer=ISSUER, client_id="ssot")


def test_a_client_secret_is_sealed_and_moves_with_a_rewrap(database: Database) -> None:
    store = IdpStore(database, sealer=sealer())
    store.add("corp", issuer=ISSUER, client_id="ssot", client_secret=SECRET)
    with database.transaction() as conn:
        stored = conn.exec_driver_sql("SELECT sealed_credential FROM identity_providers").scalar()
    assert SECRET.encode() not in bytes(stored)
    assert store.credential("corp") == SECRET.encode()
    with pytest.raises(KeyStoreError):
        IdpStore(database).credential("corp")  # no passphrase
    with pytest.raises(KeyStoreError):
        IdpStore(database, sealer=sealer(b"another passphrase-123")).credential("corp")

    keys = SigningKeyStore(database, PASSPHRASE, kdf=FAST_KDF)
    keys.ensure_signing_key()
    keys.rewrap(b"the new passphrase-456")
    with pytest.raises(KeyStoreError):
        store.credential("corp")
    moved = IdpStore(database, sealer=sealer(b"the new passphrase-456"))
    assert moved.credential("corp") == SECRET.encode()


def test_a_private_key_credential_must_be_a_signing_key(database: Database) -> None:
    store = IdpStore(database, sealer=sealer())
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidRequest):
        store.add("corp", issuer=ISSUER, client_id="ssot", private_key_pem=_pem(weak))
    with pytest.raises(InvalidRequest):
        store.add("corp", issuer=ISSUER, client_id="ssot", private_key_pem=b"not a key")
    key = _pem(ec.generate_private_key(ec.SECP256R1()))
    added = store.add("corp", issuer=ISSUER, client_id="ssot", private_key_pem=key)
    assert added.auth_method == "private_key_jwt"
    assert store.credential("corp") == key


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _world(database: Database) -> tuple[IdpStore, IdentityStore, UserStore, SessionStore]:
    users = UserStore(database, PasswordHasher(FAST_ARGON2))
    return (
        IdpStore(database),
        IdentityStore(database, users),
        users,
        SessionStore(database),
    )


def test_first_sign_in_creates_a_user_and_later_ones_find_it(database: Database) -> None:
    idps, identities, users, _ = _world(database)
    idps.add("corp", issuer=ISSUER, client_id="ssot")
    users.add("alice", "a local password", ())
    user, created = identities.resolve(
        "corp", "s-1", username_hint="alice", email="alice@example.com", default_scopes=["a.b"]
    )
    # The local alice is not matched by name: the new user gets a name of its own.
    assert created and user.username == "corp.alice" and user.scopes == ("a.b",)
    again, created = identities.resolve("corp", "s-1", username_hint="x", email=None)
    assert not created and again.id == user.id
    # A hint that is no username falls back to one made from the subject.
    odd, _ = identities.resolve("corp", "s-2", username_hint="no spaces allowed", email=None)
    assert odd.username.startswith("corp.") and len(odd.username) == len("corp.") + 16
    # Nobody knows the JIT user's password.
    assert users.get("corp.alice") is not None


def test_users_link_names_an_existing_user(database: Database) -> None:
    idps, identities, users, _ = _world(database)
    idps.add("corp", issuer=ISSUER, client_id="ssot")
    alice = users.add("alice", "a local password", ())
    identities.link("alice", "corp", "s-9")
    user, created = identities.resolve("corp", "s-9", username_hint="mallory", email=None)
    assert (user.id, created) == (alice.id, False)
    with pytest.raises(IdentityLinked):
        identities.link("alice", "corp", "s-9")
    with pytest.raises(UserNotFound):
        identities.link("nobody", "corp", "s-10")
    with pytest.raises(IdpNotFound):
        identities.link("alice", "elsewhere", "s-10")
    with pytest.raises(InvalidRequest):
        identities.link("alice", "corp", "")
    assert [i.subject for i in identities.list_for_user(alice.id)] == ["s-9"]


def test_disabling_or_removing_a_provider_ends_its_sessions_only(database: Database) -> None:
    idps, identities, users, sessions = _world(database)
    idps.add("corp", issuer=ISSUER, client_id="ssot")
    user, _ = identities.resolve("corp", "s-1", username_hint="bob", email=None)
    federated = sessions.create(user.id, idp="corp")
    by_password = sessions.create(user.id)

    idps.set_disabled("corp", True)
    live = {s.session_id for s in sessions.list_for_user(user.id)}
    assert live == {by_password.session_id}
    assert federated.session_id in sessions.revoked_sessions()

    idps.set_disabled("corp", False)
    again = sessions.create(user.id, idp="corp")
    assert idps.remove("corp") == 1
    assert again.session_id in sessions.revoked_sessions()
    assert identities.find("corp", "s-1") is None
    assert users.get("bob") is not None  # the user stays
    with pytest.raises(IdpNotFound):
        idps.remove("corp")


def test_the_cli_manages_providers_and_links(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = ["--database-url", database_url]
    argv = ["idp", "add", "corp", "--issuer", ISSUER, "--client-id", "ssot"]
    assert run_cli(main, [*argv, "--allowed-domain", "example.com", *storage]) == 0
    assert "added identity provider corp" in capsys.readouterr().out
    assert run_cli(main, [*argv, *storage]) == 1
    assert "another provider has that issuer" in capsys.readouterr().err
    assert run_cli(main, ["idp", "list", "--json", *storage]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["name"], p["allowed_domains"]) for p in listed] == [("corp", ["example.com"])]
    assert run_cli(main, ["idp", "disable", "corp", *storage]) == 0
    assert run_cli(main, ["idp", "show", "corp", *storage]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["disabled"] is True

    assert (
        run_cli(main, ["users", "add", "alice", "--password-stdin", *storage], "pw-123456\n") == 0
    )
    link = ["users", "link", "alice", "--idp", "corp", "--subject", "s-1", *storage]
    assert run_cli(main, link) == 0
    assert "linked user alice to subject s-1 at corp" in capsys.readouterr().out
    assert run_cli(main, link) == 1
    assert "already linked" in capsys.readouterr().err
    assert run_cli(main, ["idp", "remove", "corp", *storage]) == 0
    assert "1 identity links removed" in capsys.readouterr().out
    assert run_cli(main, ["idp", "show", "corp", *storage]) == 1
    assert "identity provider not found" in capsys.readouterr().err


def test_the_cli_reads_a_client_secret_from_stdin_only_with_the_passphrase(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SSOT_KEY_PASSPHRASE", raising=False)
    argv = ["idp", "add", "corp", "--issuer", ISSUER, "--client-id", "ssot"]
    argv += ["--client-secret-stdin", "--database-url", database_url]
    assert run_cli(main, argv, SECRET + "\n") == 1
    err = capsys.readouterr().err
    assert "passphrase" in err and SECRET not in err
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", PASSPHRASE.decode())
    assert run_cli(main, [*argv, "--key-kdf-memory-cost", "1024"], SECRET + "\n") == 0
    out = capsys.readouterr().out
    assert "client_secret" in out and SECRET not in out


def _provider(**changes: object) -> IdentityProvider:
    settings: dict[str, object] = {"name": "corp", "issuer": ISSUER, "client_id": "ssot"}
    settings.update(changes)
    return IdentityProvider(**settings)  # type: ignore[arg-type]


def test_claim_checks_need_the_nonce_the_flow_sent() -> None:
    now = time.time()
    verifier = IdTokenVerifier(now=lambda: now)
    claims = {"iss": ISSUER, "aud": "ssot", "sub": "s", "exp": now + 60, "iat": now}
    provider = _provider()
    assert verifier._claims({**claims, "nonce": "n-1"}, provider, "n-1").subject == "s"
    for given in ({}, {"nonce": "n-2"}, {"nonce": 7}):
        with pytest.raises(IdTokenRefused, match="nonce"):
            verifier._claims({**claims, **given}, provider, "n-1")
    with pytest.raises(IdTokenRefused, match="not yet valid"):
        verifier._claims({**claims, "nbf": now + 600}, provider, None)
    with pytest.raises(IdTokenRefused, match="sub"):
        verifier._claims({**claims, "sub": ""}, provider, None)
    with pytest.raises(IdTokenRefused, match="expired"):
        verifier._claims({**claims, "exp": True}, provider, None)  # a boolean is no time
