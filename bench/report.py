"""The suite's output: the printed table, the issue-3 target verdicts and ``RESULTS.md``.

Owns the machine and version description, the table of medians and ratios, the per-round
data, the "Targets" section (met, or missed by how much) and the profile tables. Everything is
computed from the results dictionary the runner assembles (also written as JSON).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["machine_description", "render_markdown", "render_table", "targets", "versions"]

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return (done.stdout + done.stderr).strip()


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_description() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = "unknown"
    try:
        with open("/proc/meminfo") as f:
            first = f.readline().split()
            memory = f"{int(first[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "memory": memory,
        "os": _run(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
    }


def versions() -> dict[str, str]:
    wrk = _run(["wrk", "-v"]).splitlines()
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    return {
        "haproxy": _run(["haproxy", "-v"]).splitlines()[0],
        "nginx": _run(["nginx", "-v"]),
        "wrk": wrk[0] if wrk else "unknown",
        "h2load": _run(["h2load", "--version"]),
        "python": sys.version.split()[0],
        "uvloop": _dist_version("uvloop"),
        "httptools": _dist_version("httptools"),
        "openssl (python)": __import__("ssl").OPENSSL_VERSION,
        "HTTP/2 header collector": _h2_collector(),
        "gossamer": commit + (" + uncommitted changes in src/" if dirty else ""),
    }


def _h2_collector() -> str:
    """Whether sidecars will run nghttp2's per-field callbacks in C (the built collector)."""
    from gossamer.protocol.h2.native import LIBRARY

    if os.environ.get("GOSSAMER_H2_NATIVE", "on").lower() in ("off", "0", "no"):
        return "Python callbacks (GOSSAMER_H2_NATIVE=off)"
    return "native (C)" if LIBRARY.exists() else "Python callbacks (collector not built)"


