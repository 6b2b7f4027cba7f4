"""``python -m bench.connect``: gRPC through a CONNECT tunnel against the direct h2c path
(issue 15).

An unchanged gRPC client reaches the mesh through ``http_proxy``: it opens a tunnel with
``CONNECT greeter:80`` once per connection, then speaks HTTP/2 inside it, which the sidecar
serves as it serves h2c sent to its port directly. This measures what that costs, with real
processes: a control plane, a gRPC backend (grpc-js, so that the sidecars bound the
throughput), the backend's sidecar and the caller's sidecar, and a grpc-js load generator
(``tests/clients/node/grpc_load.js``: a closed loop of unary calls on one channel) run two
ways in alternating rounds:

- ``direct``: the channel dials the caller's sidecar port with ``:authority`` greeter (h2c
  prior knowledge, no proxy);
- ``connect``: the channel is made for ``greeter:80`` with ``http_proxy`` at the sidecar, as
  `gossamer run` sets it: grpc-js sends CONNECT, then HTTP/2 through the tunnel.

Per round: calls per second, and the CPU time of each sidecar per call (from /proc). Medians
are printed and, with ``--write``, recorded in bench/RESULTS.md between markers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.mesh import resource, start_control_plane, start_sidecar, wait_ready
from bench.procs import ProcessGroup, cpu_seconds, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "tests" / "clients" / "node"
BEGIN = "<!-- connect:begin -->"
END = "<!-- connect:end -->"
_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "grpc_proxy",
               "no_proxy", "NO_PROXY", "no_grpc_proxy")  # fmt: skip


def _load(outbound: int, variant: str, seconds: float, concurrency: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    if variant == "connect":
        env["http_proxy"] = f"http://127.0.0.1:{outbound}"
        env["no_proxy"] = "localhost,127.0.0.1"
        args = ["greeter:80"]
    else:
        args = [f"127.0.0.1:{outbound}", "--authority=greeter"]
    done = subprocess.run(
        ["node", str(NODE / "grpc_load.js"), args[0], str(seconds), str(concurrency), *args[1:]],
        capture_output=True, text=True, env=env, timeout=seconds + 60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"grpc_load.js failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(rounds: int, seconds: float, concurrency: int) -> dict[str, dict[str, list[float]]]:
    subprocess.run([str(ROOT / "scripts" / "ensure-node-clients")], check=True)
    results: dict[str, dict[str, list[float]]] = {
        v: {"rps": [], "caller_us": [], "callee_us": [], "errors": []}
        for v in ("direct", "connect")
    }
    with tempfile.TemporaryDirectory(prefix="gossamer-bench-connect-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            cp = start_control_plane(group)
            cp.apply([resource("Service", "greeter", {"ports": [{"port": 80,
                                                                 "protocol": "grpc"}]})])
            port = free_port()
            server = group.spawn("grpc-server", ["node", str(NODE / "grpc_server.js"), str(port)])
            wait_port(port, proc=server)
            callee = start_sidecar(group, cp, "greeter", "greeter", app_port=port,
                                   outbound=False)  # fmt: skip
            caller = start_sidecar(group, cp, "shop", "shop", inbound=False)
            wait_ready(callee)
            wait_ready(caller)
            outbound = caller.port("outbound")
            for variant in ("direct", "connect"):  # warm both paths (and the compiled code)
                _load(outbound, variant, 1.0, concurrency)
            for i in range(rounds):
                order = ("direct", "connect") if i % 2 == 0 else ("connect", "direct")
                for variant in order:
                    before = cpu_seconds(caller.pid), cpu_seconds(callee.pid)
                    got = _load(outbound, variant, seconds, concurrency)
                    after = cpu_seconds(caller.pid), cpu_seconds(callee.pid)
                    calls = max(got["calls"], 1)
                    row = results[variant]
                    row["rps"].append(got["calls"] / got["seconds"])
                    row["caller_us"].append((after[0] - before[0]) / calls * 1e6)
                    row["callee_us"].append((after[1] - before[1]) / calls * 1e6)
                    row["errors"].append(got["errors"])
                    print(f"round {i + 1} {variant}: {row['rps'][-1]:.0f} calls/s, caller "
                          f"{row['caller_us'][-1]:.1f} us/call, callee "
                          f"{row['callee_us'][-1]:.1f} us/call, {got['errors']} errors",
                          flush=True)  # fmt: skip
        finally:
            group.stop_all()
    return results


def render(results: dict[str, dict[str, list[float]]]) -> str:
    med = {v: {k: statistics.median(xs) for k, xs in r.items()} for v, r in results.items()}
    lines = [
        "| path | calls/s | caller sidecar CPU us/call | callee sidecar CPU us/call | errors |",
        "|---|---|---|---|---|",
    ]
    for variant in ("direct", "connect"):
        m = med[variant]
        lines.append(f"| {variant} | {m['rps']:.0f} | {m['caller_us']:.1f} | "
                     f"{m['callee_us']:.1f} | {int(sum(results[variant]['errors']))} |")
    ratio = med["connect"]["rps"] / med["direct"]["rps"]
    lines.append(f"| connect / direct | {ratio:.3f}x | "
                 f"{med['connect']['caller_us'] / med['direct']['caller_us']:.3f}x | "
                 f"{med['connect']['callee_us'] / med['direct']['callee_us']:.3f}x | |")
    return "\n".join(lines)


def _write(table: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + table + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.connect", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    results = measure(args.rounds, args.seconds, args.concurrency)
    table = render(results)
    print(table)
    if args.write:
        _write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
