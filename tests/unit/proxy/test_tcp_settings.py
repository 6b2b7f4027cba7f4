"""How TCP upstreams are configured: proxy settings, mesh file, runner environment, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gossamer.cli.app import app
from gossamer.local.launch import SidecarConfig, sidecar_env, upstream_env
from gossamer.local.meshfile import MeshFileError, parse_mesh_text
from gossamer.proxy.process.settings import (
    Address,
    ProxySettings,
    SettingsError,
    Upstream,
    parse_upstreams,
)

BASE_ENV = {"GOSSAMER_PROXY_SERVICE": "app", "GOSSAMER_PROXY_WORKDIR": "/tmp/x"}


class TestProxySettings:
    def test_upstreams_parse_with_host_or_bare_port(self) -> None:
        """``db=127.0.0.1:15432,cache.prod=16379``: a bare port listens on 127.0.0.1."""
        assert parse_upstreams("db=127.0.0.1:15432, cache.prod=16379") == (
            Upstream("db", Address("127.0.0.1", 15432)),
            Upstream("cache.prod", Address("127.0.0.1", 16379)),
        )

    def test_local_uids_and_connection_cap_parse(self) -> None:
        """GOSSAMER_PROXY_LOCAL_UIDS (who may use the local ports) and MAX_CONNECTIONS."""
        env = {**BASE_ENV, "GOSSAMER_PROXY_LOCAL_UIDS": "1000, 0",
               "GOSSAMER_PROXY_MAX_CONNECTIONS": "10"}  # fmt: skip
        listen = ProxySettings.from_env(env).listen
        assert listen.local_uids == frozenset({0, 1000})
        assert listen.max_connections == 10
        assert ProxySettings.from_env(BASE_ENV).listen.local_uids is None
        with pytest.raises(SettingsError, match="GOSSAMER_PROXY_LOCAL_UIDS"):
            ProxySettings.from_env({**BASE_ENV, "GOSSAMER_PROXY_LOCAL_UIDS": "root"})

    def test_environment_variable_reaches_the_listen_settings(self) -> None:
        """GOSSAMER_PROXY_UPSTREAMS fills ``listen.upstreams``; absent means none."""
        env = {**BASE_ENV, "GOSSAMER_PROXY_UPSTREAMS": "db=15432"}
        assert ProxySettings.from_env(env).listen.upstreams == (
            Upstream("db", Address("127.0.0.1", 15432)),
        )
        assert ProxySettings.from_env(BASE_ENV).listen.upstreams == ()

    @pytest.mark.parametrize(
        "text", ["db", "db=", "=15432", "Db_x=1", "db=host:port", "db=1,db=2", "a.b.c=1"]
    )
    def test_malformed_upstreams_are_refused(self, text: str) -> None:
        """Each malformed entry is a settings error naming the variable."""
        with pytest.raises(SettingsError, match="GOSSAMER_PROXY_UPSTREAMS"):
            parse_upstreams(text)


MESH = """
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {name: shop}
spec:
  services:
    - name: orders
      replicas: REPLICAS
      command: ["{python}", "-c", "pass"]
      upstreams: [{service: db, port: 15432}]
"""


class TestMeshFile:
    def test_upstreams_are_read_per_service(self) -> None:
        """A service's ``upstreams`` list is part of its spec."""
        mesh = parse_mesh_text(MESH.replace("REPLICAS", "1"))
        (upstream,) = mesh.mesh.spec.services[0].upstreams
        assert (upstream.service, upstream.port) == ("db", 15432)

    def test_replica_ports_that_collide_are_refused(self) -> None:
        """Replica i listens on port + i: a collision with another port is an error."""
        text = MESH.replace("REPLICAS", "2").replace(
            "spec:\n", "spec:\n  controlPlane: {apiPort: 15433}\n"
        )
        with pytest.raises(MeshFileError, match="port 15433 is also used"):
            parse_mesh_text(text)

    def test_upstream_service_must_be_a_service_name(self) -> None:
        """Only ``name`` or ``name.namespace`` is accepted."""
        with pytest.raises(MeshFileError, match="upstreams"):
            parse_mesh_text(MESH.replace("REPLICAS", "1").replace("service: db", "service: DB!"))


class TestRunnerEnvironment:
    def test_sidecar_gets_its_upstream_listeners(self) -> None:
        """The runner's sidecar environment is read back by the proxy settings."""
        config = SidecarConfig(
            service="orders", namespace="default", admin_port=4001,
            control_addr="127.0.0.1:15012", ca_file=Path("/ca.crt"), workdir=Path("/w"),
            app_port=4002, upstreams=(("db", 15432), ("cache", 16379)),
        )
        settings = ProxySettings.from_env(sidecar_env(config, "tok", {}))
        assert [(u.service, str(u.address)) for u in settings.listen.upstreams] == [
            ("db", "127.0.0.1:15432"), ("cache", "127.0.0.1:16379"),
        ]

    def test_app_is_told_where_its_upstreams_listen(self) -> None:
        """The app finds each upstream in GOSSAMER_UPSTREAM_<NAME>."""
        assert upstream_env((("db-main.prod", 15432),)) == {
            "GOSSAMER_UPSTREAM_DB_MAIN_PROD": "127.0.0.1:15432"
        }


class TestCli:
    def test_run_rejects_a_malformed_upstream(self, tmp_path: Path) -> None:
        """--upstream must be SERVICE=PORT; usage error exit code 2."""
        result = CliRunner().invoke(
            app,
            ["run", "--service", "x", "--port", "1", "--upstream", "db=somewhere:1",
             "--data-dir", str(tmp_path), "--", "true"],
        )
        assert result.exit_code == 2
        assert "--upstream: expected SERVICE=PORT" in result.stderr
