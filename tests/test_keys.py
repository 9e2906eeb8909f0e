"""JWKs and thumbprints, and the signing key store: creation, rotation, revocation, passphrases.

Store tests run on SQLite, and on PostgreSQL too when SSOT_TEST_DATABASE_URL is set.
They use ES256 (fast key generation) unless the algorithm is the point.
"""

from __future__ import annotations

import json

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from auth_server.errors import InvalidRequest, KeyStoreError
from auth_server.jwk import ALGORITHMS, generate_private_key, jwk_thumbprint, public_jwk
from auth_server.keys import SigningKeyStore
from auth_server.storage import Database, signing_keys
from helpers import Clock, run_concurrently

PASSPHRASE = b"test passphrase"
T0 = 1_700_000_000.0

# RFC 7638 §3.1 (the RSA key of RFC 7517 appendix A.1).
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
# RFC 8037 appendix A.2/A.3.
RFC8037_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def store(database: Database, clock: Clock) -> SigningKeyStore:
    return SigningKeyStore(database, PASSPHRASE, algorithm="ES256", now=clock)


def _kids(store: SigningKeyStore) -> list[str]:
    return [jwk["kid"] for jwk in store.published_jwks()]


def _states(store: SigningKeyStore) -> dict[str, str]:
    return {info.kid: info.state for info in store.list_keys()}


def _set_column(database: Database, kid: str, **values: object) -> None:
    with database.transaction(write=True) as conn:
        conn.execute(signing_keys.update().where(signing_keys.c.kid == kid).values(**values))


def _row_count(database: Database) -> int:
    with database.transaction() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(signing_keys)).scalar_one())


# --- JWKs --------------------------------------------------------------------


def test_thumbprint_matches_the_rfc7638_example() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_matches_the_rfc8037_ed25519_example() -> None:
    assert jwk_thumbprint(RFC8037_JWK) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_ignores_optional_members_and_their_order() -> None:
    reordered = dict(reversed(list(RFC7638_JWK.items())))
    reordered.update(use="sig", kid="other")

    assert jwk_thumbprint(reordered) == jwk_thumbprint(RFC7638_JWK)


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param({"kty": "oct", "k": "c2VjcmV0"}, id="symmetric-kty"),
        pytest.param({"n": "AQAB", "e": "AQAB"}, id="no-kty"),
        pytest.param({"kty": "RSA", "e": "AQAB"}, id="rsa-without-n"),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "AA"}, id="ec-without-y"),
    ],
)
def test_thumbprint_rejects_unknown_or_incomplete_keys(jwk: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


@pytest.mark.parametrize(
    ("algorithm", "key_type", "kty", "members"),
    [
        pytest.param("RS256", rsa.RSAPrivateKey, "RSA", {"n", "e"}, id="RS256"),
        pytest.param("PS256", rsa.RSAPrivateKey, "RSA", {"n", "e"}, id="PS256"),
        pytest.param("ES256", ec.EllipticCurvePrivateKey, "EC", {"crv", "x", "y"}, id="ES256"),
        pytest.param("EdDSA", ed25519.Ed25519PrivateKey, "OKP", {"crv", "x"}, id="EdDSA"),
    ],
)
def test_public_jwk_of_each_algorithm(
    algorithm: str, key_type: type, kty: str, members: set[str]
) -> None:
    key = generate_private_key(algorithm)
    jwk = public_jwk(key, algorithm)

    assert isinstance(key, key_type)
    assert set(jwk) == {"kty", "kid", "use", "alg", *members}
    assert (jwk["kty"], jwk["use"], jwk["alg"]) == (kty, "sig", algorithm)
    assert jwk["kid"] == jwk_thumbprint(jwk)
    assert public_jwk(key.public_key(), algorithm) == jwk


def test_rsa_keys_are_2048_bits_and_65537_by_default() -> None:
    key = generate_private_key("RS256")

    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert public_jwk(key, "RS256")["e"] == "AQAB"


def test_ec_coordinates_are_padded_to_32_bytes() -> None:
    for _ in range(20):
        jwk = public_jwk(generate_private_key("ES256"), "ES256")
        assert jwk["crv"] == "P-256"
        assert len(jwk["x"]) == len(jwk["y"]) == 43


@pytest.mark.parametrize(
    ("algorithm", "rsa_bits"),
    [
        pytest.param("HS256", 2048, id="hmac"),
        pytest.param("none", 2048, id="none"),
        pytest.param("RS256", 1024, id="rsa-1024"),
        pytest.param("PS256", 2560, id="rsa-between-2048-and-3072"),
    ],
)
def test_generate_private_key_rejects_unsupported_choices(algorithm: str, rsa_bits: int) -> None:
    with pytest.raises(ValueError):
        generate_private_key(algorithm, rsa_bits=rsa_bits)


@pytest.mark.parametrize(
    ("key_algorithm", "claimed_algorithm"),
    [
        pytest.param("ES256", "RS256", id="ec-as-rsa"),
        pytest.param("EdDSA", "ES256", id="ed25519-as-ec"),
        pytest.param("ES256", "EdDSA", id="ec-as-ed25519"),
        pytest.param("ES256", "HS256", id="unknown-algorithm"),
    ],
)
def test_public_jwk_rejects_a_key_that_does_not_fit_the_algorithm(
    key_algorithm: str, claimed_algorithm: str
) -> None:
    with pytest.raises(ValueError):
        public_jwk(generate_private_key(key_algorithm), claimed_algorithm)


def test_public_jwk_rejects_a_p384_key_for_es256() -> None:
    with pytest.raises(ValueError):
        public_jwk(ec.generate_private_key(ec.SECP384R1()), "ES256")


# --- the store: first key and passphrase ------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "passphrase"),
    [
        pytest.param({}, b"", id="empty-passphrase"),
        pytest.param({"algorithm": "HS256"}, PASSPHRASE, id="hmac"),
        pytest.param({"algorithm": "RS256", "rsa_bits": 1024}, PASSPHRASE, id="small-rsa"),
    ],
)
def test_store_rejects_bad_configuration(
    database: Database, kwargs: dict[str, object], passphrase: bytes
) -> None:
    with pytest.raises(ValueError):
        SigningKeyStore(database, passphrase, **kwargs)  # type: ignore[arg-type]


