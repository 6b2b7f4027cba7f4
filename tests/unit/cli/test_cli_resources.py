"""`gossamer apply / get / delete` against a fake config API: requests sent and output shown."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from fake_api import FakeApi, fake_api

from gossamer.cli.app import app

runner = CliRunner()

PROXY = {
    "proxy_id": "catalog-5f3a", "service": "catalog", "namespace": "default",
    "identity": "spiffe://gossamer.local/ns/default/sa/catalog", "address": "127.0.0.1",
    "inbound_port": 41234, "admin_address": "127.0.0.1:41235", "labels": {"version": "v1"},
    "config_version": 3, "acked_version": 3, "ack_state": "ACK", "nack_error": None,
    "cert_expiry": "2999-01-01T00:00:00Z", "connected_since": "2024-01-01T00:00:00Z",
    "healthy": True,
}
SERVICE_DOC = {"apiVersion": "gossamer.dev/v1alpha1", "kind": "Service",
               "metadata": {"name": "catalog", "namespace": "default", "revision": 7,
                            "generation": 1}, "spec": {"ports": [{"port": 80}]}}


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    monkeypatch.delenv("GOSSAMER_TOKEN", raising=False)
    monkeypatch.delenv("GOSSAMER_CONTROL_URL", raising=False)
    monkeypatch.setenv("GOSSAMER_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin.token").write_text("secret-token\n")
    with fake_api() as fake:
        monkeypatch.setenv("GOSSAMER_CONTROL_URL", fake.url)
        yield fake


def test_apply_prints_one_line_per_resource(api: FakeApi, tmp_path: Path) -> None:
    """Each applied resource is reported as kind/name action."""
    api.answer("POST", "/v1/resources", 200, {"applied": [
        {"kind": "Service", "namespace": "default", "name": "catalog", "action": "created",
         "revision": 1},
        {"kind": "Service", "namespace": "default", "name": "orders", "action": "unchanged",
         "revision": 1}]})
    file = tmp_path / "svc.yaml"
    file.write_text("kind: Service\n")
    result = runner.invoke(app, ["apply", "-f", str(file)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["service/catalog created", "service/orders unchanged"]


def test_apply_sends_the_token_from_the_data_dir_and_yaml_type(api: FakeApi,
                                                               tmp_path: Path) -> None:
    """The admin token file is used as the bearer token; YAML goes as application/yaml."""
    api.answer("POST", "/v1/resources", 200, {"applied": []})
    file = tmp_path / "svc.yaml"
    file.write_text("kind: Service\n")
    runner.invoke(app, ["apply", "-f", str(file)])
    assert api.seen[-1].headers["authorization"] == "Bearer secret-token"
    assert api.seen[-1].headers["content-type"] == "application/yaml"
    assert api.seen[-1].body == b"kind: Service\n"


def test_apply_reads_json_from_stdin(api: FakeApi) -> None:
    """`-f -` reads stdin; JSON text goes as application/json."""
    api.answer("POST", "/v1/resources", 200, {"applied": []})
    result = runner.invoke(app, ["apply", "-f", "-"], input='[{"kind": "Service"}]')
    assert result.exit_code == 0, result.output
    assert api.seen[-1].headers["content-type"] == "application/json"


def test_apply_invalid_lists_every_error_and_fails(api: FakeApi, tmp_path: Path) -> None:
    """A 422 prints `document i (Kind/name): path: message` per error, exit code 1."""
    api.answer("POST", "/v1/resources", 422, {"error": "invalid", "errors": [
        {"document": 0, "kind": "Service", "name": "catalog", "path": "spec.ports[0].port",
         "message": "Input should be less than or equal to 65535"},
        {"document": 1, "kind": "Service", "name": "orders", "path": "spec.calls[0]",
         "message": "bad ref"}]})
    file = tmp_path / "svc.yaml"
    file.write_text("kind: Service\n")
    result = runner.invoke(app, ["apply", "-f", str(file)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "document 0 (Service/catalog): spec.ports[0].port: Input should be less than or "
        "equal to 65535",
        "document 1 (Service/orders): spec.calls[0]: bad ref"]


def test_apply_missing_file_is_a_clear_error(api: FakeApi, tmp_path: Path) -> None:
    """A missing file fails with its name, no traceback."""
    result = runner.invoke(app, ["apply", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.output


def test_unreachable_control_plane_says_how_to_start_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No control plane: a one-line error naming the URL and `gossamer up`, exit 1."""
    monkeypatch.setenv("GOSSAMER_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["get", "proxies", "--control-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "control plane not reachable at http://127.0.0.1:9" in result.stderr
    assert "gossamer up" in result.stderr


def test_unauthorized_explains_where_the_token_comes_from(api: FakeApi) -> None:
    """A 401 is explained, exit 1."""
    api.answer("GET", "/v1/proxies", 401, {"error": "unauthorized", "message": "bad token"})
    result = runner.invoke(app, ["get", "proxies"])
    assert result.exit_code == 1
    assert "unauthorized: bad token" in result.stderr and "GOSSAMER_TOKEN" in result.stderr


def test_get_proxies_table_shows_the_columns(api: FakeApi) -> None:
    """The proxies table has service, id, identity, admin, version, ack and expiry."""
    api.answer("GET", "/v1/proxies", 200, {"items": [PROXY]})
    result = runner.invoke(app, ["get", "proxies"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()[:2]
    for column in ("SERVICE", "PROXY ID", "IDENTITY", "ADMIN", "CONFIG", "ACK", "CERT EXPIRY"):
        assert column in header
    for value in ("catalog", "catalog-5f3a", "sa/catalog", "127.0.0.1:41235", "3/3", "ACK",
                  "2999-01-01"):
        assert value in row


def test_get_proxies_json_is_the_items_list(api: FakeApi) -> None:
    """-o json prints {"items": [...]} exactly as the API gave them."""
    api.answer("GET", "/v1/proxies", 200, {"items": [PROXY]})
    result = runner.invoke(app, ["get", "proxies", "-o", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"items": [PROXY]}


def test_get_one_resource_as_yaml(api: FakeApi) -> None:
    """get KIND NAME -o yaml prints the stored document (default namespace)."""
    api.answer("GET", "/v1/resources/service/default/catalog", 200, SERVICE_DOC)
    result = runner.invoke(app, ["get", "Service", "catalog", "-o", "yaml"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout) == SERVICE_DOC


def test_get_list_passes_the_namespace(api: FakeApi) -> None:
    """-n becomes ?namespace=; the table shows kind, namespace, name and revision."""
    api.answer("GET", "/v1/resources/services?namespace=shop", 200, {"items": [SERVICE_DOC]})
    result = runner.invoke(app, ["get", "services", "-n", "shop"])
    assert result.exit_code == 0, result.output
    assert "catalog" in result.stdout and "7" in result.stdout


def test_get_missing_resource_fails(api: FakeApi) -> None:
    """A 404 is a clear not-found, exit 1."""
    result = runner.invoke(app, ["get", "service", "nope"])
    assert result.exit_code == 1
    assert "service/nope not found in namespace default" in result.stderr


def test_delete_reports_deleted(api: FakeApi) -> None:
    """delete KIND NAME -n NS calls DELETE on the namespaced path."""
    api.answer("DELETE", "/v1/resources/services/shop/catalog", 200, {"deleted": SERVICE_DOC})
    result = runner.invoke(app, ["delete", "services", "catalog", "-n", "shop"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "service/catalog deleted"


def test_gossamer_token_env_wins_over_the_file(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GOSSAMER_TOKEN is preferred to <data-dir>/admin.token."""
    monkeypatch.setenv("GOSSAMER_TOKEN", "from-env")
    api.answer("GET", "/v1/proxies", 200, {"items": []})
    result = runner.invoke(app, ["get", "proxies"])
    assert result.exit_code == 0
    assert api.seen[-1].headers["authorization"] == "Bearer from-env"
