"""The demo service identity ``ssot-auth up`` creates: a private_key_jwt client and its key.

The key pair is the client's own: its private half is written 0600 in the data
directory (as a real service would keep it), and only the public JWK is registered,
so the auth service holds no secret of the client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from auth_server.clients import ClientStore
from auth_server.commands.settings import write_secret_file
from auth_server.jwk import PRIVATE_TYPES, PrivateKey, generate_private_key, public_jwk

_LOGGER = logging.getLogger(__name__)

DEMO_CLIENT = "demo-service"
DEMO_CLIENT_KEY_FILE = "demo-service-key.pem"
_ALGORITHM = "RS256"


def ensure_demo_client(
    clients: ClientStore, data_dir: Path, *, scopes: Sequence[str], audiences: Sequence[str]
) -> tuple[Path, bool]:
    """Create the demo client and its key file once; repair either if it went missing.

    Idempotent across restarts: an existing key file is reused, an existing client keeps
    its settings, and only a registered key that no longer matches the file is replaced.

    Returns:
        The private key file and whether anything was created or replaced.
    """
    path = data_dir / DEMO_CLIENT_KEY_FILE
    key, created = _load_or_create_key(path)
    jwks = {"keys": [public_jwk(key, _ALGORITHM)]}
    client = clients.get(DEMO_CLIENT)
    if client is None:
        clients.add(DEMO_CLIENT, jwks=jwks, scopes=scopes, audiences=audiences)
        return path, True
    registered = [k.get("kid") for k in (client.jwks or {}).get("keys", [])]
    if registered != [jwks["keys"][0]["kid"]]:
        _LOGGER.info("the %s key file changed; registering its public key", DEMO_CLIENT)
        clients.set_keys(DEMO_CLIENT, jwks=jwks)
        return path, True
    return path, created


def _load_or_create_key(path: Path) -> tuple[PrivateKey, bool]:
    if path.exists():
        loaded = load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(loaded, PRIVATE_TYPES):
            return loaded, False
        raise ValueError(f"{path} holds no usable private key")
    key = generate_private_key(_ALGORITHM)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if not write_secret_file(path, pem):  # another process wrote it first: use that one
        return _load_or_create_key(path)
    return key, True
