"""``python -m bench``: run the whole suite, print the table, write RESULTS.md and JSON.

Owns the command line (full mode, the default, and ``--smoke``), installing the Debian tools
when missing, the order of the phases (paths in rounds, profiles, syscall census, mesh-size
independence, control-plane scale) and stopping every process it started, by PID, whatever
happens.
"""

from __future__ import annotations

import argparse
import compileall
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import LoadError
from bench.procs import ROOT, ProcessGroup, rss_kib
from bench.profiling import py_spy_path, read_collapsed, start_py_spy
from bench.report import machine_description, render_markdown, render_table, targets, versions
from bench.rounds import LoadSettings, drive, run_rounds, summarize
from bench.scale import ScaleSettings, control_plane_scale, mesh_size_independence
from bench.syscalls import strace_available, syscall_census
from bench.topology import PathSpec, Topology, build_topology

__all__ = ["main", "run"]

TOOLS = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client"}
MESH_METHOD = (
    "A real control plane; a real `backend` sidecar in front of the nginx backend; every other "
    "service is a `Service` resource applied through the API plus one simulated sidecar "
    "(bench/fleet.py: a real mTLS stream with a real certificate from the mesh CA and an inbound "
    "port, so the service is registered *with an endpoint*). A fresh real sidecar `probe` "
    "(Service `calls: [backend]`) is started and loaded (wrk, 10 connections, Host backend) at "
    "the small mesh size; the mesh is grown; a second fresh `probe` is started and loaded; the "
    "first is loaded again. RSS is VmRSS after each load."
)
SCALE_METHOD = (
    "A fresh control plane; simulated sidecars (bench/fleet.py, worker processes, one real mTLS "
    "stream each with a real certificate per service from the mesh CA; every snapshot ACKed on "
    "arrival) spread over services, all subscribed to `target`. A change is applied through the "
    "config API; latency is from just before the API call to each sidecar's receipt (and "
    "immediate ACK) of the new snapshot; `/v1/proxies` is then checked for every ACK."
)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_tools() -> None:
    """Install haproxy, nginx, wrk and h2load with scripts/ensure-debian-packages if missing."""
    missing = [
        pkg
        for tool, pkg in TOOLS.items()
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None
    ]
    if missing:
        _log(f"installing {' '.join(missing)}")
        subprocess.run([str(ROOT / "scripts" / "ensure-debian-packages"), *missing], check=True)


def _spec_json(spec: PathSpec) -> dict[str, Any]:
    return {
        "key": spec.key,
        "number": spec.number,
        "label": spec.label,
        "group": spec.group,
        "protocol": spec.protocol,
        "url": spec.url,
        "host": spec.host,
        "procs": [p.name for p in spec.procs],
        "available": spec.available,
        "reason": spec.reason,
    }


def _stop_spy(spy: subprocess.Popen[bytes]) -> None:
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        spy.wait(10)


def profile_paths(
    topology: Topology, load: LoadSettings, seconds: int, workdir: Path, *, smoke: bool
) -> dict[str, Any]:
    """py-spy on the Gossamer processes of paths 4, 5 and 7 under their full load (smoke
    mode: path 4, Python frames only). The compiled data plane's functions appear only in
    native profiles (``CPyDef_...``), so paths 5 and 7 are profiled with native frames."""
    if py_spy_path() is None:
        return {"py-spy": {"error": "py-spy is not installed (make bench installs it)"}}
    out: dict[str, Any] = {}
    plans = [
        ("gossamer", False),
        ("gossamer", True),
        ("gossamer-pair", True),
        ("h2-gossamer", True),
    ]
    if smoke:
        plans = plans[:1]
    for key, native in plans:
        spec = topology.path(key)
        if spec is None or not spec.available:
            continue
        spies = []
        for proc in spec.procs:
            path = workdir / f"profile-{key}-{proc.name}{'-native' if native else ''}.txt"
            spies.append((proc.name, start_py_spy(proc.pid, seconds, path, native=native), path))
        try:
            drive(spec, load, seconds)
        except LoadError as exc:
            out[f"{key} (load failed)"] = {"error": str(exc)[:300]}
        for name, spy, path in spies:
            _stop_spy(spy)
            what = f"path {spec.number} under full load, " + (
                "native frames (process paused per sample)"
                if native
                else "Python frames, --nonblocking: compiled modules are not seen"
            )
            title = f"{name} (path {spec.number}{', native' if native else ''})"
            if not path.exists():
                stderr = spy.stderr.read().decode(errors="replace") if spy.stderr else ""
                out[title] = {"error": f"py-spy wrote nothing: {stderr[-300:]}"}
                continue
            profile = read_collapsed(path, 12)
            out[title] = {
                "samples": profile.samples,
                "what": what,
                "top_self": [asdict(f) for f in profile.top_self],
                "top_total": [asdict(f) for f in profile.top_total],
            }
    return out


