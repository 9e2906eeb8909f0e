"""Settings shared by the ``ssot-auth`` subcommands: env defaults, data dir, passphrase."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

PASSPHRASE_FILE_NAME = "key-passphrase"  # noqa: S105 - a file name
DEFAULT_DATA_DIR = "ssot-data"


class SettingsError(Exception):
    """A setting is unusable; the message names the flag to fix."""


def env_default(name: str, default: str | None = None) -> str | None:
    """The ``SSOT_<NAME>`` environment variable, else ``default``."""
    return os.environ.get(f"SSOT_{name}", default)


def env_int(name: str, default: int) -> int:
    value = env_default(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"SSOT_{name} must be an integer") from None


def env_float(name: str, default: float) -> float:
    value = env_default(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"SSOT_{name} must be a number") from None


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env_default("DATA_DIR", DEFAULT_DATA_DIR) or DEFAULT_DATA_DIR),
        help="directory for the SQLite database and generated secrets (SSOT_DATA_DIR)",
    )
    parser.add_argument(
        "--database-url",
        default=env_default("DATABASE_URL"),
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; default: SQLite in "
        "--data-dir (SSOT_DATABASE_URL)",
    )


def add_passphrase_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-passphrase-file",
        type=Path,
        default=env_default("KEY_PASSPHRASE_FILE"),
        help="file holding the passphrase that encrypts private keys (SSOT_KEY_PASSPHRASE_FILE; "
        "or give the passphrase itself in SSOT_KEY_PASSPHRASE)",
    )


def prepare_data_dir(path: Path) -> Path:
    """Create the data directory (0700) if needed and check it is writable."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"cannot create --data-dir {path}: {exc.strerror}") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"--data-dir {path} is not a writable directory")
    return path


def write_secret_file(path: Path, content: bytes) -> bool:
    """Create ``path`` with mode 0600 holding ``content``; False if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, content)
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return True


def _read_passphrase_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read --key-passphrase-file {path}: {exc.strerror}") from None
    passphrase = data.strip()
    if not passphrase:
        raise SettingsError(f"--key-passphrase-file {path} is empty")
    return passphrase


def resolve_passphrase(ns: argparse.Namespace, data_dir: Path, *, create: bool) -> bytes:
    """The key passphrase: the file flag, then ``SSOT_KEY_PASSPHRASE``, then the data dir's file.

    With ``create`` and nothing configured, a random passphrase is written to
    ``DATA_DIR/key-passphrase`` (0600) with a warning: fine for a laptop, not
    for production, where it belongs in a secret store.
    """
    if ns.key_passphrase_file is not None:
        return _read_passphrase_file(Path(ns.key_passphrase_file))
    from_env = os.environ.get("SSOT_KEY_PASSPHRASE")
    if from_env:
        return from_env.encode()
    generated = data_dir / PASSPHRASE_FILE_NAME
    if generated.exists():
        return _read_passphrase_file(generated)
    if not create:
        raise SettingsError("no key passphrase: give --key-passphrase-file or SSOT_KEY_PASSPHRASE")
    if write_secret_file(generated, secrets.token_urlsafe(32).encode() + b"\n"):
        _LOGGER.warning(
            "no key passphrase configured: generated one in %s (mode 0600); "
            "use --key-passphrase-file or SSOT_KEY_PASSPHRASE in production",
            generated,
        )
    return _read_passphrase_file(generated)
