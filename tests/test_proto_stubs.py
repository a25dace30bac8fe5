"""The committed stubs in apimachinery/pb are exactly what proto/generate.py makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_stubs_match_the_proto_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(tmp_path)], check=True)
    committed = REPO / "apimachinery" / "pb"
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(p.name for p in committed.iterdir() if p.name != "__pycache__")
    for name in generated:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), (
            f"apimachinery/pb/{name} is stale: run `python proto/generate.py`")
