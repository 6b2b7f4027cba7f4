"""One sidecar kept running beside a command (``gossamer run``): started, watched, restarted.

A sidecar that exits is started again after a backoff (1 s, doubling to 30 s, as ``gossamer
up`` does) with a fresh join token and the same settings, so its ports, and the command's
``HTTP_PROXY``, stay the same. An exit soon after a start is a fast failure; after
``max_fast_failures`` of them in a row ``check`` raises ``SidecarGaveUp``. A control plane that
cannot be reached for the new join token is waited for (with the same backoff) without counting:
the sidecar did not fail, and a restarting control plane must not end a batch job.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gossamer.local.client import ControlError, ControlUnreachable
from gossamer.local.launch import Probe, SidecarConfig, http_ok, sidecar_env, wait_for
from gossamer.local.procs import ProcessRef, proc_start_time, spawn, stop_all, tail
from gossamer.local.runner import Log, StartupError

__all__ = ["RestartPolicy", "SidecarGaveUp", "SidecarKeeper"]

STOP_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a sidecar, and when to stop trying."""

    backoff: float = 1.0  # before the first restart; doubles while the failures are fast
    max_backoff: float = 30.0
    fast_failure: float = 10.0  # an exit within this many seconds of the start is fast
    max_fast_failures: int = 5  # this many fast failures in a row: give up


class SidecarGaveUp(StartupError):
    """The sidecar kept failing right after its start; the run is over."""


class SidecarKeeper:
    """Starts one sidecar, restarts it when it exits (``check``), and stops it."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        argv: Sequence[str],
        token: Callable[[], str],
        env: Mapping[str, str],
        log_path: Path,
        log: Log,
        policy: RestartPolicy,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._argv = list(argv)
        self._token = token
        self._env = dict(env)
        self._log = log
        self._policy = policy
        self._ref: ProcessRef | None = None
        self._started = 0.0
        self._restart_at: float | None = None
        self._backoff = policy.backoff
        self._fast_failures = 0
        self._awaiting_ready = False

    @property
    def name(self) -> str:
        return f"sidecar for {self.config.service}"

    @property
    def ready_url(self) -> str:
        return f"http://{self.config.admin_address}/ready"

    def start(self) -> int:
        """Start the sidecar with a fresh join token; its PID. Raises ``ControlError`` (no
        token) and ``StartupError`` (cannot be started)."""
        token = self._token()
        try:
            proc = spawn(self._argv, env=sidecar_env(self.config, token, self._env),
                         log_path=self.log_path)
        except OSError as exc:
            raise StartupError(f"cannot start the {self.name}: {exc}") from exc
        self.proc = proc
        self._ref = ProcessRef(proc.pid, proc_start_time(proc.pid))
        self._started = time.monotonic()
        return proc.pid

    def wait_ready(self, timeout: float) -> None:
        """Wait for the first start's /ready; ``StartupError`` with its log when it exits or
        takes longer than ``timeout``."""
        proc = self.proc
        assert proc is not None
        probe = Probe("sidecar", partial(http_ok, self.ready_url), lambda: proc.poll() is None)
        not_ready, dead = wait_for([probe], timeout=timeout)
        if dead or not_ready:
            why = "exited" if dead else f"was not ready within {timeout:.0f} s"
            raise StartupError(
                f"the sidecar {why}; last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def check(self) -> None:
        """Look after the sidecar; call it every fraction of a second while the command runs.
        Notices an exit, restarts after the backoff, says when a restarted one is ready.
        Raises ``SidecarGaveUp`` after too many fast failures in a row."""
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                self._restart()
            return
        proc = self.proc
        if proc is None:
            return
        code = proc.poll()
        if code is None:
            if self._awaiting_ready and http_ok(self.ready_url, timeout=0.5):
                self._awaiting_ready = False
                self._log(f"{self.name} ready again (pid {proc.pid}, "
                          f"{now - self._started:.1f} s after its start)")
            return
        self._failed(f"(pid {proc.pid}) exited with code {code}", fast=(
            now - self._started < self._policy.fast_failure))

    def _restart(self) -> None:
        self._restart_at = None
        self.restarts += 1
        try:
            pid = self.start()
        except ControlUnreachable as exc:
            self._schedule(f"could not get a join token ({exc})")
        except ControlError as exc:
            self._failed(f"could not get a join token ({exc})", fast=True)
        except StartupError as exc:
            self._failed(f"could not be started ({exc})", fast=True)
        else:
            self._awaiting_ready = True
            self._log(f"{self.name} restarted (pid {pid}, restart {self.restarts}, fresh join "
                      f"token, same ports: admin {self.config.admin_address})")

    def _failed(self, what: str, *, fast: bool) -> None:
        """Count a failure; give up after too many fast ones, else schedule a restart."""
        self._awaiting_ready = False
        if not fast:
            self._fast_failures = 0
            self._backoff = self._policy.backoff
        else:
            self._fast_failures += 1
            if self._fast_failures >= self._policy.max_fast_failures:
                raise SidecarGaveUp(
                    f"the {self.name} failed {self._fast_failures} times in a row, each "
                    f"within {self._policy.fast_failure:g} s of its start (last: the sidecar "
                    f"{what}); giving up and stopping the command; last lines of "
                    f"{self.log_path}:\n"
                    f"{tail(self.log_path) or '(empty log)'}"
                )
            if self._fast_failures == 1:
                self._backoff = self._policy.backoff
        self._schedule(what)

    def _schedule(self, what: str) -> None:
        delay = self._backoff
        self._restart_at = time.monotonic() + delay
        self._backoff = min(self._backoff * 2, self._policy.max_backoff)
        self._log(f"{self.name} {what}; restarting in {delay:g} s")

    def stop(self) -> None:
        """SIGTERM the sidecar (if it runs), SIGKILL after the grace period."""
        if self.proc is not None and self._ref is not None:
            stop_all([self._ref], grace=STOP_GRACE, children={self.proc.pid: self.proc})
