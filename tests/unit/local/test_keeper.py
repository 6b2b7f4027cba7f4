"""The sidecar keeper of ``gossamer run``: when it restarts, and when it gives up (issue 12,
item 4). The "sidecar" here is a process that exits at once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gossamer.local.client import ControlUnreachable
from gossamer.local.keeper import RestartPolicy, SidecarGaveUp, SidecarKeeper
from gossamer.local.launch import SidecarConfig

EXITS = [sys.executable, "-c", "raise SystemExit(3)"]


def _keeper(tmp: Path, policy: RestartPolicy, token: object, lines: list[str]) -> SidecarKeeper:
    config = SidecarConfig(service="batch", namespace="default", admin_port=1,
                           control_addr="127.0.0.1:1", ca_file=tmp / "ca", workdir=tmp / "w",
                           outbound_port=2)
    return SidecarKeeper(config, argv=EXITS, token=token, env={},  # type: ignore[arg-type]
                         log_path=tmp / "sidecar.log", log=lines.append, policy=policy)


def _check_until(keeper: SidecarKeeper, done: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        keeper.check()
        time.sleep(0.01)
    assert done(), "condition not reached in time"  # type: ignore[operator]


def test_an_unreachable_control_plane_is_waited_for_without_counting(tmp_path: Path) -> None:
    """No join token because the control plane is away (restarting, say): retried with
    backoff, never counted as the sidecar's failure; two real fast failures end it."""
    answers: list[str] = []
    unreachable = 4

    def token() -> str:
        nonlocal unreachable
        if answers and unreachable:
            unreachable -= 1
            raise ControlUnreachable("http://127.0.0.1:9", "connection refused")
        answers.append("tok")
        return "tok"

    lines: list[str] = []
    keeper = _keeper(tmp_path, RestartPolicy(backoff=0.01, max_backoff=0.05, fast_failure=30,
                                             max_fast_failures=2), token, lines)
    keeper.start()
    with pytest.raises(SidecarGaveUp, match="failed 2 times in a row"):
        _check_until(keeper, lambda: False)
    assert unreachable == 0 and answers == ["tok", "tok"]
    assert sum("could not get a join token" in line for line in lines) == 4, lines
    keeper.stop()


def test_slow_failures_restart_forever_at_the_first_backoff(tmp_path: Path) -> None:
    """A sidecar that ran longer than ``fast_failure`` before it died is not a fast failure:
    restarted each time after the first backoff, never given up on."""
    lines: list[str] = []
    keeper = _keeper(tmp_path, RestartPolicy(backoff=0.01, max_backoff=5, fast_failure=0,
                                             max_fast_failures=2), lambda: "tok", lines)
    keeper.start()
    _check_until(keeper, lambda: keeper.restarts >= 6)
    keeper.stop()
    delays = [line.rpartition("restarting in ")[2] for line in lines if "restarting in" in line]
    assert len(delays) >= 5 and set(delays) == {"0.01 s"}, lines