def test_first_start_creates_one_key_that_signs_at_once(
    store: SigningKeyStore, database: Database
) -> None:
    key = store.ensure_signing_key()

    assert key.algorithm == "ES256"
    assert key.kid == jwk_thumbprint(key.public_jwk)
    assert store.current().kid == key.kid
    assert store.published_jwks() == [dict(key.public_jwk)]
    [info] = store.list_keys()
    assert (info.kid, info.state, info.created_at, info.activates_at) == (
        key.kid,
        "current",
        T0,
        T0,
    )
    assert (info.deactivated_at, info.retires_at, info.revoked_at) == (None, None, None)
    assert store.ensure_signing_key().kid == key.kid
    assert _row_count(database) == 1


def test_private_key_is_stored_encrypted(store: SigningKeyStore, database: Database) -> None:
    store.ensure_signing_key()

    with database.transaction() as conn:
        stored = conn.execute(sa.select(signing_keys.c.private_key)).scalar_one()
    # Envelope encryption (auth_server._envelope): argon2id parameters and salt
    # with the row, the key itself only as AES-GCM ciphertext.
    envelope = json.loads(stored)
    assert (envelope["v"], envelope["kdf"]["name"]) == (1, "argon2id")
    assert {"dek", "data"} <= envelope.keys()
    assert b"PRIVATE KEY" not in stored


def test_current_without_any_key_raises_key_store_error(store: SigningKeyStore) -> None:
    with pytest.raises(KeyStoreError):
        store.current()


def test_wrong_passphrase_raises_key_store_error(
    store: SigningKeyStore, database: Database
) -> None:
    store.ensure_signing_key()
    wrong = SigningKeyStore(database, b"not the passphrase", algorithm="ES256")

    with pytest.raises(KeyStoreError) as raised:
        wrong.ensure_signing_key()

    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.message == "cannot decrypt signing key: wrong passphrase?"
    with pytest.raises(KeyStoreError):
        wrong.current()


def test_wrong_passphrase_replica_cannot_add_keys(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    first = store.ensure_signing_key()
    wrong = SigningKeyStore(database, b"not the passphrase", algorithm="ES256", now=clock)

    with pytest.raises(KeyStoreError):
        wrong.rotate()
    assert store.current().kid == first.kid
    # Revoking still works (it is the emergency brake), but adds no key.
    wrong.revoke(first.kid)

    assert _row_count(database) == 1
    assert store.ensure_signing_key().kid != first.kid


def test_wrong_passphrase_replica_does_not_make_a_key_when_none_is_current(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    first = store.ensure_signing_key()
    _set_column(database, first.kid, retires_at=clock.now - 1)
    wrong = SigningKeyStore(database, b"not the passphrase", algorithm="ES256", now=clock)

    with pytest.raises(KeyStoreError):
        wrong.ensure_signing_key()

    assert _row_count(database) == 1


@pytest.mark.parametrize(
    "corruption",
    [
        pytest.param({"private_key": b"garbage"}, id="private-key-garbage"),
        pytest.param({"private_key": b""}, id="private-key-empty"),
        pytest.param({"algorithm": "EdDSA"}, id="algorithm-mismatch"),
        pytest.param({"public_jwk": "{not json"}, id="public-jwk-garbage"),
    ],
)
def test_corrupted_key_row_raises_key_store_error(
    store: SigningKeyStore, database: Database, corruption: dict[str, object]
) -> None:
    kid = store.ensure_signing_key().kid
    _set_column(database, kid, **corruption)
    fresh = SigningKeyStore(database, PASSPHRASE, algorithm="ES256")

    with pytest.raises(KeyStoreError):
        fresh.current()
    with pytest.raises(KeyStoreError):
        fresh.ensure_signing_key()
    assert _row_count(database) == 1


def test_private_key_of_another_key_is_never_used(
    store: SigningKeyStore, database: Database
) -> None:
    kid = store.ensure_signing_key().kid
    other = SigningKeyStore(database, PASSPHRASE, algorithm="ES256")
    pem = generate_private_key("ES256").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSPHRASE),
    )
    _set_column(database, kid, private_key=pem)

    with pytest.raises(KeyStoreError, match="unusable"):
        other.current()


