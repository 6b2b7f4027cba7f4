"""Where things live: the data directory layout and the defaults for reaching the control plane.

The layout is fixed by docs/internals.md §2; this module is the one place that spells it out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_API_PORT",
    "DEFAULT_CONTROL_URL",
    "DEFAULT_STREAM_ADDR",
    "DEFAULT_STREAM_PORT",
    "DataDir",
    "default_data_dir",
    "resolve_token",
]

DEFAULT_API_PORT = 15010
DEFAULT_STREAM_PORT = 15012
DEFAULT_CONTROL_URL = f"http://127.0.0.1:{DEFAULT_API_PORT}"
DEFAULT_STREAM_ADDR = f"127.0.0.1:{DEFAULT_STREAM_PORT}"


def default_data_dir() -> Path:
    """``$GOSSAMER_DATA_DIR`` when set, else ``~/.gossamer``."""
    env = os.environ.get("GOSSAMER_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".gossamer"


def mesh_ca_file(root: Path) -> Path | None:
    """The mesh's root certificate a client trusts: ``$GOSSAMER_CA_FILE``, else the data
    directory's own (on the control plane's machine); None when neither exists. Never
    fetched over the network: whoever answers a fetch could hand out its own root."""
    env = os.environ.get("GOSSAMER_CA_FILE")
    if env:
        return Path(env).expanduser()
    path = root / "ca" / "root.crt"
    return path if path.is_file() else None


@dataclass(frozen=True, slots=True)
class DataDir:
    """The files of one data directory (shared by the control plane and the local runner)."""

    root: Path

    @property
    def token_file(self) -> Path:
        return self.root / "admin.token"

    @property
    def ca_file(self) -> Path:
        return self.root / "ca" / "root.crt"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def proxies_dir(self) -> Path:
        return self.run_dir / "proxies"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "mesh.json"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def workdir(self, name: str) -> Path:
        return self.proxies_dir / name

    def create(self) -> None:
        """Create the root (mode 0700) and the run/ subdirectories."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in (self.run_dir, self.logs_dir, self.proxies_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)


def resolve_token(data_dir: Path) -> str | None:
    """The admin token: ``$GOSSAMER_TOKEN``, else ``<data-dir>/admin.token``, else None."""
    env = os.environ.get("GOSSAMER_TOKEN")
    if env:
        return env.strip()
    try:
        text = DataDir(data_dir).token_file.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None
