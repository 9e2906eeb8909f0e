"""Every package's public face imports, and the verifier side stays light."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types

import pytest

PACKAGES = ["interceptors", "auth_server", "resource_server"]


def _public_names(module: types.ModuleType) -> list[str]:
    """Every public name of a package's face: not private, not a submodule, not a __future__."""
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name != "annotations"  # from __future__ import annotations
        and not (
            isinstance(value, types.ModuleType) and value.__name__.startswith(module.__name__ + ".")
        )
    ]


def _ruff_order(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest.

    Within a group the order is natural (``key2`` before ``key10``).
    """
    group = 0 if len(name) > 1 and name.isupper() else 1 if name[:1].isupper() else 2
    natural = [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
    return group, natural


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_exactly_the_sorted_public_names(package: str) -> None:
    # As httpx's tests/test_exported_members.py: this catches a public name missing from
    # __all__, a stale entry, and an export that is not a class.
    module = importlib.import_module(package)
    assert module.__all__ == sorted(_public_names(module), key=_ruff_order)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_imports(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, f"{package} exports nothing"
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_interceptors_import_nothing_that_could_sign_or_store() -> None:
    code = (
        "import sys, interceptors, resource_server;"
        "bad = [m for m in ('auth_server', 'sqlalchemy', 'argon2', 'aiohttp') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
