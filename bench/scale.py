"""Scale experiments: a sidecar's memory against mesh size, and the control plane under 1,000
simulated sidecars.

Mesh-size independence: a real control plane, a real ``backend`` sidecar in front of the nginx
backend, and ``Service`` resources plus one simulated sidecar (real mTLS stream, real
certificate, an inbound port) per other service, so every service is registered *with an
endpoint*. A fresh real sidecar ``probe`` routes to ``backend`` under a short load at the small
mesh size; the mesh then grows to the large size and a second fresh ``probe`` does the same;
the first one is loaded and measured again. Their RSS is compared.

Control-plane scale: N simulated sidecars (``bench/fleet.py``) spread over services, all
subscribed to ``target``; then config changes are applied through the API and the time from
just before the API call to each sidecar's receipt (and immediate ACK) of the new snapshot is
measured; ``/v1/proxies`` is then checked for every proxy's ACK. The change is an ``HTTPRoute``
for ``target`` when the control plane knows that kind and pushes it, else a ``MeshConfig`` mTLS
mode flip (every snapshot carries the mode).
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fleet import Fleet
from bench.load import run_wrk
from bench.mesh import ControlPlane, resource, start_control_plane, start_sidecar, wait_ready
from bench.procs import ProcessGroup, rss_kib
from bench.profiling import start_py_spy

__all__ = ["ScaleSettings", "control_plane_scale", "mesh_size_independence"]

APPLY_BATCH = 500
PER_WORKER = 1250
UNIQUE = 10**9  # "services" for the fleet so that proxy i is service sim-i


@dataclass(frozen=True)
class ScaleSettings:
    mesh_small: int = 5
    mesh_large: int = 5000
    cp_proxies: int = 1000
    cp_services: int = 100
    changes: int = 3
    probe_seconds: int = 2
    connect_timeout: float = 300.0


def _apply_services(cp: ControlPlane, names: list[str]) -> None:
    for start in range(0, len(names), APPLY_BATCH):
        cp.apply([resource("Service", n, {}) for n in names[start : start + APPLY_BATCH]])


def _workers(count: int) -> int:
    return max(1, min(4, -(-count // PER_WORKER)))


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def _probe_rss(port: int, pid: int, seconds: int) -> int:
    run_wrk(f"http://127.0.0.1:{port}/", connections=10, duration=seconds, host="backend")
    return rss_kib(pid)


def mesh_size_independence(
    group: ProcessGroup, backend_port: int, settings: ScaleSettings, log: Callable[[str], None]
) -> dict[str, Any]:
    """RSS of a sidecar routing to one service in a mesh of ``mesh_small`` vs ``mesh_large``."""
    cp = start_control_plane(group, "cp-meshsize")
    fleets: list[Fleet] = []
    try:
        cp.apply(
            [
                resource("Service", "backend", {}),
                resource("Service", "probe", {"calls": ["backend"]}),
            ]
        )
        server = start_sidecar(
            group, cp, "meshsize-backend", "backend", app_port=backend_port, outbound=False
        )
        wait_ready(server)
        small = max(0, settings.mesh_small - 2)  # backend and probe are services too
        large = max(small, settings.mesh_large - 2)
        _apply_services(cp, [f"sim-{i}" for i in range(small)])
        if small:
            fleets.append(
                Fleet.start(
                    f"{cp.stream_host}:{cp.stream_port}",
                    cp.data_dir,
                    first=0,
                    count=small,
                    services=UNIQUE,
                    log_dir=group.workdir,
                )
            )
            if not fleets[-1].wait_ready(settings.connect_timeout):
                raise RuntimeError(f"the small mesh did not connect: {fleets[-1].errors[:3]}")
        probe_a = start_sidecar(group, cp, "meshsize-probe-a", "probe", inbound=False)
        wait_ready(probe_a)
        rss_a = _probe_rss(probe_a.port("outbound"), probe_a.pid, settings.probe_seconds)
        services_a = len(probe_a.config()["snapshot"]["outbound"]["services"])
        proxies_small = len(cp.proxies())
        cp_rss_small = rss_kib(cp.proc.pid)
        log(f"mesh of {settings.mesh_small}: probe RSS {rss_a / 1024:.1f} MiB")

        started = time.monotonic()
        _apply_services(cp, [f"sim-{i}" for i in range(small, large)])
        if large > small:
            fleets.append(
                Fleet.start(
                    f"{cp.stream_host}:{cp.stream_port}",
                    cp.data_dir,
                    first=small,
                    count=large - small,
                    services=UNIQUE,
                    workers=_workers(large - small),
                    log_dir=group.workdir,
                )
            )
            if not fleets[-1].wait_ready(settings.connect_timeout):
                log(
                    f"not every simulated sidecar connected in {settings.connect_timeout:.0f}s;"
                    " measuring the mesh as it is"
                )
            fleets[-1].wait_quiet(1.0, 60.0)
        grow_seconds = time.monotonic() - started
        proxies_large = len(cp.proxies())
        with cp.client() as api:
            services_registered = len(api.get("/v1/resources/services").json()["items"])
        probe_b = start_sidecar(group, cp, "meshsize-probe-b", "probe", inbound=False)
        wait_ready(probe_b)
        rss_b = _probe_rss(probe_b.port("outbound"), probe_b.pid, settings.probe_seconds)
        services_b = len(probe_b.config()["snapshot"]["outbound"]["services"])
        rss_a_after = _probe_rss(probe_a.port("outbound"), probe_a.pid, settings.probe_seconds)
        log(
            f"mesh of {settings.mesh_large}: probe RSS {rss_b / 1024:.1f} MiB "
            f"(first probe now {rss_a_after / 1024:.1f} MiB)"
        )
        return {
            "mesh_small": settings.mesh_small,
            "mesh_large": settings.mesh_large,
            "proxies_connected_small": proxies_small,
            "proxies_connected_large": proxies_large,
            "services_registered_large": services_registered,
            "grow_seconds": grow_seconds,
            "rss_small_kib": rss_a,
            "rss_large_kib": rss_b,
            "rss_small_probe_after_growth_kib": rss_a_after,
            "delta_kib": rss_b - rss_a,
            "snapshot_services_small": services_a,
            "snapshot_services_large": services_b,
            "cp_rss_small_kib": cp_rss_small,
            "cp_rss_large_kib": rss_kib(cp.proc.pid),
            "fleet_connect_failures": sum(f.failed for f in fleets),
            "fleet_errors": sum(len(f.errors) for f in fleets),
        }
    finally:
        for fleet in fleets:
            fleet.stop()


def _route_change(number: int) -> dict[str, Any]:
    rule = {
        "name": f"bench-{number}",
        "matches": [{"path": {"type": "Prefix", "value": f"/v{number}"}}],
    }
    return resource("HTTPRoute", "bench-target", {"service": "target", "rules": [rule]})


def _mesh_change(number: int) -> dict[str, Any]:
    mode = "PERMISSIVE" if number % 2 == 0 else "STRICT"
    return resource("MeshConfig", "default", {"mtls": {"mode": mode}})


def _wait_acked(cp: ControlPlane, expected: int, timeout: float = 10.0) -> int:
    """How many proxies report ACK of their current version (polls until all or timeout)."""
    deadline = time.monotonic() + timeout
    acked = 0
    while time.monotonic() < deadline:
        items = [p for p in cp.proxies() if p.get("connected", True)]
        acked = sum(
            1
            for p in items
            if p["ack_state"] == "ACK" and p["acked_version"] == p["config_version"]
        )
        if acked >= expected:
            break
        time.sleep(0.2)
    return acked


def control_plane_scale(
    group: ProcessGroup,
    settings: ScaleSettings,
    log: Callable[[str], None],
    profile_out: Path | None = None,
) -> dict[str, Any]:
    """Time until every one of ``cp_proxies`` simulated sidecars has the changed config.

    With ``profile_out``, py-spy samples the control plane from the first connection to the
    last change (collapsed stacks written there).
    """
    cp = start_control_plane(group, "cp-scale")
    fleet: Fleet | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        services = [f"sim-{i}" for i in range(settings.cp_services)]
        _apply_services(cp, ["target", *services])
        cp_rss_idle = rss_kib(cp.proc.pid)
        if profile_out is not None:
            spy = start_py_spy(cp.proc.pid, 900, profile_out)
        started = time.monotonic()
        fleet = Fleet.start(
            f"{cp.stream_host}:{cp.stream_port}",
            cp.data_dir,
            first=0,
            count=settings.cp_proxies,
            services=settings.cp_services,
            subscribe=["target"],
            workers=_workers(settings.cp_proxies),
            log_dir=group.workdir,
        )
        if not fleet.wait_ready(settings.connect_timeout):
            log(f"not every simulated sidecar connected in {settings.connect_timeout:.0f}s")
        fleet.wait_quiet(1.0, 60.0)
        connect_seconds = time.monotonic() - started
        cp_rss_connected = rss_kib(cp.proc.pid)
        log(
            f"{fleet.ok} simulated sidecars connected in {connect_seconds:.1f}s "
            f"({fleet.failed} failed); control plane RSS {cp_rss_connected / 1024:.0f} MiB"
        )

        use_route = cp.kind_exists("httproutes")
        change_kind = "HTTPRoute" if use_route else "MeshConfig"
        note = "" if use_route else "the control plane has no HTTPRoute kind yet"
        changes: list[dict[str, Any]] = []
        all_latencies: list[float] = []
        number = 0
        while len(changes) < settings.changes:
            baseline = dict(fleet.versions)
            document = _route_change(number) if use_route else _mesh_change(number)
            number += 1
            t0 = time.monotonic_ns()
            try:
                cp.apply([document])
            except RuntimeError as exc:
                if not use_route:
                    raise
                use_route, change_kind = False, "MeshConfig"
                note = f"HTTPRoute refused ({str(exc)[:160]}); used a MeshConfig change"
                continue
            arrived = fleet.wait_newer(baseline, timeout=5.0 if use_route and not changes else 30.0)
            if use_route and not changes and not arrived:
                use_route, change_kind = False, "MeshConfig"
                note = "an HTTPRoute change was not pushed to subscribers; used MeshConfig"
                continue
            latencies = [(t - t0) / 1e6 for t in arrived.values()]
            all_latencies += latencies
            acked = _wait_acked(cp, len(baseline))
            changes.append(
                {
                    "kind": change_kind,
                    "proxies": len(baseline),
                    "received": len(arrived),
                    "acked": acked,
                    "p50_ms": statistics.median(latencies) if latencies else None,
                    "p99_ms": _percentile(latencies, 99) if latencies else None,
                    "max_ms": max(latencies) if latencies else None,
                }
            )
            log(
                f"change {len(changes)} ({change_kind}): {len(arrived)}/{len(baseline)} "
                f"received, p99 {changes[-1]['p99_ms']} ms, {acked} ACKed"
            )
            fleet.wait_quiet(0.5, 10.0)
        return {
            "proxies": settings.cp_proxies,
            "services": settings.cp_services,
            "connected": fleet.ok,
            "connect_failed": fleet.failed,
            "connect_seconds": connect_seconds,
            "change_kind": change_kind,
            "note": note,
            "changes": changes,
            "p50_ms": statistics.median(all_latencies) if all_latencies else None,
            "p99_ms": _percentile(all_latencies, 99) if all_latencies else None,
            "max_ms": max(all_latencies) if all_latencies else None,
            "cp_rss_idle_kib": cp_rss_idle,
            "cp_rss_connected_kib": cp_rss_connected,
            "cp_rss_after_kib": rss_kib(cp.proc.pid),
            "fleet_errors": fleet.errors[:5],
        }
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        if fleet is not None:
            fleet.stop()
