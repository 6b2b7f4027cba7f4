"""``python -m gossamer.build_native``: build Gossamer's native parts (see ``gossamer.native``).

For each part (the HTTP/2 header collector, the HTTP/1.1 plain-message scanner):

- the shared object: its C file compiled with the system C compiler (``$CC``, else ``cc``).
  The files need no library or Python headers, so a compiler is all it takes. Without one
  it says so, and the part's work is done in Python instead;
- the prebuilt declarations: the part's cffi declarations written by cffi as an out-of-line
  ABI module (plain Python, no compiler), so a sidecar does not parse C when it starts;
- for a part that has one, the CPython extension: the same C file compiled by cffi in API
  mode, which the interpreter calls without libffi. It needs the Python headers (Debian:
  python3-dev); without them the shared object serves.

It builds the JSON line encoder (``gossamer.json_lines``), a CPython extension written in C,
with the same compiler and the Python headers; without them the json module serves.

It also compiles the proxy's Python modules with mypyc (``gossamer.compiled``: the set, the
manifest, and how they are loaded). That needs mypyc (it comes with mypy, a development
dependency), a C compiler and the Python headers; without them the modules run as source. A
build whose manifest still matches every source is kept as it is.

``make`` runs this. Exit status: 0 when everything was built, 1 when something could not be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from gossamer import compiled
from gossamer.json_lines import native as json_native
from gossamer.native import NativePart
from gossamer.protocol.h2.native import PART as H2_COLLECTOR
from gossamer.protocol.native import PART as HTTP1_SCANNER

__all__ = [
    "PARTS",
    "build",
    "build_compiled",
    "build_extension",
    "build_python_extension",
    "emit_declarations",
    "extension_path",
    "main",
]

PARTS = (H2_COLLECTOR, HTTP1_SCANNER)
FLAGS = ("-O2", "-Wall", "-Wextra", "-shared", "-fPIC")


def build(part: NativePart, output: Path | None = None) -> str | None:
    """Compile ``part`` into ``output`` (default: where it is loaded from); None on success,
    else why it was not built."""
    output = output or part.library
    return _compile(part.source, output.with_suffix(".so.tmp"), output)


def build_python_extension(source: Path, output: Path) -> str | None:
    """Compile ``source``, a CPython extension module in C, into ``output``; None on
    success, else why it was not built."""
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        return f"no Python headers in {include} (install the Debian package python3-dev)"
    return _compile(source, output.with_name(output.name + ".tmp"), output, f"-I{include}")


def _compile(source: Path, partial: Path, output: Path, *extra: str) -> str | None:
    """The system C compiler on ``source`` into ``partial``, then moved to ``output`` (never
    a half-written library where it is loaded from); None on success, else why not."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (install the Debian package gcc)"
    try:
        result = subprocess.run(
            [compiler, *FLAGS, *extra, "-o", str(partial), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        return f"cannot run {compiler}: {exc.strerror or exc}"
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        return f"{compiler} failed: {result.stderr.strip() or result.returncode}"
    partial.replace(output)
    return None


def emit_declarations(part: NativePart, output: Path | None = None) -> str | None:
    """Write ``part.declared`` as cffi's out-of-line ABI module; None on success, else why not.

    The module ends with ``DECLARED``, the text it was made from: ``gossamer.native`` uses it
    only when that is still what the part declares.
    """
    output = output or part.module_path
    try:
        import cffi

        builder = cffi.FFI()
        builder.cdef(part.declared)
        builder.set_source(part.module, None)
        partial = output.with_suffix(".py.tmp")
        builder.emit_python_code(str(partial))
    except (ImportError, cffi.CDefError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    with partial.open("a", encoding="utf-8") as out:
        out.write(f"\nDECLARED = {part.declared!r}\n")
    partial.replace(output)
    return None


def extension_path(part: NativePart, directory: Path | None = None) -> Path:
    """Where ``part``'s extension module is built (next to its C file by default)."""
    assert part.extension is not None
    name = part.extension.rsplit(".", 1)[1] + str(sysconfig.get_config_var("EXT_SUFFIX"))
    return (directory or part.source.parent) / name


def build_extension(part: NativePart, directory: Path | None = None) -> str | None:
    """Compile ``part``'s C file as its API-mode extension module (into ``directory``, default
    next to the C file); None on success, else why it was not built."""
    if part.extension is None:
        return "the part has no extension"
    output = extension_path(part, directory)
    try:
        import cffi

        builder = cffi.FFI()
        builder.cdef(part.declared)
        builder.set_source(part.extension, part.source.read_text(), extra_compile_args=["-O2"])
        with tempfile.TemporaryDirectory() as tmp:
            built = Path(builder.compile(tmpdir=tmp))
            partial = output.with_name(output.name + ".tmp")
            shutil.copyfile(built, partial)
            partial.replace(output)
    except (ImportError, OSError, cffi.CDefError, cffi.VerificationError) as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
    return None


# Run by build_compiled in a fresh interpreter (mypyc and setuptools keep global state):
# argv = [output directory, temporary directory, group name, source paths...].
_MYPYC_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
out, tmp, group, *sources = sys.argv[1:]
options = ["--ignore-missing-imports", "--cache-dir", tmp + "/mypy-cache"]
setup(
    name="gossamer-compiled",
    ext_modules=mypycify(sources + options, opt_level="3", group_name=group,
                         target_dir=tmp + "/c"),
    script_args=["build_ext", "--build-lib", out, "--build-temp", tmp + "/obj"],
)
"""
COMPILED_GROUP = "gossamer.dataplane"  # mypyc's shared library: gossamer.dataplane__mypyc


def build_compiled(build_dir: Path = compiled.BUILD_DIR) -> tuple[str | None, bool]:
    """Compile ``compiled.compiled_sources()`` with mypyc into ``build_dir`` (default: where
    ``gossamer.compiled`` loads them from), with its manifest. Returns (None, built) on
    success (built False when the existing build was current), else (why not, False)."""
    root = compiled.ROOT
    if build_dir == compiled.BUILD_DIR and compiled.manifest_state()[0] == "compiled":
        return None, False
    try:
        import mypyc  # noqa: F401  (only whether it is there)
    except ImportError:
        return "mypyc is not installed (it comes with mypy: pip install mypy)", False
    sources = compiled.compiled_sources(root)
    records = {source: compiled.source_record(root.parent / source) for source in sources}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        try:
            result = subprocess.run(
                [sys.executable, "-c", _MYPYC_SETUP, str(out), tmp, COMPILED_GROUP, *sources],
                cwd=root.parent,
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as exc:
            return f"cannot run mypyc: {exc.strerror or exc}", False
        if result.returncode != 0:
            output = (result.stdout + "\n" + result.stderr).splitlines()
            lines = [line for line in output if "error" in line.lower()]
            return "mypyc failed: " + ("; ".join(lines[-3:]) or f"exit {result.returncode}"), False
        built = [path.relative_to(out).as_posix() for path in sorted(out.rglob("*.so"))]
        # gossamer/proxy/upstream.cpython-311-x86_64-linux-gnu.so -> gossamer.proxy.http1.upstream
        extensions = {file.split(".", 1)[0].replace("/", "."): file for file in built}
        manifest = {"tag": compiled.build_tag(), "sources": records, "extensions": extensions}
        (out / compiled.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        # Replace the old build as a whole: never a mix of two builds where it is loaded from.
        old = build_dir.with_name(build_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if build_dir.exists():
            build_dir.replace(old)
        shutil.move(str(out), str(build_dir))
        shutil.rmtree(old, ignore_errors=True)
    return None, True


def main() -> int:
    status = 0
    for part in PARTS:
        why = build(part)
        if why is None:
            print(f"built {part.library}")
        else:
            print(f"{part.name} not built: {why}; its work is done in Python")
            status = 1
        why = emit_declarations(part)
        if why is None:
            print(f"wrote {part.module_path}")
        else:
            print(f"{part.name}: declarations not prebuilt: {why}; they are parsed at start")
            status = 1
        if part.extension is not None:
            why = build_extension(part)
            if why is None:
                print(f"built {extension_path(part)}")
            else:
                print(f"{part.name}: extension not built: {why}; the shared object serves")
    why = build_python_extension(json_native.SOURCE, json_native.EXTENSION)
    if why is None:
        print(f"built {json_native.EXTENSION}")
    else:
        print(f"JSON line encoder not built: {why}; the json module serves")
        status = 1
    why, built = build_compiled()
    if why is None:
        print(f"{'built' if built else 'up to date:'} {compiled.BUILD_DIR} (compiled modules)")
    else:
        print(f"compiled modules not built: {why}; the modules run as source")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
