"""Choosing compiled modules (``gossamer.compiled``): a build is used only when it matches the
interpreter and every source it was made from; otherwise the source runs."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

from gossamer import compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _fake_build(tmp_path: Path) -> tuple[Path, Path]:
    """A package tree with every compiled source, and a build of it (empty extension files
    stand in for the compiled ones: only their presence is checked)."""
    root = tmp_path / "src" / "gossamer"
    build = root / "_compiled"
    sources: dict[str, dict[str, int | str]] = {}
    extensions: dict[str, str] = {}
    for relative in compiled.COMPILED:
        source = root / relative
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# {relative}\n")
        name = f"gossamer/{relative}"
        sources[name] = compiled.source_record(source)
        extension = build / name.replace(".py", SUFFIX)
        extension.parent.mkdir(parents=True, exist_ok=True)
        extension.write_bytes(b"")
        extensions[compiled.module_name(name)] = extension.relative_to(build).as_posix()
    manifest = {"tag": compiled.build_tag(), "sources": sources, "extensions": extensions}
    (build / compiled.MANIFEST).write_text(json.dumps(manifest))
    return root, build


def test_a_current_build_is_used_for_every_compiled_module(tmp_path: Path) -> None:
    root, build = _fake_build(tmp_path)
    state, modules = compiled.manifest_state(build, root)
    assert state == "compiled"
    assert set(modules) == {compiled.module_name(s) for s in compiled.compiled_sources(root)}
    assert "gossamer.proxy.http1.downstream" in modules
    assert "gossamer.proxy.process.main" not in modules  # start-up code stays source


def test_an_edited_source_makes_the_whole_build_stale(tmp_path: Path) -> None:
    root, build = _fake_build(tmp_path)
    (root / "proxy" / "http1" / "upstream.py").write_text("# edited\n")
    state, modules = compiled.manifest_state(build, root)
    assert state == "stale: gossamer/proxy/http1/upstream.py changed since the build"
    assert modules == {}


def test_a_touched_but_unchanged_source_keeps_the_build(tmp_path: Path) -> None:
    """A checkout that rewrites a file with the same bytes changes its mtime, not its hash."""
    root, build = _fake_build(tmp_path)
    source = root / "proxy" / "http1" / "upstream.py"
    os.utime(source, ns=(1, 1))
    assert compiled.manifest_state(build, root)[0] == "compiled"
    source.write_text("# proxy/upstreaM.py\n")  # same size, other bytes
    state = compiled.manifest_state(build, root)[0]
    assert state.startswith("stale: gossamer/proxy/http1/upstream")


def test_a_build_for_another_interpreter_is_stale(tmp_path: Path) -> None:
    root, build = _fake_build(tmp_path)
    manifest = json.loads((build / compiled.MANIFEST).read_text())
    manifest["tag"] = "cpython-312 3.12.0 .cpython-312-x86_64-linux-gnu.so"
    (build / compiled.MANIFEST).write_text(json.dumps(manifest))
    state, modules = compiled.manifest_state(build, root)
    assert state.startswith("stale: built for cpython-312") and modules == {}


def test_a_missing_extension_or_manifest_is_not_used(tmp_path: Path) -> None:
    root, build = _fake_build(tmp_path)
    next(build.rglob(f"*{SUFFIX}")).unlink()
    state, modules = compiled.manifest_state(build, root)
    assert state.startswith("stale: ") and "is missing" in state and modules == {}
    (build / compiled.MANIFEST).unlink()
    assert compiled.manifest_state(build, root) == ("not built", {})
    (build / compiled.MANIFEST).write_text("{not json")
    assert compiled.manifest_state(build, root)[0].startswith("stale: unreadable manifest")


def test_the_finder_answers_only_for_compiled_modules(tmp_path: Path) -> None:
    root, build = _fake_build(tmp_path)
    _, modules = compiled.manifest_state(build, root)
    finder = compiled.CompiledFinder(modules)
    spec = finder.find_spec("gossamer.proxy.http1.downstream")
    assert spec is not None and spec.origin == str(modules["gossamer.proxy.http1.downstream"])
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    assert finder.find_spec("gossamer.proxy.process.main") is None
    assert finder.find_spec("json") is None


def test_the_switch_turns_compiled_modules_off() -> None:
    code = (
        "import gossamer.compiled as c, gossamer.proxy.http1.downstream as d; "
        "print(c.STATE, d.__file__)"
    )
    env = {**os.environ, "GOSSAMER_COMPILED": "off"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "off"
    assert out[1].endswith("downstream.py")
