"""The compiled data plane: the proxy's modules built to C by mypyc, and loading them.

The sidecar's code is ordinary, fully typed Python. ``python -m gossamer.build_native`` (which
``make`` runs) also compiles the modules on its data path (``COMPILED``) with mypyc into
extension modules under ``gossamer/_compiled/``, with a manifest naming the source each was
built from (its SHA-256, size and mtime). The compiled code does what the source says, with
native attribute access and direct calls instead of the interpreter's dispatch: about a third
less Python time per request.

``install`` (run when ``gossamer`` is imported) puts a finder first on ``sys.meta_path`` that
loads the compiled module in place of the source, but only when the build matches this
interpreter and every compiled module's source is unchanged since the build: an edited file
is never shadowed by stale compiled code (the whole set falls back to the source until the
next build, since compiled classes may only subclass compiled classes). Without a build (no C
compiler, no Python headers, no mypyc) the same source runs as it is.
``GOSSAMER_COMPILED=off`` turns compiled modules off; ``STATE`` says what was chosen.

Compiled code differs from the source in what the source's types already promise: a value of
the wrong type is a ``TypeError`` where it arrives (so calls whose stubs do not match uvloop go
through ``gossamer.proxy.loop_calls``), compiled classes cannot be monkeypatched or subclassed
by source classes, and a local is released after its last use (so an object C points to must
be owned by what is passed to C). The unit tests, which use test doubles, run the source; the
tests that start sidecar processes run the build.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

from gossamer.native import env_switched_off

__all__ = [
    "BUILD_DIR",
    "COMPILED",
    "MANIFEST",
    "ROOT",
    "STATE",
    "SWITCH",
    "CompiledFinder",
    "build_tag",
    "compiled_sources",
    "install",
    "manifest_state",
    "module_name",
    "source_matches",
    "source_record",
]

ROOT = Path(__file__).resolve().parent  # the gossamer package directory
BUILD_DIR = ROOT / "_compiled"
MANIFEST = "manifest.json"
SWITCH = "GOSSAMER_COMPILED"
# The modules on the per-request, per-stream and per-chunk paths, relative to the package.
# Start-up, configuration, the control-plane client, the admin server and the worker
# supervisor stay source: they gain nothing from compiling and use what compiled classes do
# not allow (pickled frozen dataclasses, duck-typed test doubles).
COMPILED = (
    "audit_chain.py",
    "protocol/h2/header_arrays.py",
    "protocol/h2/session.py",
    "protocol/http1.py",
    "protocol/plain.py",
    "protocol/scanner.py",
    "proxy/accepted.py",
    "proxy/h2/connection.py",
    "proxy/h2/downstream.py",
    "proxy/h2/headers.py",
    "proxy/h2/limits.py",
    "proxy/h2/mirror.py",
    "proxy/h2/plan.py",
    "proxy/h2/runtime.py",
    "proxy/h2/stats.py",
    "proxy/h2/stream.py",
    "proxy/h2/upstream.py",
    "proxy/http1/downstream.py",
    "proxy/http1/exchange.py",
    "proxy/http1/inbound.py",
    "proxy/http1/mirror.py",
    "proxy/http1/outbound.py",
    "proxy/http1/sink.py",
    "proxy/http1/upstream.py",
    "proxy/observe/access_log.py",
    "proxy/observe/audit_spool.py",
    "proxy/observe/metrics.py",
    "proxy/observe/timestamps.py",
    "proxy/observe/trace_context.py",
    "proxy/pipeline/access_log.py",
    "proxy/pipeline/audit.py",
    "proxy/pipeline/authenticate.py",
    "proxy/pipeline/authorize.py",
    "proxy/pipeline/balancer.py",
    "proxy/pipeline/call.py",
    "proxy/pipeline/concrete.py",
    "proxy/pipeline/inbound.py",
    "proxy/pipeline/outbound.py",
    "proxy/pipeline/retries.py",
    "proxy/pipeline/slots.py",
    "proxy/pipeline/tap.py",
    "proxy/pipeline/tracing.py",
    "proxy/pipeline/user_filters.py",
    "proxy/resilience/budget.py",
    "proxy/resilience/fields.py",
    "proxy/resilience/limits.py",
    "proxy/resilience/outlier.py",
    "proxy/resilience/ratelimit.py",
    "proxy/resilience/retry.py",
    "proxy/snapshot/authorization.py",
    "proxy/snapshot/http_rules.py",
    "proxy/snapshot/jwt_rules.py",
    "proxy/snapshot/service_policy.py",
    "proxy/snapshot/table.py",
    "proxy/state.py",
    "proxy/tcp/relay.py",
    "proxy/tcp/tls_stream.py",
)

# "compiled" (in use), "off" (GOSSAMER_COMPILED=off), "not built", or "stale: <why>".
STATE = "not built"


def compiled_sources(root: Path = ROOT) -> list[str]:
    """The source files mypyc compiles, as ``gossamer/...`` paths relative to ``root.parent``."""
    return [f"{root.name}/{relative}" for relative in COMPILED]


def source_record(path: Path) -> dict[str, int | str]:
    """What the manifest keeps of a source: its SHA-256, and its size and mtime, which let a
    start-up skip hashing (and importing ``hashlib``, 0.7 MiB) while the file is untouched."""
    import hashlib

    stat = path.stat()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def source_matches(path: Path, record: dict[str, int | str]) -> bool:
    """Whether ``path`` still holds what ``record`` was made from (OSError if it is gone)."""
    stat = path.stat()
    if stat.st_size != record.get("size"):
        return False
    if stat.st_mtime_ns == record.get("mtime_ns"):
        return True
    import hashlib  # touched (a checkout, a save without change): compare the content

    return hashlib.sha256(path.read_bytes()).hexdigest() == record.get("sha256")


def build_tag() -> str:
    """What a build must match to be loaded: the interpreter and its extension ABI."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return f"{sys.implementation.cache_tag} {sys.version.split()[0]} {suffix}"


