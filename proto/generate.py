"""Generate the Python stubs in apimachinery/pb from the .proto files in proto/.

The .proto files are the one source; the stubs are committed so that an install
needs no protoc, and tests/test_proto_stubs.py regenerates them and fails if
they differ from what is committed.

    python proto/generate.py            # write apimachinery/pb
    python proto/generate.py --out DIR  # write elsewhere (the test does this)
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tempfile

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_DIR = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_DIR.parent / "apimachinery" / "pb"
PACKAGE = "apimachinery.pb"


def generate(out: pathlib.Path) -> None:
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(pathlib.Path(tmp).iterdir()):
            text = path.read_text()
            # protoc writes flat imports ("import agent_pb2 as agent__pb2" where
            # one .proto imports another, "from agent_pb2 import *" for an
            # `import public`); make them package imports so the stubs live
            # inside apimachinery.pb.
            text = re.sub(r"^import (\w+_pb2) as", rf"from {PACKAGE} import \1 as", text, flags=re.M)
            text = re.sub(r"^from (\w+_pb2) import", rf"from {PACKAGE}.\1 import", text, flags=re.M)
            (out / path.name).write_text(text)
        init = out / "__init__.py"
        init.write_text('"""Generated gRPC stubs; regenerate with `python proto/generate.py`."""\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
