"""The committed generated modules match their .proto sources."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_modules_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    generated = sorted(p.name for p in (tmp_path / "protos").iterdir())
    committed = sorted(p.name for p in (ROOT / "protos").glob("*_pb2*"))
    assert generated == committed
    _, mismatch, errors = filecmp.cmpfiles(
        tmp_path / "protos", ROOT / "protos", generated, shallow=False
    )
    assert (mismatch, errors) == ([], []), "run: python scripts/gen_protos.py"