def module_name(source: str) -> str:
    """``gossamer/proxy/downstream.py`` -> ``gossamer.proxy.http1.downstream``."""
    return source.removesuffix(".py").replace("/", ".")


def manifest_state(
    build_dir: Path = BUILD_DIR, root: Path = ROOT
) -> tuple[str, dict[str, Path]]:
    """("compiled", module name -> extension file) when the build in ``build_dir`` can be
    used; otherwise (why not, {})."""
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return "not built", {}
    except (OSError, ValueError) as exc:
        return f"stale: unreadable manifest ({exc})", {}
    if manifest.get("tag") != build_tag():
        return f"stale: built for {manifest.get('tag')}, running {build_tag()}", {}
    modules: dict[str, Path] = {}
    sources: dict[str, dict[str, int | str]] = manifest.get("sources", {})
    if sorted(sources) != sorted(compiled_sources(root)):
        return "stale: the set of compiled modules changed", {}
    for source, record in sources.items():
        path = root.parent / source
        try:
            if not isinstance(record, dict) or not source_matches(path, record):
                return f"stale: {source} changed since the build", {}
        except OSError:
            return f"stale: {source} is missing", {}
    extensions: dict[str, str] = manifest.get("extensions", {})
    for name, file in extensions.items():
        path = build_dir / file
        if not path.is_file():
            return f"stale: {file} is missing", {}
        modules[name] = path
    if set(map(module_name, sources)) - set(modules):
        return "stale: the manifest lacks an extension", {}
    return "compiled", modules


class CompiledFinder:
    """Finds the compiled extension for each module of the build (a ``sys.meta_path``
    finder); every other module is left to the usual finders."""

    def __init__(self, modules: dict[str, Path]) -> None:
        self.modules = modules

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.modules.get(name)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(name, str(file))
        return importlib.util.spec_from_file_location(name, file, loader=loader)


def install() -> str:
    """Load compiled modules from now on, if a usable build exists; returns ``STATE``."""
    global STATE
    if env_switched_off(SWITCH):
        STATE = "off"
        return STATE
    STATE, modules = manifest_state()
    if modules and not any(isinstance(f, CompiledFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, CompiledFinder(modules))
    return STATE
