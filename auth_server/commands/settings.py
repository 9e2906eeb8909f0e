"""Settings the ``ssot-auth`` subcommands share: where data lives, the key passphrase, passwords.

Each comes as the flags that set it and the function that reads it: ``--data-dir`` and
``--database-url`` (:func:`add_storage_arguments`, :func:`prepare_data_dir`),
``--key-passphrase-file`` and the key-encryption KDF cost (:func:`add_passphrase_argument`,
:func:`resolve_passphrase`, :func:`key_kdf`),
``--password-stdin`` (:func:`add_password_argument`, :func:`read_password`). Every flag
also reads its ``SSOT_*`` variable (:func:`interceptors._cli.add_env_argument`).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import sys
from pathlib import Path

from auth_server.kdf import KdfParameters
from auth_server.passphrase_policy import ALLOW_SHORT_FLAG, MIN_PASSPHRASE_CHARS
from interceptors._cli import SettingsError, add_env_argument

_LOGGER = logging.getLogger(__name__)

PASSPHRASE_FILE_NAME = "key-passphrase"  # noqa: S105 - a file name
DEFAULT_DATA_DIR = "ssot-data"

__all__ = [
    "DEFAULT_DATA_DIR",
    "PASSPHRASE_FILE_NAME",
    "SettingsError",
    "add_passphrase_argument",
    "add_password_argument",
    "add_storage_arguments",
    "key_kdf",
    "prepare_data_dir",
    "read_password",
    "resolve_passphrase",
    "write_secret_file",
]


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_argument(
        parser,
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_DATA_DIR),
        help="directory for the SQLite database and generated secrets",
    )
    add_env_argument(
        parser,
        "--database-url",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db",
        default_help="SQLite in --data-dir",
    )


def add_passphrase_argument(parser: argparse.ArgumentParser) -> None:
    add_env_argument(
        parser,
        "--key-passphrase-file",
        type=Path,
        help="file holding the passphrase that encrypts private keys",
        note="or give the passphrase itself in SSOT_KEY_PASSPHRASE",
    )
    add_env_argument(
        parser,
        ALLOW_SHORT_FLAG,
        action="store_true",
        help=f"accept a key passphrase shorter than {MIN_PASSPHRASE_CHARS} characters for a new"
        " deployment (a test rig; never in production)",
    )
    d = KdfParameters()
    group = parser.add_argument_group(
        "key encryption at rest (argon2id KEK; stored keys keep their own cost until `keys rewrap`)"
    )
    for flag, default, text in (
        ("--key-kdf-time-cost", d.time_cost, "passes over the memory"),
        ("--key-kdf-memory-cost", d.memory_cost, "memory in KiB"),
        ("--key-kdf-parallelism", d.parallelism, "lanes"),
    ):
        add_env_argument(
            group, flag, type=int, default=default, metavar="N", help=text, default_help=default
        )


def key_kdf(ns: argparse.Namespace) -> KdfParameters:
    """The key-encryption KDF cost that :func:`add_passphrase_argument`'s flags ask for.

    Raises:
        SettingsError: The cost is out of bounds.
    """
    try:
        return KdfParameters(
            time_cost=ns.key_kdf_time_cost,
            memory_cost=ns.key_kdf_memory_cost,
            parallelism=ns.key_kdf_parallelism,
        )
    except ValueError as exc:
        raise SettingsError(f"--key-kdf-*: {exc}") from None


def add_password_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )


def read_password(ns: argparse.Namespace, *, confirm: bool) -> str:
    """A user's password: the first line of standard input, or asked at the terminal.

    Raises:
        SettingsError: no password on standard input, or not a terminal to ask at, or
            the two entries differ.
    """
    if ns.password_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise SettingsError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise SettingsError("standard input is not a terminal: use --password-stdin")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password (again): ") != password:
        raise SettingsError("passwords do not match")
    return password


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
