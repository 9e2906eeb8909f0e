"""The key lifecycle: policy checks, the scheduler's maintain() pass, revocation, bad rows.

Store tests run on SQLite, and on PostgreSQL too when SSOT_TEST_DATABASE_URL is set;
they use ES256 (fast key generation) unless the algorithm is the point.
"""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.authority import make_jwks_snapshot
from auth_server.config import AuthServerConfig
from auth_server.errors import KeyStoreError
from auth_server.keys import SigningKeyStore
from auth_server.lifecycle import KeyLifecycle, LifecycleError, parse_duration
from auth_server.storage import Database, signing_keys
from helpers import PASSPHRASE as SERVER_PASSPHRASE
from helpers import Clock, run_concurrently

PASSPHRASE = b"lifecycle passphrase"
T0 = 1_700_000_000.0
POLICY = KeyLifecycle(rotation_interval=1000, activate_after=100, retire_after=200)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def _store(
    database: Database,
    clock: Clock,
    *,
    algorithm: str = "ES256",
    passphrase: bytes = PASSPHRASE,
    policy: KeyLifecycle = POLICY,
) -> SigningKeyStore:
    return SigningKeyStore(database, passphrase, algorithm=algorithm, now=clock, lifecycle=policy)


@pytest.fixture
def store(database: Database, clock: Clock) -> SigningKeyStore:
    return _store(database, clock)


def _states(store: SigningKeyStore) -> dict[str, str]:
    return {info.kid: info.state for info in store.list_keys()}


def _published(store: SigningKeyStore) -> list[str]:
    return [jwk["kid"] for jwk in store.published_jwks()]


def _private_key(database: Database, kid: str) -> bytes:
    with database.transaction() as conn:
        return bytes(
            conn.execute(
                sa.select(signing_keys.c.private_key).where(signing_keys.c.kid == kid)
            ).scalar_one()
        )


def _set_column(database: Database, kid: str, **values: object) -> None:
    with database.transaction(write=True) as conn:
        conn.execute(signing_keys.update().where(signing_keys.c.kid == kid).values(**values))


def _audit(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "ssot.audit"]


# --- the policy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "setting"),
    [
        pytest.param({"key_activate_after": 599}, "--key-activate-after", id="prepublish-short"),
        pytest.param(
            {"jwks_max_age": 301, "key_activate_after": 600}, "--jwks-max-age", id="max-age"
        ),
        pytest.param({"key_retire_after": 929}, "--key-retire-after", id="retire-too-soon"),
        pytest.param(
            {"access_token_ttl": 3600, "key_retire_after": 930},
            "--access-token-ttl",
            id="ttl-outlives-key",
        ),
        pytest.param({"key_rotation_interval": 599}, "--key-rotation-interval", id="interval"),
        pytest.param(
            {"key_rotation_interval": 600, "key_retire_after": 86400},
            "--key-rotation-interval",
            id="too-many-keys",
        ),
        pytest.param({"key_activate_after": -1}, "--key-activate-after", id="negative"),
        pytest.param({"rsa_bits": 2500}, "--rsa-bits", id="rsa-bits"),
    ],
)
def test_unsafe_schedule_is_refused_naming_the_setting(
    tmp_path: object, changes: dict[str, object], setting: str
) -> None:
    settings: dict[str, object] = {
        "data_dir": tmp_path,
        "issuer": "http://127.0.0.1:8080",
        "audience": "a",
        "key_passphrase": SERVER_PASSPHRASE,
    }
    with pytest.raises(ValueError, match=setting):
        AuthServerConfig(**settings, **changes)  # type: ignore[arg-type]


def test_default_schedule_follows_max_age_and_token_lifetime(tmp_path: object) -> None:
    config = AuthServerConfig(
        data_dir=tmp_path,  # type: ignore[arg-type]
        issuer="http://127.0.0.1:8080",
        audience="a",
        key_passphrase=SERVER_PASSPHRASE,
        jwks_max_age=120,
        access_token_ttl=600,
    )

    assert config.key_lifecycle == KeyLifecycle(
        rotation_interval=30 * 86400, activate_after=240, retire_after=630
    )