def test_public_key_that_does_not_match_its_kid_is_not_published(
    store: SigningKeyStore, database: Database
) -> None:
    kid = store.ensure_signing_key().kid
    impostor = public_jwk(generate_private_key("ES256"), "ES256")
    impostor["kid"] = kid
    _set_column(database, kid, public_jwk=json.dumps(impostor))

    assert store.published_jwks() == []


def test_corrupted_public_key_is_left_out_of_the_published_set(
    store: SigningKeyStore, database: Database
) -> None:
    old = store.ensure_signing_key().kid
    new = store.rotate().kid
    _set_column(database, old, public_jwk="{not json")

    assert _kids(store) == [new]


# --- rotation and revocation -------------------------------------------------


def test_immediate_rotation_switches_the_current_key(store: SigningKeyStore, clock: Clock) -> None:
    old = store.ensure_signing_key().kid
    clock.now += 10

    info = store.rotate()

    assert info.state == "current"
    assert info.activates_at == clock.now
    assert store.current().kid == info.kid
    assert _kids(store) == [info.kid, old]
    assert _states(store) == {info.kid: "current", old: "previous"}
    [previous] = [k for k in store.list_keys() if k.kid == old]
    assert previous.deactivated_at == clock.now
    # Default lifecycle: retired access-token TTL (900 s) + 30 s leeway after its last use.
    assert previous.retires_at == clock.now + 930


def test_rotation_at_the_same_instant_still_takes_over(store: SigningKeyStore) -> None:
    old = store.ensure_signing_key().kid

    new = store.rotate().kid

    assert store.current().kid == new != old


def test_delayed_rotation_publishes_the_next_key_before_it_signs(
    store: SigningKeyStore, clock: Clock
) -> None:
    old = store.ensure_signing_key().kid

    info = store.rotate(activate_after=600)

    assert info.state == "next"
    assert info.activates_at == T0 + 600
    assert store.current().kid == old
    assert _kids(store) == [old, info.kid]
    clock.now = T0 + 599
    assert store.current().kid == old
    clock.now = T0 + 600
    assert store.current().kid == info.kid
    assert _kids(store) == [info.kid, old]
    assert _states(store) == {info.kid: "current", old: "previous"}


def test_published_set_lists_the_current_key_first_then_newest(
    store: SigningKeyStore, clock: Clock
) -> None:
    first = store.ensure_signing_key().kid
    clock.now += 1
    second = store.rotate().kid
    clock.now += 1
    upcoming = store.rotate(activate_after=100).kid

    assert _kids(store) == [second, upcoming, first]
    assert _states(store) == {first: "previous", second: "current", upcoming: "next"}


@pytest.mark.parametrize(
    "delay",
    [
        pytest.param(-1.0, id="negative"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="infinite"),
    ],
)
def test_rotate_rejects_a_bad_delay(store: SigningKeyStore, delay: float) -> None:
    store.ensure_signing_key()

    with pytest.raises(InvalidRequest):
        store.rotate(activate_after=delay)


def test_revoking_a_previous_key_removes_it_from_the_published_set(
    store: SigningKeyStore, clock: Clock
) -> None:
    old = store.ensure_signing_key().kid
    new = store.rotate().kid
    clock.now += 5

    info = store.revoke(old)

    assert (info.state, info.revoked_at) == ("revoked", clock.now)
    assert _kids(store) == [new]
    assert store.current().kid == new


