"""The demo service identity of ``ssot-auth up``: created once, 0600, idempotent, repaired."""

from __future__ import annotations

import stat
from pathlib import Path

from auth_server.clients import ClientStore
from auth_server.commands._demo_client import DEMO_CLIENT, ensure_demo_client
from auth_server.storage import Database


def kids(store: ClientStore) -> list[str]:
    client = store.get(DEMO_CLIENT)
    assert client is not None and client.jwks is not None
    return [k["kid"] for k in client.jwks["keys"]]


def test_created_once_and_kept_across_restarts(database: Database, tmp_path: Path) -> None:
    store = ClientStore(database)
    path, created = ensure_demo_client(
        store, tmp_path, scopes=["resource.read"], audiences=["ssot-demo"]
    )
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    pem, first = path.read_bytes(), kids(store)
    client = store.get(DEMO_CLIENT)
    assert client is not None and client.auth_method == "private_key_jwt"
    assert client.scopes == ("resource.read",) and client.audiences == ("ssot-demo",)

    again = ensure_demo_client(store, tmp_path, scopes=["resource.read"], audiences=["ssot-demo"])
    assert again == (path, False)
    assert path.read_bytes() == pem and kids(store) == first


def test_a_lost_key_file_is_replaced_and_registered(database: Database, tmp_path: Path) -> None:
    store = ClientStore(database)
    path, _ = ensure_demo_client(store, tmp_path, scopes=["resource.read"], audiences=["a"])
    first = kids(store)
    path.unlink()
    _, created = ensure_demo_client(store, tmp_path, scopes=["resource.read"], audiences=["a"])
    assert created and kids(store) != first and path.exists()


def test_an_existing_key_file_is_registered(database: Database, tmp_path: Path) -> None:
    store = ClientStore(database)
    ensure_demo_client(store, tmp_path, scopes=["resource.read"], audiences=["a"])
    first = kids(store)
    store.remove(DEMO_CLIENT)
    _, created = ensure_demo_client(store, tmp_path, scopes=["resource.read"], audiences=["a"])
    assert created and kids(store) == first
