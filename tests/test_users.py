"""Password hashing, input validation and the user store.

Store tests run on SQLite, and on PostgreSQL too when SSOT_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import pytest
import sqlalchemy as sa

from auth_server.errors import InvalidCredentials, InvalidRequest, UserExists, UserNotFound
from auth_server.passwords import Argon2Parameters, PasswordHasher
from auth_server.storage import Database, users
from auth_server.users import (
    UserStore,
    validate_password,
    validate_scopes,
    validate_username,
)
from helpers import Clock

CHEAP = Argon2Parameters(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"


class SpyHasher(PasswordHasher):
    """Counts argon2 verifications (dummy ones included) and the hashes they used."""

    def __init__(self, params: Argon2Parameters | None = None) -> None:
        self.verified: list[str] = []
        super().__init__(params)

    def verify(self, password_hash: str, password: str) -> bool:
        self.verified.append(password_hash)
        return super().verify(password_hash, password)


@pytest.fixture
def hasher() -> SpyHasher:
    return SpyHasher(CHEAP)


@pytest.fixture
def store(database: Database, hasher: SpyHasher) -> UserStore:
    return UserStore(database, hasher, now=Clock())


def _stored_hash(database: Database, username: str) -> str:
    with database.transaction() as conn:
        value: str = conn.execute(
            sa.select(users.c.password_hash).where(users.c.username == username)
        ).scalar_one()
    return value


# --- passwords ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"time_cost": 0}, id="time-cost-zero"),
        pytest.param({"parallelism": 0}, id="parallelism-zero"),
        pytest.param({"parallelism": 256}, id="parallelism-too-high"),
        pytest.param({"memory_cost": 7}, id="memory-below-8-kib"),
        pytest.param({"memory_cost": 15, "parallelism": 2}, id="memory-below-8-kib-per-lane"),
    ],
)
def test_argon2_parameters_reject_unusable_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Argon2Parameters(**kwargs)


def test_argon2_parameters_reject_non_integers() -> None:
    with pytest.raises(TypeError):
        Argon2Parameters(time_cost=1.5)  # type: ignore[arg-type]


def test_default_argon2_parameters_suit_a_server() -> None:
    assert Argon2Parameters() == Argon2Parameters(time_cost=3, memory_cost=65536, parallelism=1)


def test_hash_is_argon2id_with_the_configured_parameters() -> None:
    encoded = PasswordHasher(CHEAP).hash(PASSWORD)

    assert encoded.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert PASSWORD not in encoded


def test_hashes_of_one_password_differ_by_salt() -> None:
    hasher = PasswordHasher(CHEAP)

    assert hasher.hash(PASSWORD) != hasher.hash(PASSWORD)


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        pytest.param(PASSWORD, True, id="right"),
        pytest.param(PASSWORD + "!", False, id="wrong"),
        pytest.param("", False, id="empty"),
    ],
)
def test_verify_tells_right_from_wrong(password: str, expected: bool) -> None:
    hasher = PasswordHasher(CHEAP)

    assert hasher.verify(hasher.hash(PASSWORD), password) is expected


@pytest.mark.parametrize(
    "bad_hash",
    [
        pytest.param("", id="empty"),
        pytest.param("not a hash", id="garbage"),
        pytest.param("$argon2id$v=19$m=1024,t=1,p=1$broken", id="truncated"),
    ],
)
def test_verify_returns_false_for_an_unparsable_hash(bad_hash: str) -> None:
    hasher = PasswordHasher(CHEAP)

    assert hasher.verify(bad_hash, PASSWORD) is False
    assert hasher.needs_rehash(bad_hash) is True


def test_needs_rehash_only_for_other_parameters() -> None:
    old = PasswordHasher(CHEAP)
    new = PasswordHasher(Argon2Parameters(time_cost=2, memory_cost=1024, parallelism=1))

    assert old.needs_rehash(old.hash(PASSWORD)) is False
    assert new.needs_rehash(old.hash(PASSWORD)) is True


def test_dummy_verify_runs_one_verification_with_the_same_parameters() -> None:
    hasher = SpyHasher(CHEAP)

    hasher.dummy_verify(PASSWORD)

    assert len(hasher.verified) == 1
    assert hasher.verified[0].startswith("$argon2id$v=19$m=1024,t=1,p=1$")


# --- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a", id="one-char"),
        pytest.param("x" * 64, id="64-chars"),
        pytest.param("Alice.Smith_99@example-corp.com", id="all-allowed-punctuation"),
    ],
)
def test_valid_usernames_are_returned_unchanged(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 65, id="65-chars"),
        pytest.param("alice smith", id="space"),
        pytest.param("alice\n", id="trailing-newline"),
        pytest.param("älice", id="non-ascii"),
        pytest.param("alice/../root", id="slash"),
        pytest.param(None, id="not-a-string"),
    ],
)
def test_invalid_usernames_are_rejected_with_a_clear_message(name: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        validate_username(name)

    assert "username" in raised.value.message


@pytest.mark.parametrize(
    ("password", "valid"),
    [
        pytest.param("x" * 7, False, id="7-chars"),
        pytest.param("x" * 8, True, id="8-chars"),
        pytest.param("x" * 1024, True, id="1024-chars"),
        pytest.param("x" * 1025, False, id="1025-chars"),
    ],
)
def test_passwords_must_be_8_to_1024_characters(password: str, valid: bool) -> None:
    if valid:
        assert validate_password(password) == password
    else:
        with pytest.raises(InvalidRequest, match="password"):
            validate_password(password)


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        pytest.param([], (), id="none"),
        pytest.param(["write", "read", "write"], ("read", "write"), id="deduplicated-sorted"),
        pytest.param("write read", ("read", "write"), id="space-separated-string"),
        pytest.param(["resource:read", "a!#[]~"], ("a!#[]~", "resource:read"), id="rfc6749-chars"),
    ],
)
def test_scopes_are_deduplicated_and_sorted(
    scopes: Iterable[str], expected: tuple[str, ...]
) -> None:
    assert validate_scopes(scopes) == expected


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("", id="empty"),
        pytest.param("read write", id="space"),
        pytest.param('say"hi"', id="double-quote"),
        pytest.param("back\\slash", id="backslash"),
        pytest.param("café", id="non-ascii"),
        pytest.param("tab\t", id="control-char"),
    ],
)
def test_scopes_outside_rfc6749_are_rejected(scope: str) -> None:
    with pytest.raises(InvalidRequest, match="scope"):
        validate_scopes([scope])


# --- the store ---------------------------------------------------------------


def test_added_user_can_be_read_back(store: UserStore) -> None:
    added = store.add("alice", PASSWORD, ["write", "read"])

    assert added == store.get("alice")
    assert added.username == "alice"
    assert added.scopes == ("read", "write")
    assert added.disabled is False
    assert added.created_at == 1_700_000_000.0
    assert str(uuid.UUID(added.id)) == added.id


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("nobody", id="unknown"),
        pytest.param("nul\x00", id="nul-byte"),
        pytest.param("a" * 300, id="oversized"),
    ],
)
def test_unknown_user_reads_as_none(store: UserStore, name: str) -> None:
    assert store.get(name) is None


def test_password_is_stored_only_as_an_argon2id_hash(store: UserStore, database: Database) -> None:
    store.add("alice", PASSWORD)

    stored = _stored_hash(database, "alice")
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_duplicate_username_raises_user_exists(store: UserStore) -> None:
    store.add("alice", PASSWORD)

    with pytest.raises(UserExists):
        store.add("alice", "another password")
    assert [u.username for u in store.list()] == ["alice"]


@pytest.mark.parametrize(
    ("username", "password", "scopes"),
    [
        pytest.param("bad name", PASSWORD, (), id="username"),
        pytest.param("alice", "short", (), id="password"),
        pytest.param("alice", PASSWORD, ("bad scope",), id="scope"),
    ],
)
def test_add_rejects_invalid_input(
    store: UserStore, username: str, password: str, scopes: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidRequest):
        store.add(username, password, scopes)
    assert store.list() == []


def test_list_is_ordered_by_username(store: UserStore) -> None:
    for name in ("carol", "alice", "bob"):
        store.add(name, PASSWORD)

    assert [u.username for u in store.list()] == ["alice", "bob", "carol"]


def test_disable_and_enable_toggle_the_flag(store: UserStore) -> None:
    store.add("alice", PASSWORD)

    assert store.disable("alice").disabled is True
    assert store.get("alice").disabled is True  # type: ignore[union-attr]
    assert store.enable("alice").disabled is False
    assert store.get("alice").disabled is False  # type: ignore[union-attr]


def test_set_scopes_replaces_the_scopes(store: UserStore) -> None:
    store.add("alice", PASSWORD, ["read"])

    assert store.set_scopes("alice", ["admin", "write", "admin"]).scopes == ("admin", "write")
    assert store.get("alice").scopes == ("admin", "write")  # type: ignore[union-attr]


def test_set_password_replaces_the_password(store: UserStore) -> None:
    store.add("alice", PASSWORD)

    store.set_password("alice", "a brand new password")

    assert store.authenticate("alice", "a brand new password").username == "alice"
    with pytest.raises(InvalidCredentials):
        store.authenticate("alice", PASSWORD)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s.disable("ghost"), id="disable"),
        pytest.param(lambda s: s.enable("ghost"), id="enable"),
        pytest.param(lambda s: s.set_password("ghost", PASSWORD), id="set-password"),
        pytest.param(lambda s: s.set_scopes("ghost", ["read"]), id="set-scopes"),
    ],
)
def test_changing_an_unknown_user_raises_user_not_found(store: UserStore, change: object) -> None:
    with pytest.raises(UserNotFound):
        change(store)  # type: ignore[operator]


def test_authenticate_returns_the_user(store: UserStore) -> None:
    added = store.add("alice", PASSWORD, ["read"])

    assert store.authenticate("alice", PASSWORD) == added


@pytest.mark.parametrize(
    ("username", "password", "disable"),
    [
        pytest.param("nobody", PASSWORD, False, id="unknown-user"),
        pytest.param("alice", "wrong password", False, id="wrong-password"),
        pytest.param("alice", PASSWORD, True, id="disabled-user"),
        pytest.param("bad name!", PASSWORD, False, id="malformed-username"),
        pytest.param("alice\x00", PASSWORD, False, id="nul-in-username"),
        pytest.param("a" * 300, PASSWORD, False, id="oversized-username"),
    ],
)
def test_failed_logins_look_alike_and_cost_one_argon2_verification(
    store: UserStore, hasher: SpyHasher, username: str, password: str, disable: bool
) -> None:
    store.add("alice", PASSWORD)
    if disable:
        store.disable("alice")
    hasher.verified.clear()

    with pytest.raises(InvalidCredentials) as raised:
        store.authenticate(username, password)

    assert raised.value.message == "invalid username or password"
    assert len(hasher.verified) == 1
    # The hash verified against was made with the same parameters as real ones.
    assert hasher.verified[0].startswith("$argon2id$v=19$m=1024,t=1,p=1$")


def test_outdated_hash_is_upgraded_on_successful_login(database: Database) -> None:
    UserStore(database, PasswordHasher(CHEAP)).add("alice", PASSWORD)
    stronger = PasswordHasher(Argon2Parameters(time_cost=2, memory_cost=2048, parallelism=1))
    store = UserStore(database, stronger)

    store.authenticate("alice", PASSWORD)

    upgraded = _stored_hash(database, "alice")
    assert upgraded.startswith("$argon2id$v=19$m=2048,t=2,p=1$")
    assert stronger.needs_rehash(upgraded) is False
    assert store.authenticate("alice", PASSWORD).username == "alice"


def test_failed_login_does_not_upgrade_the_hash(database: Database) -> None:
    UserStore(database, PasswordHasher(CHEAP)).add("alice", PASSWORD)
    before = _stored_hash(database, "alice")
    store = UserStore(database, PasswordHasher(Argon2Parameters(time_cost=2, memory_cost=1024)))

    with pytest.raises(InvalidCredentials):
        store.authenticate("alice", "wrong password")

    assert _stored_hash(database, "alice") == before


def test_current_hash_is_not_rewritten_on_login(store: UserStore, database: Database) -> None:
    store.add("alice", PASSWORD)
    before = _stored_hash(database, "alice")

    store.authenticate("alice", PASSWORD)

    assert _stored_hash(database, "alice") == before