def _sidecar_figures(
    topology: Topology, summary: dict[str, Any], idle: dict[str, int], mesh: dict[str, Any] | None
) -> tuple[dict[str, int], dict[str, float]]:
    rss: dict[str, int] = {}
    cpu: dict[str, float] = {}
    for spec in topology.paths:
        if not spec.gossamer or not spec.available:
            continue
        data = summary["paths"][spec.key]
        for proc in spec.procs:
            rss[proc.name] = max(
                rss.get(proc.name, 0),
                idle.get(proc.name, 0),
                data["rss_after_kib"].get(proc.name, 0),
                data.get("rss_peak_kib", {}).get(proc.name, 0),
            )
            value = data["cpu_us_per_req_by_proc"].get(proc.name)
            if value is not None and spec.protocol != "bulk":
                cpu[f"{proc.name} (path {spec.number})"] = value
    if mesh:
        rss["meshsize-probe (mesh of small)"] = mesh["rss_small_kib"]
        rss["meshsize-probe (mesh of large)"] = mesh["rss_large_kib"]
    return rss, cpu


def compile_bytecode() -> None:
    """Bring the sources' bytecode up to date, as an install does (``make bench`` does too).

    The sidecars run as installed, loading ``.pyc`` files. A source edited since its last
    compile, in an environment that does not write bytecode (``PYTHONDONTWRITEBYTECODE``),
    would be compiled again in every process that imports it, and what the compiler
    allocated stays in the heap: 0.5 MiB more RSS per sidecar, measured (bench/RESULTS.md,
    "Session 13")."""
    compileall.compile_dir(str(ROOT / "src"), quiet=1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every phase; return the results dictionary."""
    started = time.monotonic()
    load = LoadSettings(
        rounds=args.rounds,
        duration=args.duration,
        duration_1c=args.duration_1c,
        warmup=args.warmup,
        connections=args.connections,
        bulk_connections=args.bulk_connections,
        h2_clients=args.h2_clients,
        h2_streams=args.h2_streams,
    )
    scale = ScaleSettings(
        mesh_small=args.mesh_small,
        mesh_large=args.mesh_large,
        cp_proxies=args.cp_proxies,
        cp_services=args.cp_services,
        changes=args.changes,
        probe_seconds=args.duration_1c,
    )
    workdir = Path(tempfile.mkdtemp(prefix="gossamer-bench-"))
    results: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "command": "python -m bench " + " ".join(args.argv) if args.argv else "python -m bench",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            **machine_description(),
            "load average (1, 5, 15 min) at the start": _loadavg(),
        },
        "versions": versions(),
        "settings": {
            **asdict(load),
            **asdict(scale),
            "bulk_file_bytes": args.bulk_bytes,
            "profile_seconds": args.profile_seconds,
        },
        "workdir": str(workdir),
        "mesh_method": MESH_METHOD,
        "scale_method": SCALE_METHOD,
        "notes": [],
    }
    paths_group = ProcessGroup(workdir)
    scale_group = ProcessGroup(workdir)
    compile_bytecode()
    try:
        _log(f"starting the backend, peers, control plane and sidecars in {workdir}")
        topology = build_topology(paths_group, bulk_bytes=args.bulk_bytes)
        for spec in topology.paths:
            if not spec.available:
                _log(f"path {spec.number} {spec.key}: not available: {spec.reason}")
        idle = {p.name: rss_kib(p.pid) for s in topology.paths if s.available for p in s.procs}
        results["path_specs"] = [_spec_json(s) for s in topology.paths]
        results["idle_rss_kib"] = idle
        failures: list[str] = []
        samples = run_rounds(topology.paths, load, _log, failures)
        results["notes"] += [f"measurement failed: {f}" for f in failures]
        summary = summarize(topology.paths, samples)
        results["summary"] = summary
        if args.profile_seconds > 0:
            _log("profiling the sidecars under load (py-spy)")
            results["profiles"] = profile_paths(
                topology, load, args.profile_seconds, workdir, smoke=args.smoke
            )
        if args.syscall_seconds > 0 and strace_available():
            _log("counting system calls per request (strace -c)")
            census: dict[str, Any] = {}
            keys = (
                ["gossamer"]
                if args.smoke
                else ["haproxy", "gossamer", "haproxy-pair", "gossamer-pair"]
            )
            for key in keys:
                traced = topology.path(key)
                if traced is not None and traced.available:
                    try:
                        census[key] = syscall_census(
                            traced, args.syscall_seconds, workdir, args.connections
                        )
                    except LoadError as exc:
                        census[key] = {"error": str(exc)[:300]}
            results["syscalls"] = census
        backend_port = topology.backend.port
        paths_group.stop([p for p in paths_group.procs if p is not topology.backend.proc])
        mesh = None
        if args.mesh_large > 0:
            _log(f"mesh-size independence: {scale.mesh_small} vs {scale.mesh_large} services")
            mesh = mesh_size_independence(scale_group, backend_port, scale, _log)
            results["mesh_size"] = mesh
            scale_group.stop_all()
        if args.cp_proxies > 0:
            _log(f"control plane with {scale.cp_proxies} simulated sidecars")
            profile_out = (
                workdir / "profile-control-plane.txt"
                if (args.profile_seconds > 0 and py_spy_path())
                else None
            )
            results["cp_scale"] = control_plane_scale(scale_group, scale, _log, profile_out)
            if profile_out is not None and profile_out.exists():
                profile = read_collapsed(profile_out, 12)
                results.setdefault("profiles", {})["control plane (connect + changes)"] = {
                    "samples": profile.samples,
                    "what": f"{scale.cp_proxies} simulated sidecars connecting, then "
                    f"{scale.changes} changes; Python frames, --nonblocking",
                    "top_self": [asdict(f) for f in profile.top_self],
                    "top_total": [asdict(f) for f in profile.top_total],
                }
        rss, cpu = _sidecar_figures(topology, summary, idle, mesh)
        results["sidecar_rss_kib"] = rss
        results["sidecar_cpu_us_per_req"] = cpu
    finally:
        scale_group.stop_all()
        paths_group.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    results["machine"]["load average (1, 5, 15 min) at the end"] = _loadavg()
    return results


def _loadavg() -> str:
    """The machine's load average: other work on a shared machine shows up here."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny loads and sizes: checks that everything runs (seconds)",
    )
    parser.add_argument("--output", type=Path, help="write RESULTS.md here")
    parser.add_argument("--json", type=Path, help="write the raw results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get missing tools")
    for name, full, smoke, text in (
        ("rounds", 5, 1, "interleaved rounds"),
        ("duration", 5, 1, "seconds of each load at full concurrency"),
        ("duration-1c", 2, 1, "seconds of each one-connection load"),
        ("warmup", 1, 0, "unmeasured seconds before each path in round 1"),
        ("connections", 50, 8, "wrk connections"),
        ("bulk-connections", 4, 2, "wrk connections for bulk transfers"),
        ("h2-clients", 10, 2, "h2load -c"),
        ("h2-streams", 10, 2, "h2load -m"),
        ("bulk-bytes", 64 * 1024 * 1024, 1024 * 1024, "size of the bulk file"),
        ("mesh-small", 5, 5, "services in the small mesh"),
        ("mesh-large", 5000, 12, "services in the large mesh (0: skip)"),
        ("cp-proxies", 1000, 20, "simulated sidecars for the control plane test (0: skip)"),
        ("cp-services", 100, 4, "services they belong to"),
        ("changes", 3, 1, "config changes to time"),
        ("profile-seconds", 6, 1, "py-spy seconds per profiled path (0: skip)"),
        ("syscall-seconds", 2, 1, "strace -c seconds per path (0: skip)"),
    ):
        parser.add_argument(
            f"--{name}", type=int, default=None, help=f"{text} (default {full}, smoke {smoke})"
        )
        parser.set_defaults(**{f"_{name.replace('-', '_')}_defaults": (full, smoke)})
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    for key, value in list(vars(args).items()):
        if key.startswith("_") and key.endswith("_defaults"):
            name = key[1 : -len("_defaults")]
            if getattr(args, name) is None:
                setattr(args, name, value[1] if args.smoke else value[0])
    args.argv = list(argv)
    if args.output is None and not args.smoke:
        args.output = ROOT / "bench" / "RESULTS.md"
    if args.json is None and not args.smoke:
        args.json = ROOT / "bench" / "results.json"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.no_install:
        ensure_tools()
    results = run(args)
    print()
    print(render_table(results))
    print()
    for target, measured, status in targets(results):
        print(f"  {status:>28}  {target}: {measured}")
    if args.output is not None:
        args.output.write_text(render_markdown(results))
        _log(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str))
        _log(f"wrote {args.json}")
    return 0
