"""Regenerate the gRPC stubs in proto/ from the .proto files there.

    python scripts/gen_protos.py            # write the stubs
    python scripts/gen_protos.py --check    # exit 1 when the committed stubs are stale

protoc sees proto/ under the virtual path `vaeserve/proto`, so the generated modules import
each other as `vaeserve.proto...` and work from the installed package.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
VIRTUAL = "vaeserve/proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto file, writing stubs under out_dir/vaeserve/proto/."""
    include = Path(protoc.__file__).parent / "_proto"
    sources = [f"{VIRTUAL}/{p.relative_to(PROTO_DIR).as_posix()}" for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{VIRTUAL}={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    root = out_dir / VIRTUAL
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generated = generate(out)
        stale = [
            rel
            for rel in generated
            if not (PROTO_DIR / rel).exists()
            or not filecmp.cmp(out / VIRTUAL / rel, PROTO_DIR / rel, shallow=False)
        ]
        if args.check:
            for rel in stale:
                print(f"stale: proto/{rel}", file=sys.stderr)
            if stale:
                print("run: python scripts/gen_protos.py", file=sys.stderr)
            return 1 if stale else 0
        for rel in generated:
            (PROTO_DIR / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / VIRTUAL / rel, PROTO_DIR / rel)
        for rel in generated:
            for parent in rel.parents[:-1]:
                init = PROTO_DIR / parent / "__init__.py"
                if not init.exists():
                    init.write_text("")
        print(f"wrote {len(generated)} files under proto/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
