"""SoftHSM2 tokens for the PKCS#11 key store tests: one throwaway token per test.

Each token lives in a temporary directory of its own, named by a temporary
``SOFTHSM2_CONF``; the module is re-initialised so it reads that configuration
(SoftHSM2 reads it at ``C_Initialize``). Tests skip, with the reason, where
python-pkcs11, the SoftHSM2 module or ``softhsm2-util`` is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Where Debian/Ubuntu (and a source build) install SoftHSM2's module.
MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
PIN = "4711-test-pin"
SO_PIN = "so-pin-0815"


def module_path() -> str | None:
    return next((m for m in MODULES if os.path.exists(m)), None)


def skip_reason() -> str | None:
    """Why the PKCS#11 tests cannot run here, or ``None``."""
    if importlib.util.find_spec("pkcs11") is None:
        return "python-pkcs11 is not installed (pip install -e '.[dev]')"
    if module_path() is None:
        return "the SoftHSM2 module is not installed (apt-get install softhsm2)"
    if shutil.which("softhsm2-util") is None:
        return "softhsm2-util is not installed (apt-get install softhsm2)"
    return None


@dataclass(frozen=True)
class Token:
    """A freshly initialised SoftHSM2 token."""

    module: str
    label: str
    pin: str
    pin_file: Path
    conf: Path
    directory: Path

    def flags(self) -> list[str]:
        """The ``ssot-auth`` flags that select this token."""
        return [
            "--key-store",
            "pkcs11",
            "--pkcs11-module",
            self.module,
            "--pkcs11-token-label",
            self.label,
            "--pkcs11-pin-file",
            str(self.pin_file),
        ]

    def objects(self, **attributes: object) -> list[Any]:
        """The objects matching ``attributes`` (python-pkcs11 ``Attribute`` names), read
        under the module lock the servers in this process hold (SoftHSM2 runs
        without locking of its own here)."""
        import pkcs11

        from auth_server.hsm import module_lock

        wanted = {pkcs11.Attribute[name]: value for name, value in attributes.items()}
        with module_lock(self.module):
            token = pkcs11.lib(self.module).get_token(token_label=self.label)
            try:
                session = token.open(user_pin=self.pin, rw=True)
            except pkcs11.UserAlreadyLoggedIn:
                session = token.open(rw=True)
            return list(session.get_objects(wanted))

    def read(self, obj: Any, attribute: str) -> Any:
        """An attribute of an object from :meth:`objects`, under the module lock."""
        import pkcs11

        from auth_server.hsm import module_lock

        with module_lock(self.module):
            return obj[pkcs11.Attribute[attribute]]


def make_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Token:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    module = module_path()
    assert module is not None
    directory = tmp_path / "softhsm-tokens"
    directory.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {directory}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    label = "ssot-" + uuid.uuid4().hex[:8]
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ],
        check=True,
        capture_output=True,
    )
    import pkcs11

    # SoftHSM2 reads SOFTHSM2_CONF and its tokens at C_Initialize.
    pkcs11.lib(module).reinitialize()
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    return Token(
        module=module, label=label, pin=PIN, pin_file=pin_file, conf=conf, directory=directory
    )
