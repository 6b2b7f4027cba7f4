"""``gossamer run`` never takes the mesh's root of trust from the network (finding 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gossamer.local.join import JoinSpec, run_joined
from gossamer.local.runner import StartupError


class RecordingClient:
    """Stands for the API client; any call is recorded (and would be a fetch)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return "-----BEGIN CERTIFICATE-----\nforged\n-----END CERTIFICATE-----\n"

        return call


def test_run_without_a_local_root_refuses_instead_of_fetching_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a data directory without ca/root.crt made ``run`` fetch the trust bundle
    over the (plain HTTP) API and trust whatever came back."""
    monkeypatch.delenv("GOSSAMER_CA_FILE", raising=False)
    client = RecordingClient()
    with pytest.raises(StartupError) as refused:
        run_joined(
            JoinSpec(service="web", app_port=1, command=("true",)),
            client=client,  # type: ignore[arg-type]
            data_dir=tmp_path / "data", stream_addr="127.0.0.1:1", log=lambda line: None,
        )  # fmt: skip
    assert "GOSSAMER_CA_FILE" in str(refused.value)
    assert client.calls == []


def test_run_uses_the_root_named_by_gossamer_ca_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gossamer.local.join import _ca_file
    from gossamer.local.paths import DataDir

    root = tmp_path / "copied-root.crt"
    root.write_text("pem")
    monkeypatch.setenv("GOSSAMER_CA_FILE", str(root))
    assert _ca_file(DataDir(tmp_path / "elsewhere")) == root