def test_lifecycle_check_accepts_exactly_the_minimums() -> None:
    KeyLifecycle(rotation_interval=0, activate_after=600, retire_after=930).check(
        jwks_max_age=300, access_token_ttl=900
    )
    with pytest.raises(LifecycleError):
        KeyLifecycle(activate_after=600, retire_after=929.9).check(
            jwks_max_age=300, access_token_ttl=900
        )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("600", 600), ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "5x", "inf", "nan", "d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("next_change", "now", "expected"),
    [
        pytest.param(None, T0, 300, id="nothing-scheduled"),
        pytest.param(T0 + 1000, T0, 300, id="far"),
        pytest.param(T0 + 42.9, T0, 42, id="floored"),
        pytest.param(T0 + 0.2, T0, 1, id="at-least-one"),
        pytest.param(T0 - 5, T0, 1, id="overdue"),
    ],
)
def test_http_max_age_stops_at_the_next_change(
    next_change: float | None, now: float, expected: int
) -> None:
    snapshot = make_jwks_snapshot([], 300, next_change_at=next_change)

    assert snapshot.max_age_at(now) == expected


# --- the schedule ------------------------------------------------------------------


def test_next_key_is_pre_published_then_signs_then_the_old_one_retires(
    store: SigningKeyStore, database: Database, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssot.audit")
    first = store.ensure_signing_key().kid
    store.maintain()

    clock.now = T0 + 899  # 1 s before the pre-publication time
    assert not store.maintain().changed
    assert store.published_set().next_change_at == T0 + 900

    clock.now = T0 + 900
    report = store.maintain()
    [second] = report.created
    assert _states(store) == {first: "current", second: "next"}
    assert _published(store) == [first, second]
    [info] = [k for k in store.list_keys() if k.kid == second]
    assert info.activates_at == T0 + 1000
    assert store.current().kid == first

    clock.now = T0 + 1000
    assert store.maintain().activated == second
    assert store.current().kid == second
    [old] = [k for k in store.list_keys() if k.kid == first]
    assert (old.state, old.deactivated_at, old.retires_at) == ("previous", T0 + 1000, T0 + 1200)
    assert store.published_set().next_change_at == T0 + 1200

    clock.now = T0 + 1200
    assert store.maintain().destroyed == (first,)
    assert _states(store)[first] == "retired"
    assert _published(store) == [second]
    assert _private_key(database, first) == b""
    events = [(e["event"], e.get("kid"), e.get("reason")) for e in _audit(caplog)]
    assert events == [
        ("key.created", first, "first"),
        ("key.created", second, "scheduled"),
        ("key.activated", second, None),
        ("key.retired", first, "expired"),
    ]


def test_a_late_scheduler_still_pre_publishes_for_the_full_delay(
    store: SigningKeyStore, clock: Clock
) -> None:
    store.ensure_signing_key()
    clock.now = T0 + 5000  # the server was down when the rotation was due

    [new] = store.maintain().created

    [info] = [k for k in store.list_keys() if k.kid == new]
    assert (info.state, info.activates_at) == ("next", T0 + 5100)


def test_rotation_interval_zero_rotates_only_by_hand(database: Database, clock: Clock) -> None:
    store = _store(database, clock, policy=KeyLifecycle(rotation_interval=0))
    store.ensure_signing_key()
    clock.now = T0 + 10**8

    assert not store.maintain().changed


def test_replicas_maintaining_at_once_create_one_next_key(database: Database, clock: Clock) -> None:
    stores = [_store(database, clock) for _ in range(4)]
    stores[0].ensure_signing_key()
    clock.now = T0 + 950

    created = [kid for r in run_concurrently(lambda s: s.maintain(), stores) for kid in r.created]

    assert len(created) == 1
    assert all(s.published_jwks() == stores[0].published_jwks() for s in stores)


def test_a_replica_with_a_longer_token_lifetime_keeps_old_keys_longer(
    database: Database, clock: Clock
) -> None:
    short = _store(database, clock)
    long = _store(database, clock, policy=KeyLifecycle(activate_after=100, retire_after=500))
    old = short.ensure_signing_key().kid
    short.rotate()
    assert [k.retires_at for k in short.list_keys() if k.kid == old] == [T0 + 200]

    assert long.maintain().retirements == (old,)
    assert short.maintain().retirements == ()  # never shortened again

    assert [k.retires_at for k in short.list_keys() if k.kid == old] == [T0 + 500]


def test_changing_the_algorithm_migrates_through_a_pre_published_key(
    database: Database, clock: Clock
) -> None:
    es256 = _store(database, clock).ensure_signing_key()
    eddsa = _store(database, clock, algorithm="EdDSA")

    [new] = eddsa.maintain().created

    assert eddsa.current().kid == es256.kid  # keeps signing with the old algorithm meanwhile
    assert [j["alg"] for j in eddsa.published_jwks()] == ["ES256", "EdDSA"]
    clock.now = T0 + 100
    assert eddsa.current().kid == new
    assert eddsa.current().algorithm == "EdDSA"
    assert [j["alg"] for j in eddsa.published_jwks()] == ["EdDSA", "ES256"]
    clock.now = T0 + 300
    eddsa.maintain()
    assert [j["alg"] for j in eddsa.published_jwks()] == ["EdDSA"]


def test_rsa_3072_keys_on_request(database: Database, clock: Clock) -> None:
    store = SigningKeyStore(database, PASSPHRASE, algorithm="PS256", rsa_bits=3072, now=clock)

    key = store.ensure_signing_key()

    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.private_key.key_size == 3072
    assert store.published_jwks()[0]["alg"] == "PS256"


# --- revocation --------------------------------------------------------------------


def test_revoking_the_current_key_promotes_the_pre_published_one(
    store: SigningKeyStore, database: Database, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssot.audit")
    old = store.ensure_signing_key().kid
    clock.now = T0 + 950
    [upcoming] = store.maintain().created

    store.revoke(old)

    assert store.current().kid == upcoming  # verifiers have known it for 50 s
    assert _published(store) == [upcoming]
    assert _states(store) == {old: "revoked", upcoming: "current"}
    assert _private_key(database, old) == b""
    revoked = [e for e in _audit(caplog) if e["event"] == "key.revoked"]
    assert revoked == [
        {"event": "key.revoked", "kid": old, "algorithm": "ES256", "replacement": upcoming}
    ]
    # The schedule starts again from the promoted key's activation.
    clock.now = T0 + 950 + 899
    assert not store.maintain().created
    clock.now = T0 + 950 + 900
    assert len(store.maintain().created) == 1


def test_revoking_the_next_key_keeps_the_current_key_signing_and_schedules_another(
    store: SigningKeyStore, clock: Clock
) -> None:
    current = store.ensure_signing_key().kid
    clock.now = T0 + 950
    [upcoming] = store.maintain().created

    store.revoke(upcoming)

    [info] = [k for k in store.list_keys() if k.kid == current]
    assert (info.deactivated_at, info.retires_at) == (None, None)
    clock.now = T0 + 1000
    assert store.current().kid == current
    [replacement] = store.maintain().created
    [new] = [k for k in store.list_keys() if k.kid == replacement]
    assert new.activates_at == T0 + 1100  # a full pre-publication again


def test_a_revoked_key_never_signs_even_if_this_process_holds_it(
    database: Database, clock: Clock
) -> None:
    server = _store(database, clock)
    old = server.ensure_signing_key().kid  # decrypted and cached in this "server"
    _store(database, clock).revoke(old)  # by another process

    assert server.current().kid != old


# --- bad rows and passphrases ---------------------------------------------------------


def test_an_unusable_next_key_is_withdrawn_and_replaced_before_it_signs(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    current = store.ensure_signing_key().kid
    clock.now = T0 + 900
    [upcoming] = store.maintain().created
    _set_column(database, upcoming, private_key=b"garbage")
    fresh = _store(database, clock)  # a replica that never decrypted it

    clock.now = T0 + 910
    report = fresh.maintain()

    assert report.withdrawn == (upcoming,)
    [replacement] = report.created
    assert _states(fresh)[upcoming] == "retired"
    assert upcoming not in _published(fresh)
    clock.now = T0 + 1000
    assert fresh.current().kid == current  # keeps signing with the good key
    clock.now = T0 + 1010
    assert fresh.current().kid == replacement


def test_a_next_key_this_server_cannot_decrypt_is_not_published(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    store.ensure_signing_key()
    clock.now = T0 + 900
    [upcoming] = store.maintain().created
    _set_column(database, upcoming, private_key=b"garbage")
    fresh = _store(database, clock)
    fresh.current()
    with pytest.raises(KeyStoreError):
        fresh._material.load(upcoming)

    assert upcoming not in _published(fresh)


def test_a_wrong_passphrase_replica_withdraws_nothing(
    store: SigningKeyStore, database: Database, clock: Clock
) -> None:
    store.ensure_signing_key()
    clock.now = T0 + 900
    [upcoming] = store.maintain().created
    wrong = _store(database, clock, passphrase=b"not the passphrase")

    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        wrong.maintain()

    assert _states(store)[upcoming] == "next"
    assert upcoming in _published(store)


def test_rewrap_skips_destroyed_keys_and_keeps_the_schedule_working(
    store: SigningKeyStore, database: Database, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ssot.audit")
    store.ensure_signing_key()
    store.revoke(store.current().kid)

    assert store.rewrap(b"a new passphrase") == 1

    reopened = _store(database, clock, passphrase=b"a new passphrase")
    clock.now = T0 + 900
    assert len(reopened.maintain().created) == 1
    assert {"event": "key.rewrapped", "count": 1} in _audit(caplog)