def test_revoking_the_current_key_makes_a_new_key_current_at_once(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    old = store.ensure_signing_key().kid
    clock.now += 5

    info = store.revoke(old)

    assert info.state == "revoked"
    replacement = store.current()
    assert replacement.kid != old
    assert _kids(store) == [replacement.kid]
    assert _states(store) == {old: "revoked", replacement.kid: "current"}
    assert _row_count(database) == 2


def test_revoking_the_current_key_does_not_fall_back_to_an_older_key(
    store: SigningKeyStore,
) -> None:
    older = store.ensure_signing_key().kid
    current = store.rotate().kid

    store.revoke(current)

    assert store.current().kid not in (older, current)


def test_revoking_the_next_key_keeps_the_current_key_signing(
    store: SigningKeyStore, clock: Clock
) -> None:
    old = store.ensure_signing_key().kid
    upcoming = store.rotate(activate_after=600).kid

    store.revoke(upcoming)
    clock.now += 1000

    assert store.current().kid == old
    assert _kids(store) == [old]


def test_revoking_twice_changes_nothing(store: SigningKeyStore, database: Database) -> None:
    old = store.ensure_signing_key().kid
    first = store.revoke(old)

    assert store.revoke(old) == first
    assert _row_count(database) == 2


def test_revoking_an_unknown_key_raises_key_store_error(store: SigningKeyStore) -> None:
    store.ensure_signing_key()

    with pytest.raises(KeyStoreError):
        store.revoke("no-such-kid")


def test_retired_key_is_neither_published_nor_current(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    old = store.ensure_signing_key().kid
    new = store.rotate().kid
    _set_column(database, old, retires_at=clock.now + 60)
    assert _kids(store) == [new, old]

    clock.now += 60

    assert _kids(store) == [new]
    assert _states(store) == {old: "retired", new: "current"}


def test_a_new_key_is_made_when_every_key_has_retired(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    old = store.ensure_signing_key().kid
    _set_column(database, old, retires_at=clock.now)

    new = store.ensure_signing_key().kid

    assert new != old
    assert _kids(store) == [new]


# --- replicas and passphrases ------------------------------------------------


def test_two_stores_on_one_database_agree(database: Database, clock: Clock) -> None:
    a = SigningKeyStore(database, PASSPHRASE, algorithm="ES256", now=clock)
    b = SigningKeyStore(database, PASSPHRASE, algorithm="ES256", now=clock)

    assert a.ensure_signing_key().kid == b.ensure_signing_key().kid
    rotated = a.rotate().kid
    assert b.current().kid == rotated
    assert b.published_jwks() == a.published_jwks()
    b.revoke(rotated)
    assert a.current().kid == b.current().kid != rotated
    assert a.published_jwks() == b.published_jwks()
    assert a.list_keys() == b.list_keys()


def test_replicas_starting_at_once_create_one_key(database: Database) -> None:
    stores = [SigningKeyStore(database, PASSPHRASE, algorithm="ES256") for _ in range(4)]

    kids = [key.kid for key in run_concurrently(lambda s: s.ensure_signing_key(), stores)]

    assert len(set(kids)) == 1
    assert _row_count(database) == 1


def test_rewrap_reencrypts_every_key_under_the_new_passphrase(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    store.ensure_signing_key()
    store.rotate(activate_after=100)
    current = store.current().kid

    assert store.rewrap(b"new passphrase") == 2

    with pytest.raises(KeyStoreError):
        SigningKeyStore(database, PASSPHRASE, algorithm="ES256", now=clock).current()
    reopened = SigningKeyStore(database, b"new passphrase", algorithm="ES256", now=clock)
    assert reopened.current().kid == current
    clock.now += 100
    assert reopened.current().kid != current
    # The store that rewrapped keeps working, and its new keys use the new passphrase.
    newest = store.rotate().kid
    assert reopened.current().kid == newest


def test_rewrap_with_the_wrong_passphrase_changes_nothing(
    store: SigningKeyStore, database: Database
) -> None:
    store.ensure_signing_key()
    wrong = SigningKeyStore(database, b"not the passphrase", algorithm="ES256")

    with pytest.raises(KeyStoreError):
        wrong.rewrap(b"new passphrase")

    assert SigningKeyStore(database, PASSPHRASE, algorithm="ES256").current().kid == (
        store.current().kid
    )


@pytest.mark.parametrize("algorithm", [pytest.param(a, id=a) for a in ALGORITHMS])
def test_store_creates_keys_of_its_algorithm(database: Database, algorithm: str) -> None:
    store = SigningKeyStore(database, PASSPHRASE, algorithm=algorithm)

    key = store.ensure_signing_key()

    assert key.algorithm == algorithm
    assert store.published_jwks()[0]["alg"] == algorithm
    # A fresh store decrypts it from the row.
    assert SigningKeyStore(database, PASSPHRASE).current().public_jwk == key.public_jwk
