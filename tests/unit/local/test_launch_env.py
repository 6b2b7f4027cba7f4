"""Environments of the processes the runner starts (sidecar settings, app proxy variables)."""

from __future__ import annotations

from pathlib import Path

from gossamer.local.launch import SidecarConfig, app_env, base_env, sidecar_env
from gossamer.proxy.process.settings import ProxySettings


def _config(**changes: object) -> SidecarConfig:
    values: dict[str, object] = dict(
        service="catalog", namespace="default", admin_port=4001, control_addr="127.0.0.1:15012",
        ca_file=Path("/d/ca/root.crt"), workdir=Path("/d/run/proxies/catalog-0"),
        app_port=4002, outbound_port=4003, inbound_port=4004, labels={"version": "v1"},
    )
    values.update(changes)
    return SidecarConfig(**values)  # type: ignore[arg-type]


def test_sidecar_env_is_understood_by_the_proxy_settings() -> None:
    """The proxy's own settings parser reads back what the runner wrote."""
    env = sidecar_env(_config(), "tok-1", {"PATH": "/bin"})
    settings = ProxySettings.from_env(env)
    assert settings.workload.service == "catalog"
    assert str(settings.workload.app) == "127.0.0.1:4002"
    assert str(settings.listen.outbound) == "127.0.0.1:4003"
    assert str(settings.listen.inbound) == "127.0.0.1:4004"
    assert str(settings.listen.admin) == "127.0.0.1:4001"
    assert settings.control.join_token == "tok-1"
    assert settings.control.ca_file == Path("/d/ca/root.crt")
    assert dict(settings.workload.labels) == {"version": "v1"}


def test_gateway_env_has_no_app_and_no_inbound() -> None:
    """The ingress gateway: outbound on its port, inbound off, a default service, no app."""
    env = sidecar_env(_config(service="ingress", app_port=None, inbound_port=None,
                              outbound_port=8089, default_service="frontend", labels={}),
                      "tok", {})
    settings = ProxySettings.from_env(env)
    assert settings.workload.app is None
    assert settings.listen.inbound is None
    assert settings.listen.default_service == "frontend"
    assert str(settings.listen.outbound) == "127.0.0.1:8089"


def test_sidecar_env_drops_inherited_proxy_settings() -> None:
    """Settings of some other sidecar in the parent's environment do not leak in."""
    env = sidecar_env(_config(), "tok", {"GOSSAMER_PROXY_DEFAULT_SERVICE": "x",
                                         "HTTP_PROXY": "http://elsewhere"})
    assert "GOSSAMER_PROXY_DEFAULT_SERVICE" not in env and "HTTP_PROXY" not in env


def test_app_env_points_http_proxy_at_the_sidecar() -> None:
    """Apps get PORT, every proxy variable common clients read (issue 15: http_proxy,
    https_proxy and grpc_proxy, upper case too but for grpc_proxy) at the sidecar, and a
    NO_PROXY that keeps the user's entries (issue 12, item 6: it was emptied, so calls to this
    machine went to the sidecar and got 404 unknown-service), but ``*``, and always exempts
    loopback. The parent's own proxy settings, no_grpc_proxy included, are not inherited."""
    env = app_env(port=5000, outbound_port=5001,
                  parent={"NO_PROXY": "*, .corp.example,10.0.0.0/8", "KEEP": "1",
                          "grpc_proxy": "http://corp-proxy:3128", "no_grpc_proxy": "*",
                          "ALL_PROXY": "socks5://corp"},
                  extra={"GOSSAMER_INSTANCE": "catalog-0"})  # fmt: skip
    assert env["PORT"] == "5000"
    proxy = "http://127.0.0.1:5001"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "grpc_proxy"):
        assert env[name] == proxy, name
    assert "no_grpc_proxy" not in env and "ALL_PROXY" not in env
    assert env["NO_PROXY"] == env["no_proxy"] == (
        ".corp.example,10.0.0.0/8,localhost,127.0.0.1,::1,127.0.0.0/8"
    )
    assert env["KEEP"] == "1" and env["GOSSAMER_INSTANCE"] == "catalog-0"


def test_base_env_makes_python_unbuffered() -> None:
    """Children write their logs line by line."""
    assert base_env({})["PYTHONUNBUFFERED"] == "1"


def test_the_admin_token_and_data_dir_reach_no_app_and_no_sidecar() -> None:
    """With GOSSAMER_TOKEN an app could mint join tokens for any identity (issue 11, finding
    5): neither it nor the data directory is passed to the processes the runner starts."""
    parent = {"GOSSAMER_TOKEN": "admin-secret", "GOSSAMER_DATA_DIR": "/d", "KEEP": "1"}
    for env in (
        sidecar_env(_config(), "tok", parent),
        app_env(port=5000, outbound_port=5001, parent=parent, extra={}),
        base_env(parent),
    ):
        assert "GOSSAMER_TOKEN" not in env and "GOSSAMER_DATA_DIR" not in env
        assert env["KEEP"] == "1"


def test_sidecar_env_sets_the_workers() -> None:
    """Issue 12 item 8: the runner's own GOSSAMER_PROXY_WORKERS reaches the sidecar (the
    parent's is still dropped) and the proxy's settings read it back."""
    env = sidecar_env(_config(workers=3), "tok", {"GOSSAMER_PROXY_WORKERS": "9"})
    assert ProxySettings.from_env(env).listen.workers == 3
    assert ProxySettings.from_env(sidecar_env(_config(), "tok", {})).listen.workers == 1


def test_client_only_sidecar_and_app_env() -> None:
    """Issue 12 item 5: a workload that serves nothing has no app, no inbound listener, and
    its command gets HTTP_PROXY but no PORT."""
    settings = ProxySettings.from_env(
        sidecar_env(_config(app_port=None, inbound_port=None), "tok", {}))
    assert settings.workload.app is None and settings.listen.inbound is None
    assert str(settings.listen.outbound) == "127.0.0.1:4003"
    env = app_env(port=None, outbound_port=5001, parent={"PORT": "80"})
    assert "PORT" not in env
    assert env["HTTP_PROXY"] == "http://127.0.0.1:5001"
