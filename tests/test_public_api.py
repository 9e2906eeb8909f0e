"""Every package's public face imports, and the verifier side stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["interceptors", "auth_server", "resource_server"])
def test_every_name_in_all_imports(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, f"{package} exports nothing"
    for name in module.__all__:
        assert getattr(module, name) is not None
    # ruff's RUF022 keeps __all__ sorted; here we check nothing public is missing from it.
    public_classes = {
        n
        for n, v in vars(module).items()
        if isinstance(v, type) and not n.startswith("_") and v.__module__.startswith(package)
    }
    assert public_classes <= set(module.__all__)


def test_interceptors_import_nothing_that_could_sign_or_store() -> None:
    code = (
        "import sys, interceptors, resource_server;"
        "bad = [m for m in ('auth_server', 'sqlalchemy', 'argon2', 'aiohttp') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
