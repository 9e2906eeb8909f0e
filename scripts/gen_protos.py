"""Regenerate the Python modules under protos/ from their .proto sources.

Run from anywhere: ``python scripts/gen_protos.py``. protoc runs from the
repository root with ``-I .`` so the modules import as ``from protos import
auth_pb2``. ``--out DIR`` writes into DIR instead (the drift test uses it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ("protos/auth.proto", "protos/resource.proto")


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev-only dependency

    # mypy-protobuf's plugins write typed stubs for the message and the
    # service modules; they live beside this interpreter.
    bindir = Path(sys.executable).parent

    args = [
        "grpc_tools.protoc",
        "-I",
        str(ROOT),
        f"--python_out={out}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--grpc_python_out={out}",
        *(str(ROOT / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    ns = parser.parse_args(argv)
    generate(ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
