"""Regenerate ``sidecar/_proto/`` from every ``.proto`` under ``protos/``.

Run ``.venv/bin/python scripts/gen_protos.py`` to rewrite the checked-in code, or with
``--check`` to regenerate into a temporary directory and exit 1 listing the files that differ.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

__all__ = ["PROTO_PACKAGE", "check", "generate", "main"]

_ROOT = Path(__file__).resolve().parent.parent
_PROTO_SRC = _ROOT / "protos"
_OUT_DIR = _ROOT / "sidecar" / "_proto"

#: The importable package the generated modules live in.
PROTO_PACKAGE = "sidecar._proto"

_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")

_INIT_TEXT = '''"""Generated protobuf and gRPC modules for the protos under ``protos/``.

Do not edit: produced by ``scripts/gen_protos.py``; a test fails when it drifts.
"""
'''


def _plugin(name: str) -> str:
    """Find a protoc plugin beside this interpreter first, so an unactivated venv works."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extras (mypy-protobuf)")
    return found


def _proto_files(src: Path) -> list[str]:
    return sorted(p.relative_to(src).as_posix() for p in src.rglob("*.proto"))


def _module_names(protos: Sequence[str]) -> list[str]:
    """Dotted module names protoc gives each proto's ``_pb2`` and ``_pb2_grpc`` modules."""
    names: list[str] = []
    for proto in protos:
        stem = proto[: -len(".proto")].replace("/", ".")
        names.extend((f"{stem}_pb2", f"{stem}_pb2_grpc"))
    return names


def _rewrite_imports(text: str, modules: Sequence[str]) -> str:
    """Turn protoc's top-level imports of sibling generated modules into package imports."""
    for module in modules:
        parent, _, leaf = module.rpartition(".")
        target = f"{PROTO_PACKAGE}.{parent}" if parent else PROTO_PACKAGE
        # ``import inference_pb2 as inference__pb2`` / ``import inference_pb2``
        text = re.sub(
            rf"^(\s*)import {re.escape(module)}\b",
            rf"\1from {target} import {leaf}",
            text,
            flags=re.MULTILINE,
        )
        if parent:
            # ``from pkg import leaf_pb2 as ...`` for protos in subdirectories
            text = re.sub(
                rf"^(\s*)from {re.escape(parent)} import {re.escape(leaf)}\b",
                rf"\1from {target} import {leaf}",
                text,
                flags=re.MULTILINE,
            )
    return text


def _run_protoc(src: Path, out: Path, protos: Sequence[str]) -> None:
    # Imported here so ``--help`` works without grpcio-tools installed.
    from grpc_tools import protoc  # type: ignore[import-untyped]

    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def generate(out: Path = _OUT_DIR, src: Path = _PROTO_SRC) -> list[Path]:
    """Generate every proto under ``src`` into ``out``; return the files written, sorted.

    Stale generated modules in ``out`` (whose proto was removed) are deleted.
    """
    protos = _proto_files(src)
    if not protos:
        raise SystemExit(f"no .proto files under {src}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gen_protos_") as tmp:
        staging = Path(tmp)
        _run_protoc(src, staging, protos)
        modules = _module_names(protos)
        produced: dict[Path, str] = {}
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                text = _rewrite_imports(path.read_text(encoding="utf-8"), modules)
                produced[path.relative_to(staging)] = text
    # Every directory up to ``out`` needs an ``__init__.py``: setuptools does not descend
    # into directories without one, so ``protos/shadowcar/v1/*.proto`` would not ship.
    packages = {parent for p in produced for parent in p.parents}
    for rel in sorted(packages):
        init = rel / "__init__.py"
        produced.setdefault(init, _INIT_TEXT)

    for stale in sorted(out.rglob("*")):
        rel = stale.relative_to(out)
        if stale.is_file() and stale.name.endswith(_GENERATED_SUFFIXES) and rel not in produced:
            stale.unlink()
    written: list[Path] = []
    for rel, text in sorted(produced.items()):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        written.append(target)
    return written


def _relevant(root: Path) -> set[Path]:
    return {
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and (p.name == "__init__.py" or p.name.endswith(_GENERATED_SUFFIXES))
    }


def check(out: Path = _OUT_DIR, src: Path = _PROTO_SRC) -> list[str]:
    """Regenerate into a temporary directory; return the paths (relative to ``out``) that differ.

    A file differs when its content changed, it would be created, or it would be deleted.
    """
    with tempfile.TemporaryDirectory(prefix="gen_protos_check_") as tmp:
        fresh = Path(tmp)
        generate(fresh, src)
        expected = _relevant(fresh)
        actual = _relevant(out) if out.is_dir() else set()
        differing = {
            rel
            for rel in expected & actual
            if not filecmp.cmp(fresh / rel, out / rel, shallow=False)
        }
        differing |= expected ^ actual
    return sorted(rel.as_posix() for rel in differing)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: regenerate, or with ``--check`` report drift and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temp dir and exit 1 listing files that differ",
    )
    args = parser.parse_args(argv)
    if args.check:
        differing = check()
        if differing:
            print("generated protos are out of date; run scripts/gen_protos.py:", file=sys.stderr)
            for rel in differing:
                print(f"  sidecar/_proto/{rel}", file=sys.stderr)
            return 1
        print("generated protos are up to date")
        return 0
    for path in generate():
        print(path.relative_to(_ROOT).as_posix())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
