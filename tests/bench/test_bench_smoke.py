"""The benchmark suite in smoke mode: every phase runs end to end with tiny loads.

``python -m bench --smoke`` is run once as a real process (backend, HAProxy, nginx, control
planes, sidecars, simulated sidecars; about half a minute). The tests check that it produced
a row for every path (measured, or "not available" with the reason), the ratios, the Markdown
report and the scale experiments, and that it left nothing running. Nothing here asserts speed:
the full suite (``make bench``) is where speed is measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.tools import require

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"haproxy": "haproxy", "nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client"}
# Paths that need nothing beyond the foundation sidecar: they must always be measured.
ALWAYS = ("direct", "haproxy", "nginx", "gossamer", "haproxy-pair", "gossamer-pair",
          "tcp-direct", "tcp-haproxy", "h2-direct", "h2-haproxy")  # fmt: skip
EVERY_PATH = (*ALWAYS, "tcp-gossamer", "h2-gossamer")


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the suite once in smoke mode; its results JSON and RESULTS.md text."""
    missing = [pkg for tool, pkg in TOOLS.items() if _which(tool) is None]
    if missing:
        subprocess.run([str(ROOT / "scripts" / "ensure-debian-packages"), *missing],
                       check=False, timeout=600)  # fmt: skip
    still = [tool for tool in TOOLS if _which(tool) is None]
    require(not still, f"benchmark tools ({', '.join(still)})")
    out = tmp_path_factory.mktemp("bench-smoke")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-install",
         "--output", str(out / "RESULTS.md"), "--json", str(out / "results.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"bench --smoke failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    results["_markdown"] = (out / "RESULTS.md").read_text()
    results["_stdout"] = done.stdout
    return results


@pytest.mark.timeout(300)
def test_every_path_is_measured_or_says_why(smoke: dict[str, Any]) -> None:
    """Each of the seven paths has measured figures, or is "not available" with a reason."""
    paths = smoke["summary"]["paths"]
    assert set(EVERY_PATH) <= set(paths)
    for key in EVERY_PATH:
        data = paths[key]
        if key in ALWAYS or data["available"]:
            assert data["available"], f"{key}: {data['reason']}"
            assert data["samples"] == smoke["settings"]["rounds"]
            assert (data["rps"] or 0) > 0 and (data["mb_per_s"] or 0) > 0
        else:
            assert data["reason"], f"{key} is not available and does not say why"


@pytest.mark.timeout(300)
def test_proxy_paths_have_cpu_and_memory_figures(smoke: dict[str, Any]) -> None:
    """CPU per request and RSS are read from /proc for every proxy process of a path."""
    for spec in smoke["path_specs"]:
        if not spec["procs"] or not spec["available"]:
            continue
        data = smoke["summary"]["paths"][spec["key"]]
        cpu = data["cpu_us_per_mb"] if spec["protocol"] == "bulk" else data["cpu_us_per_req"]
        assert cpu is not None and cpu >= 0, spec["key"]
        for name in spec["procs"]:
            assert smoke["idle_rss_kib"][name] > 0
            assert data["rss_after_kib"][name] > 0
            assert data["rss_peak_kib"][name] >= data["rss_after_kib"][name]


@pytest.mark.timeout(300)
def test_ratios_to_haproxy_are_computed_within_each_round(smoke: dict[str, Any]) -> None:
    """Gossamer's paths carry per-round throughput ratios to their HAProxy reference."""
    rounds = smoke["settings"]["rounds"]
    for key in ("gossamer", "gossamer-pair"):
        ratios = smoke["summary"]["paths"][key]["ratios_per_round"]
        assert len(ratios["throughput"]) == rounds
        assert len(ratios["added_p50_1c_vs_ref_us"]) == rounds
        assert smoke["summary"]["paths"][key]["ratios"]["throughput"] > 0


@pytest.mark.timeout(300)
def test_report_has_table_targets_machine_and_command(smoke: dict[str, Any]) -> None:
    """RESULTS.md names the machine, versions and command, and has the table and targets."""
    text = smoke["_markdown"]
    for needle in ("## Machine and versions", "nproc", "haproxy", "uvloop", "httptools",
                   "python -m bench --smoke", "## Targets (issue 3)", "## Per-round data",
                   "| 4 gossamer |", "| 5 gossamer-pair |", "mTLS pair"):  # fmt: skip
        assert needle in text, needle
    assert "1 direct" in smoke["_stdout"]


@pytest.mark.timeout(300)
def test_mesh_size_experiment_registers_every_service_with_an_endpoint(
    smoke: dict[str, Any],
) -> None:
    """The grown mesh has every service connected, and the probe sidecar holds only one."""
    mesh = smoke["mesh_size"]
    assert mesh["proxies_connected_large"] >= mesh["mesh_large"]
    assert mesh["services_registered_large"] >= mesh["mesh_large"]
    assert mesh["snapshot_services_small"] == mesh["snapshot_services_large"] == 1
    assert mesh["rss_small_kib"] > 0 and mesh["rss_large_kib"] > 0


@pytest.mark.timeout(300)
def test_control_plane_change_reaches_and_is_acked_by_every_simulated_sidecar(
    smoke: dict[str, Any],
) -> None:
    """Every simulated sidecar received the changed snapshot and the API shows its ACK."""
    scale = smoke["cp_scale"]
    assert scale["connected"] == scale["proxies"]
    for change in scale["changes"]:
        assert change["received"] == change["proxies"] == scale["proxies"]
        assert change["acked"] == scale["proxies"]
    assert scale["cp_rss_after_kib"] > 0


@pytest.mark.timeout(300)
def test_suite_leaves_no_process_behind(smoke: dict[str, Any]) -> None:
    """No process still refers to the suite's work directory once it has finished."""
    workdir = smoke["workdir"].encode()
    leftovers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if workdir in blob and int(entry.name) != os.getpid():
            leftovers.append(entry.name)
    assert leftovers == []


def test_round_order_puts_gossamer_next_to_its_haproxy_reference_and_alternates() -> None:
    """Within a round a Gossamer path runs right beside its reference; odd rounds reverse."""
    from bench.rounds import round_order
    from bench.topology import PathSpec

    def spec(key: str, group: str) -> PathSpec:
        return PathSpec(key, 0, key, group, "http1", "", gossamer="gossamer" in key)

    paths = [spec("direct", "http"), spec("haproxy", "http"), spec("nginx", "http"),
             spec("gossamer", "http"), spec("haproxy-pair", "pair"),
             spec("gossamer-pair", "pair")]  # fmt: skip
    even = [p.key for p in round_order(paths, 0)]
    odd = [p.key for p in round_order(paths, 1)]
    assert even == ["direct", "nginx", "haproxy", "gossamer", "haproxy-pair", "gossamer-pair"]
    assert odd == ["gossamer-pair", "haproxy-pair", "gossamer", "haproxy", "nginx", "direct"]
