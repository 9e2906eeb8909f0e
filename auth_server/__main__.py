"""``python -m auth_server``: the ``ssot-auth`` command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from auth_server.cli import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
