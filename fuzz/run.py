"""Runs fuzz targets for a given time each and writes what they did (``make fuzz``).

``python -m fuzz.run [--seconds N] [--out DIR] [--seed S] [TARGET ...]`` runs each target
(default: all, one after another) for ``N`` seconds of fuzzing. libFuzzer stops at the first
crash; the runner then starts the target again on the same corpus until the time is used,
so one run can find several crashes. Per target, under ``DIR/<target>/``:

- ``corpus/``: the inputs that reached new coverage (the committed seeds in
  ``fuzz/corpus/<target>/`` are read, never written);
- ``crashes/``: each crashing input as libFuzzer wrote it (``crash-<sha1>``, ``timeout-...``,
  ``oom-...``);
- ``log``: libFuzzer's and the target's output, every restart appended.

and ``DIR/summary.tsv`` gets one line per target run (appended, so concurrent runners may
share it): target, seconds, executions, crashes, restarts, exit, UTC end time. Also
``DIR/<target>/summary.json`` with the same fields. The exit status is 0 when no target
crashed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fuzz.engine import CORPUS, ROOT

__all__ = ["TARGETS", "Result", "main", "run_target"]

TARGETS = ("http1", "h2", "config")
# libFuzzer flags every run gets: a slow input (one input over 60 s) or a runaway memory use
# is a crash too; the corpus is kept to what is new.
FLAGS = ("-timeout=60", "-rss_limit_mb=2048", "-print_final_stats=1", "-reduce_inputs=1")
HEADER = "target\tseconds\texecutions\tcrashes\trestarts\texit\tended_utc\n"
_EXECUTED = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")
_PROGRESS = re.compile(rb"^#(\d+)\s", re.MULTILINE)
_ARTIFACT = re.compile(rb"Test unit written to (\S+)")


@dataclass
class Result:
    target: str
    seconds: float
    executions: int
    crashes: int
    restarts: int
    exit: int  # of the last libFuzzer run (0: the time ran out without a crash)
    ended_utc: str


def _executions(output: bytes) -> int:
    """Inputs run, from libFuzzer's final stats (or its last progress line after a crash)."""
    found = _EXECUTED.findall(output)
    if found:
        return int(found[-1])
    progress = _PROGRESS.findall(output)
    return int(progress[-1]) if progress else 0


def run_target(
    target: str, seconds: float, out: Path, seed: int | None = None, extra: tuple[str, ...] = ()
) -> Result:
    """Fuzz ``target`` for ``seconds`` (restarting after each crash); its ``Result``."""
    base = out / target
    corpus, crashes = base / "corpus", base / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOSSAMER_COMPILED": "off",  # the targets fuzz the source (fuzz/engine.py)
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    start = time.monotonic()
    executions = restarts = found = 0
    code = 0
    with (base / "log").open("ab") as log:
        while True:
            left = seconds - (time.monotonic() - start)
            if left < 1:
                break
            command = [
                sys.executable,
                "-m",
                f"fuzz.fuzz_{target}",
                str(corpus),
                str(CORPUS / target),
                f"-max_total_time={int(left)}",
                f"-artifact_prefix={crashes}/",
                *FLAGS,
                *extra,
            ]
            if seed is not None:
                command.append(f"-seed={seed + restarts}")
            log.write(f"\n=== {' '.join(command)}\n".encode())
            log.flush()
            begin = log.tell()
            # Straight into the log (readable while it runs), read back when it ends.
            code = subprocess.run(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
            ).returncode
            with (base / "log").open("rb") as fh:
                fh.seek(begin)
                output = fh.read()
            executions += _executions(output)
            artifacts = _ARTIFACT.findall(output)
            found += len(artifacts)
            if code == 0 or not artifacts:
                break  # the time ran out (or the target could not start: no artifact)
            restarts += 1
    result = Result(
        target=target,
        seconds=round(time.monotonic() - start, 1),
        executions=executions,
        crashes=found,
        restarts=restarts,
        exit=code,
        ended_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    (base / "summary.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    summary = out / "summary.tsv"
    line = "\t".join(str(value) for value in asdict(result).values()) + "\n"
    with summary.open("a") as fh:  # one write: concurrent runners' lines do not mix
        fh.write(line if summary.stat().st_size else HEADER + line)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help=f"of {', '.join(TARGETS)} (default: all)"
    )
    parser.add_argument("--seconds", type=float, default=3600.0, help="per target")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz")
    parser.add_argument("--seed", type=int, default=None, help="libFuzzer's -seed (default: any)")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; known: {', '.join(TARGETS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    worst = 0
    for target in args.targets or TARGETS:
        result = run_target(target, args.seconds, args.out, args.seed)
        print(
            f"{result.target}: {result.seconds:.0f} s, {result.executions} executions, "
            f"{result.crashes} crashes (exit {result.exit})",
            flush=True,
        )
        if result.crashes or result.exit:
            worst = 1
    print(f"summary: {args.out / 'summary.tsv'}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
