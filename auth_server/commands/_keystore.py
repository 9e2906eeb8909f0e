"""``--key-store db|pkcs11`` and the PKCS#11 token flags of ``serve``, ``up`` and ``keys``."""

from __future__ import annotations

import argparse
from pathlib import Path

from auth_server.config import KEY_STORES
from auth_server.hsm import Pkcs11Custody, Pkcs11Settings, TokenSetupError, read_pin_file
from interceptors._cli import SettingsError, add_env_argument

#: SoftHSM2's module where Debian and Ubuntu install it; shown in the help only.
SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def add_key_store_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_argument(
        parser,
        "--key-store",
        choices=KEY_STORES,
        default="db",
        help="where new signing keys are made and kept: db (encrypted in the database) or"
        " pkcs11 (inside a token, never leaving it)",
        default_help="db",
    )
    group = parser.add_argument_group("PKCS#11 token (--key-store pkcs11)")
    add_env_argument(
        group,
        "--pkcs11-module",
        type=Path,
        metavar="PATH",
        help=f"the token's PKCS#11 module, e.g. {SOFTHSM2_MODULE}",
    )
    add_env_argument(
        group, "--pkcs11-token-label", metavar="LABEL", help="label of the token holding the keys"
    )
    add_env_argument(
        group,
        "--pkcs11-pin-file",
        type=Path,
        metavar="FILE",
        help="file holding the token's user PIN",
    )


def pkcs11_settings(ns: argparse.Namespace) -> Pkcs11Settings | None:
    """The token settings ``--key-store pkcs11`` asks for (``None`` for ``db``).

    Raises:
        SettingsError: A flag is missing, or the PIN file is unreadable (named).
    """
    if ns.key_store != "pkcs11":
        return None
    missing = [
        flag
        for flag, value in (
            ("--pkcs11-module", ns.pkcs11_module),
            ("--pkcs11-token-label", ns.pkcs11_token_label),
            ("--pkcs11-pin-file", ns.pkcs11_pin_file),
        )
        if not value
    ]
    if missing:
        raise SettingsError(f"--key-store pkcs11 needs {', '.join(missing)}")
    try:
        pin = read_pin_file(Path(ns.pkcs11_pin_file))
    except TokenSetupError as exc:
        raise SettingsError(exc.message) from None
    return Pkcs11Settings(module=Path(ns.pkcs11_module), token_label=ns.pkcs11_token_label, pin=pin)


def open_custody(ns: argparse.Namespace, algorithm: str | None = None) -> Pkcs11Custody | None:
    """The token of a ``keys`` command's ``--key-store pkcs11`` (``None`` for ``db``).

    Raises:
        SettingsError: A flag is missing, or the token is unusable (the flag is named).
    """
    settings = pkcs11_settings(ns)
    if settings is None:
        return None
    try:
        custody = Pkcs11Custody(settings)
        if algorithm is not None:
            custody.check_algorithm(algorithm)
    except TokenSetupError as exc:
        raise SettingsError(exc.message) from None
    return custody
