"""Interleaved measurement rounds and the figures of record computed from them.

Owns one measurement of one path (:func:`measure`: load at N connections with CPU deltas of
the path's proxy processes, then at one connection, then RSS), the loop over rounds (every
available path once per round; a comparison group's paths back to back, groups rotated and
the order inside a group alternated from round to round),
and :func:`summarize`: per-path medians, and the ratios to the group's HAProxy reference
computed within each round, with their medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.load import LoadError, LoadResult, run_h2load, run_wrk
from bench.procs import cpu_times, peak_rss_kib, rss_kib
from bench.topology import GROUPS, PathSpec, warm_up

__all__ = ["LoadSettings", "Sample", "drive", "measure", "round_order", "run_rounds", "summarize"]


@dataclass(frozen=True)
class LoadSettings:
    """How hard and how long each path is driven."""

    rounds: int = 5
    duration: int = 5  # seconds at ``connections``
    duration_1c: int = 2  # seconds at one connection
    warmup: int = 1  # unmeasured seconds before each path's runs in round 1 (0: none)
    connections: int = 50
    bulk_connections: int = 4
    h2_clients: int = 10
    h2_streams: int = 10


@dataclass
class Sample:
    """One path in one round."""

    key: str
    round: int
    requests: int
    rps: float
    p50_us: float
    p99_us: float
    mb_per_s: float
    p50_1c_us: float | None
    p99_1c_us: float | None
    cpu_us_per_req: float | None  # all proxy processes of the path, per request
    cpu_us_per_mb: float | None
    cpu_cores: float  # proxy CPU seconds per wall second during the load
    cpu_sys_share: float | None = None  # fraction of the proxy CPU spent in the kernel
    cpu_by_proc: dict[str, float] = field(default_factory=dict)  # us per request
    rss_kib: dict[str, int] = field(default_factory=dict)  # after the load
    peak_rss_kib: dict[str, int] = field(default_factory=dict)  # VmHWM after the load


def drive(spec: PathSpec, settings: LoadSettings, seconds: int) -> LoadResult:
    """Load ``spec`` at full concurrency for ``seconds`` (for profiles and diagnostics)."""
    return _load(spec, replace(settings, duration=seconds), single=False)


def _load(spec: PathSpec, settings: LoadSettings, *, single: bool) -> LoadResult:
    if spec.protocol == "h2":
        return run_h2load(
            spec.url,
            clients=1 if single else settings.h2_clients,
            streams=1 if single else settings.h2_streams,
            duration=settings.duration_1c if single else settings.duration,
            authority=spec.host,
        )
    connections = settings.bulk_connections if spec.protocol == "bulk" else settings.connections
    return run_wrk(
        spec.url,
        connections=1 if single else connections,
        duration=settings.duration_1c if single else settings.duration,
        host=spec.host,
    )


def measure(spec: PathSpec, settings: LoadSettings, round_no: int) -> Sample:
    """Load ``spec`` at full concurrency (CPU measured), then at one connection (latency).

    The first round warms each path up first (pools, caches); the processes stay up, so later
    rounds start warm.
    """
    if settings.warmup > 0 and round_no == 0:
        warm_up(spec, settings.warmup)
    before = {p.name: cpu_times(p.pid) for p in spec.procs}
    result = _load(spec, settings, single=False)
    after = {p.name: cpu_times(p.pid) for p in spec.procs}
    cpu = {name: sum(after[name]) - sum(before[name]) for name in before}
    total_cpu = sum(cpu.values())
    system = sum(after[name][1] - before[name][1] for name in before)
    single = _load(spec, settings, single=True) if spec.protocol != "bulk" else None
    megabytes = result.bytes / 1e6
    return Sample(
        key=spec.key,
        round=round_no,
        requests=result.requests,
        rps=result.rps,
        p50_us=result.p50_us,
        p99_us=result.p99_us,
        mb_per_s=result.mb_per_s,
        p50_1c_us=single.p50_us if single else None,
        p99_1c_us=single.p99_us if single else None,
        cpu_us_per_req=total_cpu * 1e6 / result.requests if spec.procs else None,
        cpu_us_per_mb=total_cpu * 1e6 / megabytes if spec.procs and megabytes else None,
        cpu_cores=total_cpu / result.duration_s if result.duration_s else 0.0,
        cpu_sys_share=system / total_cpu if total_cpu > 0 else None,
        cpu_by_proc={name: sec * 1e6 / result.requests for name, sec in cpu.items()},
        rss_kib={p.name: rss_kib(p.pid) for p in spec.procs},
        peak_rss_kib={p.name: peak_rss_kib(p.pid) for p in spec.procs},
    )


def round_order(paths: list[PathSpec], round_no: int) -> list[PathSpec]:
    """The order of one round: each comparison group's paths back to back (so a ratio compares
    runs seconds apart), the groups rotated from round to round, and the order inside a group
    reversed every other round (so slow drift favours neither side)."""
    groups: dict[str, list[PathSpec]] = {}
    for spec in paths:
        groups.setdefault(spec.group, []).append(spec)
    names = list(groups)
    shift = round_no % len(names) if names else 0
    order: list[PathSpec] = []
    for name in names[shift:] + names[:shift]:
        baseline, reference = GROUPS[name]

        def rank(spec: PathSpec, baseline: str = baseline, reference: str = reference) -> int:
            # baseline, other peers, the HAProxy reference, then Gossamer right after it
            if spec.key == baseline:
                return 0
            if spec.key == reference:
                return 2
            return 3 if spec.gossamer else 1

        members = sorted(groups[name], key=rank)
        order += list(reversed(members)) if round_no % 2 else members
    return order


def run_rounds(
    paths: list[PathSpec],
    settings: LoadSettings,
    log: Callable[[str], None],
    failures: list[str] | None = None,
) -> list[Sample]:
    """Every available path once per round, in :func:`round_order`.

    A load that fails (errors, a dead process) is logged and appended to ``failures``; that
    path simply has no sample in that round.
    """
    samples: list[Sample] = []
    for round_no in range(settings.rounds):
        for spec in round_order([p for p in paths if p.available], round_no):
            try:
                sample = measure(spec, settings, round_no)
            except (LoadError, OSError) as exc:
                message = f"round {round_no + 1} {spec.key}: {str(exc)[:300]}"
                log(f"measurement failed: {message}")
                if failures is not None:
                    failures.append(message)
                continue
            samples.append(sample)
            log(
                f"round {round_no + 1}/{settings.rounds} {spec.key:14s} "
                f"{sample.rps:9.0f} req/s {sample.mb_per_s:8.1f} MB/s "
                f"p50 {sample.p50_us:7.0f} us p99 {sample.p99_us:7.0f} us"
                + (f" cpu {sample.cpu_us_per_req:6.1f} us/req" if sample.cpu_us_per_req else "")
            )
    return samples


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _per_round(samples: list[Sample]) -> dict[int, dict[str, Sample]]:
    rounds: dict[int, dict[str, Sample]] = {}
    for sample in samples:
        rounds.setdefault(sample.round, {})[sample.key] = sample
    return rounds


def _ratios(path: Sample, ref: Sample, bulk: bool) -> dict[str, float]:
    """Ratios of ``path`` to the reference in one round (and latency differences in us)."""
    out: dict[str, float] = {}
    if bulk:
        if ref.mb_per_s:
            out["throughput"] = path.mb_per_s / ref.mb_per_s
        if path.cpu_us_per_mb and ref.cpu_us_per_mb:
            out["cpu"] = path.cpu_us_per_mb / ref.cpu_us_per_mb
        return out
    if ref.rps:
        out["throughput"] = path.rps / ref.rps
    if path.cpu_us_per_req and ref.cpu_us_per_req:
        out["cpu"] = path.cpu_us_per_req / ref.cpu_us_per_req
    # Added latency over direct minus HAProxy's added latency: the direct part cancels.
    if path.p50_1c_us is not None and ref.p50_1c_us is not None:
        out["added_p50_1c_vs_ref_us"] = path.p50_1c_us - ref.p50_1c_us
    if path.p99_1c_us is not None and ref.p99_1c_us is not None:
        out["added_p99_1c_vs_ref_us"] = path.p99_1c_us - ref.p99_1c_us
    return out


def summarize(paths: list[PathSpec], samples: list[Sample]) -> dict[str, Any]:
    """Medians per path and, per round, ratios to the group's reference; then their medians."""
    rounds = _per_round(samples)
    per_path: dict[str, dict[str, Any]] = {}
    for spec in paths:
        own = [s for s in samples if s.key == spec.key]
        baseline_key, reference_key = GROUPS[spec.group]
        added_p50: list[float] = []
        added_p99: list[float] = []
        ratios: dict[str, list[float]] = {}
        for by_key in rounds.values():
            sample, base = by_key.get(spec.key), by_key.get(baseline_key)
            if sample is None:
                continue
            if base is not None and sample.p50_1c_us is not None and base.p50_1c_us is not None:
                added_p50.append(sample.p50_1c_us - base.p50_1c_us)
            if base is not None and sample.p99_1c_us is not None and base.p99_1c_us is not None:
                added_p99.append(sample.p99_1c_us - base.p99_1c_us)
            ref = by_key.get(reference_key)
            if ref is not None and spec.key not in (reference_key, baseline_key):
                for name, value in _ratios(sample, ref, spec.protocol == "bulk").items():
                    ratios.setdefault(name, []).append(value)
        rss_after: dict[str, int] = {}
        rss_peak: dict[str, int] = {}
        for sample in own:
            for name, kib in sample.rss_kib.items():
                rss_after[name] = max(rss_after.get(name, 0), kib)
            for name, kib in sample.peak_rss_kib.items():
                rss_peak[name] = max(rss_peak.get(name, 0), kib)
        cpu_by_proc: dict[str, float | None] = {}
        for proc in spec.procs:
            cpu_by_proc[proc.name] = _median([s.cpu_by_proc[proc.name] for s in own])
        per_path[spec.key] = {
            "available": spec.available,
            "reason": spec.reason,
            "samples": len(own),
            "rps": _median([s.rps for s in own]),
            "mb_per_s": _median([s.mb_per_s for s in own]),
            "p50_us": _median([s.p50_us for s in own]),
            "p99_us": _median([s.p99_us for s in own]),
            "p50_1c_us": _median([s.p50_1c_us for s in own if s.p50_1c_us is not None]),
            "p99_1c_us": _median([s.p99_1c_us for s in own if s.p99_1c_us is not None]),
            "added_p50_1c_us": _median(added_p50),
            "added_p99_1c_us": _median(added_p99),
            "cpu_us_per_req": _median(
                [s.cpu_us_per_req for s in own if s.cpu_us_per_req is not None]
            ),
            "cpu_us_per_mb": _median([s.cpu_us_per_mb for s in own if s.cpu_us_per_mb]),
            "cpu_cores": _median([s.cpu_cores for s in own]),
            "cpu_sys_share": _median([s.cpu_sys_share for s in own if s.cpu_sys_share is not None]),
            "cpu_us_per_req_by_proc": cpu_by_proc,
            "rss_after_kib": rss_after,
            "rss_peak_kib": rss_peak,
            "ratios_per_round": ratios,
            "ratios": {name: _median(values) for name, values in ratios.items()},
        }
    return {"paths": per_path, "samples": [asdict(s) for s in samples]}