def _f(value: float | None, fmt: str = "{:.0f}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _rss_cell(path: Mapping[str, Any], idle: Mapping[str, int]) -> str:
    names = list(path["cpu_us_per_req_by_proc"])
    if not names:
        return "-"
    peak = path.get("rss_peak_kib", {})
    return " + ".join(
        f"{_mib(idle.get(n))}/{_mib(path['rss_after_kib'].get(n))}/{_mib(peak.get(n))}"
        for n in names
    )


def _rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    idle = results["idle_rss_kib"]
    for spec in results["path_specs"]:
        data = results["summary"]["paths"][spec["key"]]
        label = f"{spec['number']} {spec['key']}"
        if not data["available"]:
            rows.append([label, "not available: " + data["reason"]] + [""] * 8)
            continue
        bulk = spec["protocol"] == "bulk"
        ratios = data["ratios"]
        rows.append(
            [
                label,
                f"{_f(data['mb_per_s'], '{:.0f}')} MB/s" if bulk else _f(data["rps"]),
                _f(data["p50_us"]) if not bulk else "-",
                _f(data["p99_us"]) if not bulk else "-",
                _f(data["added_p50_1c_us"]),
                _f(data["added_p99_1c_us"]),
                (
                    f"{_f(data['cpu_us_per_mb'], '{:.0f}')}/MB"
                    if bulk
                    else _f(data["cpu_us_per_req"], "{:.1f}")
                ),
                _rss_cell(data, idle),
                _f(ratios.get("throughput"), "{:.2f}x"),
                _f(ratios.get("cpu"), "{:.2f}x"),
            ]
        )
    return rows


HEADERS = [
    "path",
    "req/s (50c)",
    "p50 us",
    "p99 us",
    "+p50 1c",
    "+p99 1c",
    "CPU us/req",
    "RSS MiB idle/after/peak",
    "thr vs HAProxy",
    "CPU vs HAProxy",
]


def render_table(results: Mapping[str, Any]) -> str:
    """A plain-text table of the medians (for the terminal)."""
    rows = [HEADERS, *_rows(results)]
    widths = [
        max(len(r[i]) for r in rows if len(r) > i and r[1][:13] != "not available")
        for i in range(len(HEADERS))
    ]
    lines = []
    for row in rows:
        if row[1].startswith("not available"):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            lines.append(
                "  ".join(
                    cell.rjust(widths[i]) if i else cell.ljust(widths[i])
                    for i, cell in enumerate(row)
                )
            )
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _kv(mapping: Mapping[str, Any]) -> str:
    return _md_table(["", ""], [[k, _value(v)] for k, v in mapping.items()])


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(out)


def _verdict(value: float | None, limit: float, *, at_least: bool, unit: str = "") -> str:
    if value is None:
        return "not measured"
    ok = value >= limit if at_least else value <= limit
    if ok:
        return "met"
    gap = limit - value if at_least else value - limit
    return f"missed by {gap:.2f}{unit}"


def targets(results: Mapping[str, Any]) -> list[list[str]]:
    """One row per issue-3 target: target, measured, verdict."""
    paths = results["summary"]["paths"]
    rows: list[list[str]] = []

    def ratio(key: str, name: str) -> float | None:
        data = paths.get(key)
        if not data or not data["available"]:
            return None
        value = data["ratios"].get(name)
        return float(value) if value is not None else None

    def add(target: str, value: float | None, shown: str, verdict: str) -> None:
        rows.append([target, shown if value is not None else "not measured", verdict])

    v = ratio("gossamer", "throughput")
    add(
        "one hop: throughput >= 0.9x HAProxy",
        v,
        f"{v or 0:.2f}x",
        _verdict(v, 0.9, at_least=True, unit="x"),
    )
    v = ratio("gossamer", "cpu")
    add(
        "one hop: CPU per request <= 1.2x HAProxy",
        v,
        f"{v or 0:.2f}x",
        _verdict(v, 1.2, at_least=False, unit="x"),
    )
    v = ratio("gossamer", "added_p50_1c_vs_ref_us")
    add(
        "one hop: added p50 at 1 connection <= HAProxy's + 20 us",
        v,
        f"HAProxy's {v or 0:+.0f} us",
        _verdict(v, 20, at_least=False, unit=" us"),
    )
    v = ratio("gossamer-pair", "throughput")
    add(
        "mTLS pair: throughput >= 0.85x HAProxy pair",
        v,
        f"{v or 0:.2f}x",
        _verdict(v, 0.85, at_least=True, unit="x"),
    )
    v = ratio("tcp-gossamer", "throughput")
    add(
        "opaque TCP: throughput >= 0.8x HAProxy mode tcp",
        v,
        f"{v or 0:.2f}x",
        _verdict(v, 0.8, at_least=True, unit="x"),
    )
    v = ratio("h2-gossamer", "throughput")
    add(
        "HTTP/2 h2c: throughput >= 0.4x HAProxy",
        v,
        f"{v or 0:.2f}x",
        _verdict(v, 0.4, at_least=True, unit="x"),
    )

    sidecars = results.get("sidecar_rss_kib", {})
    if sidecars:
        worst = max(sidecars.values())
        who = max(sidecars, key=lambda k: sidecars[k])
        add(
            "sidecar RSS <= 30 MiB idle and under load",
            worst / 1024,
            f"max {worst / 1024:.1f} MiB ({who})",
            _verdict(worst / 1024, 30, at_least=False, unit=" MiB"),
        )
    cpu = results.get("sidecar_cpu_us_per_req", {})
    if cpu:
        worst_cpu = max(cpu.values())
        who = max(cpu, key=lambda k: cpu[k])
        add(
            "sidecar CPU <= 0.05 vCPU per 1000 req/s (50 us/req)",
            worst_cpu,
            f"max {worst_cpu:.1f} us/req ({who})",
            _verdict(worst_cpu, 50, at_least=False, unit=" us/req"),
        )
    mesh = results.get("mesh_size")
    if mesh:
        delta = mesh["delta_kib"] / 1024
        add(
            f"mesh of {mesh['mesh_large']} services ({mesh['proxies_connected_large']} sidecars "
            f"connected) vs {mesh['mesh_small']}: <= 5 MiB more sidecar RSS",
            delta,
            f"{delta:+.1f} MiB",
            _verdict(delta, 5, at_least=False, unit=" MiB"),
        )
    scale = results.get("cp_scale")
    if scale:
        p99 = scale["p99_ms"]
        everyone = all(c["received"] == c["proxies"] == c["acked"] for c in scale["changes"])
        verdict = _verdict(p99, 1000, at_least=False, unit=" ms")
        if not everyone:
            verdict = "missed: not every proxy received/ACKed"
        add(
            f"control plane: {scale['proxies']} sidecars ACK a change within 1 s at p99",
            p99,
            f"p99 {p99:.0f} ms" if p99 is not None else "",
            verdict,
        )
        rss = max(scale["cp_rss_connected_kib"], scale["cp_rss_after_kib"]) / 1024
        add(
            "control plane RSS <= 300 MiB (1000 sidecars)",
            rss,
            f"{rss:.0f} MiB",
            _verdict(rss, 300, at_least=False, unit=" MiB"),
        )
    return rows


def _cpu_md(results: Mapping[str, Any]) -> str:
    rows = []
    for spec in results["path_specs"]:
        data = results["summary"]["paths"][spec["key"]]
        if not spec["procs"] or not data["available"]:
            continue
        share = data.get("cpu_sys_share")
        per_proc = ", ".join(
            f"{name} {value:.1f}"
            for name, value in data["cpu_us_per_req_by_proc"].items()
            if value is not None
        )
        rows.append(
            [
                f"{spec['number']} {spec['key']}",
                _f(data["cpu_cores"], "{:.2f}"),
                _f(share * 100 if share is not None else None, "{:.0f}%"),
                per_proc if spec["protocol"] != "bulk" else "(per request of 64 MiB)",
            ]
        )
    return (
        "Proxy CPU under the full load (medians): cores busy, the kernel's share of that time,"
        " and CPU us per request of each process:\n\n"
        + _md_table(["path", "cores", "kernel share", "us/request by process"], rows)
    )


def _syscalls_md(census: Mapping[str, Any]) -> str:
    rows = []
    for key, data in census.items():
        if "error" in data:
            rows.append([key, "", data["error"]])
            continue
        for proc, calls in data["per_request"].items():
            shown = ", ".join(f"{name} {count:.2f}" for name, count in calls.items())
            rows.append([key, proc, shown])
    return (
        "System calls per request (strace -c during a short load; a diagnostic: strace slows"
        " the process but not the count per request):\n\n"
        + _md_table(["path", "process", "calls per request (top)"], rows)
    )


def _profile_md(name: str, profile: Mapping[str, Any]) -> str:
    if "error" in profile:
        return f"**{name}**: {profile['error']}\n"
    rows = [
        [f"{f['self_pct']:.1f}", f"{f['total_pct']:.1f}", f"`{f['function']}`"]
        for f in profile["top_self"]
    ]
    total_rows = [
        [f"{f['self_pct']:.1f}", f"{f['total_pct']:.1f}", f"`{f['function']}`"]
        for f in profile["top_total"]
    ]
    return (
        f"**{name}** ({profile['samples']} samples, {profile['what']})\n\n"
        "Top by self time:\n\n" + _md_table(["self %", "total %", "function"], rows) + "\n\n"
        "Top by inclusive time (frames in more than 95% of samples left out):\n\n"
        + _md_table(["self %", "total %", "function"], total_rows)
        + "\n"
    )


def _rounds_md(results: Mapping[str, Any]) -> str:
    rows = []
    for s in results["summary"]["samples"]:
        rows.append(
            [
                str(s["round"] + 1),
                s["key"],
                _f(s["rps"]),
                _f(s["mb_per_s"], "{:.0f}"),
                _f(s["p50_us"]),
                _f(s["p99_us"]),
                _f(s["p50_1c_us"]),
                _f(s["p99_1c_us"]),
                _f(s["cpu_us_per_req"], "{:.1f}"),
                _f(s["cpu_us_per_mb"], "{:.0f}"),
            ]
        )
    table = _md_table(
        [
            "round",
            "path",
            "req/s",
            "MB/s",
            "p50 us",
            "p99 us",
            "p50 1c us",
            "p99 1c us",
            "CPU us/req",
            "CPU us/MB",
        ],
        rows,
    )
    ratio_rows = []
    for key, data in results["summary"]["paths"].items():
        for name, values in data["ratios_per_round"].items():
            shown = ", ".join(f"{v:.2f}" for v in values)
            ratio_rows.append([key, name, shown, _f(data["ratios"][name], "{:.2f}")])
    ratios = _md_table(["path", "ratio to HAProxy", "per round", "median"], ratio_rows)
    return (
        table
        + "\n\nRatios within each round (added latencies: path minus HAProxy, us):\n\n"
        + ratios
    )


def render_markdown(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Gossamer benchmark results",
        "",
        f"Written by `{results['command']}` (what `make bench` runs) on {results['date']}",
        f"in {results['elapsed_s']:.0f} s ({results['mode']} mode). Absolute numbers drift on a",
        "shared machine (see the load average below); the ratios to HAProxy computed within each",
        "round, and their medians, are the figures of record.",
        "How each path is built and measured: [README.md](README.md). Rerun: `make bench`.",
        "",
        "## Machine and versions",
        "",
        _md_table(["", ""], [[k, v] for k, v in {**machine, **results["versions"]}.items()]),
        "",
        "## Settings",
        "",
        _kv(results["settings"]),
        "",
        "## Results (medians of rounds)",
        "",
        "Latencies in microseconds; `+p50 1c`/`+p99 1c`: added over the direct path (for its",
        "protocol) at one connection; CPU: user+system time of the path's proxy processes per",
        "request (per MB for bulk transfer); RSS: per proxy process, idle (before any load) / max",
        "after a load / peak (VmHWM: the most it ever held, start-up and mid-load peaks included).",
        "",
        _md_table(HEADERS, _rows(results)),
        "",
        "## Targets (issue 3)",
        "",
        _md_table(["target", "measured", "status"], targets(results)),
        "",
        "Where the time and memory go, and what was tried for each target: "
        "[README.md](README.md#what-was-tried-the-optimisation-log) (the optimisation log and "
        "the analysis after it); the profiles and system calls of this run follow.",
        "",
    ]
    lines += [_cpu_md(results), ""]
    census = results.get("syscalls")
    if census:
        lines += [_syscalls_md(census), ""]
    per_proc = results.get("sidecar_cpu_us_per_req", {})
    if per_proc:
        lines += [
            "CPU per request of each sidecar process (median of rounds):",
            "",
            _md_table(["process", "us/request"], [[k, f"{v:.1f}"] for k, v in per_proc.items()]),
            "",
        ]
    mesh = results.get("mesh_size")
    if mesh:
        lines += [
            "## Mesh-size independence",
            "",
            results["mesh_method"],
            "",
            _md_table(["", ""], [[k, str(v)] for k, v in mesh.items()]),
            "",
        ]
    scale = results.get("cp_scale")
    if scale:
        changes = [
            [
                str(i + 1),
                c["kind"],
                str(c["proxies"]),
                str(c["received"]),
                str(c["acked"]),
                _f(c["p50_ms"], "{:.1f}"),
                _f(c["p99_ms"], "{:.1f}"),
                _f(c["max_ms"], "{:.1f}"),
            ]
            for i, c in enumerate(scale["changes"])
        ]
        facts = {k: v for k, v in scale.items() if k != "changes"}
        lines += [
            "## Control plane with simulated sidecars",
            "",
            results["scale_method"],
            "",
            _md_table(
                ["change", "kind", "proxies", "received", "ACKed", "p50 ms", "p99 ms", "max ms"],
                changes,
            ),
            "",
            _kv(facts),
            "",
        ]
    profiles = results.get("profiles", {})
    if profiles:
        lines += ["## Profiles (py-spy, under load)", ""]
        lines += [_profile_md(name, p) for name, p in profiles.items()]
    lines += ["## Per-round data", "", _rounds_md(results), ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)
