"""The mesh file model: what is accepted, and how refusals name the field."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gossamer.local.meshfile import (
    MeshFileError,
    expand_command,
    format_loc,
    load_mesh_file,
    max_workers,
    parse_mesh_text,
    with_ports,
)

REPO = Path(__file__).resolve().parents[3]

MINIMAL = """
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {name: shop}
spec:
  services:
    - name: web
      command: ["{python}", "-m", "http.server", "{port}"]
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(MeshFileError) as info:
        parse_mesh_text(text)
    return list(info.value.errors)


def test_storefront_example_is_valid() -> None:
    """The shipped storefront mesh file loads: four services, catalog with two v1 replicas
    and a v2 canary group of one (``service: catalog``)."""
    mesh = load_mesh_file(REPO / "examples/storefront/mesh.yaml")
    services = {s.name: s for s in mesh.mesh.spec.services}
    assert set(services) == {"frontend", "catalog", "catalog-v2", "orders", "payments"}
    assert services["catalog"].replicas == 2
    canary = services["catalog-v2"]
    assert (canary.service_name, canary.replicas, canary.labels) == (
        "catalog", 1, {"version": "v2"}
    )
    assert mesh.mesh.spec.ingress is not None and mesh.mesh.spec.ingress.service == "frontend"
    assert [r["kind"] for r in mesh.resources] == ["Service"] * 4


def test_defaults_fill_control_plane_ports_and_replicas() -> None:
    """A minimal mesh gets the default control plane ports, one replica and no ingress."""
    mesh = parse_mesh_text(MINIMAL)
    assert mesh.mesh.spec.control_plane.api_port == 15010
    assert mesh.mesh.spec.control_plane.stream_port == 15012
    assert mesh.mesh.spec.services[0].replicas == 1
    assert mesh.mesh.spec.ingress is None
    assert mesh.namespace_of(mesh.mesh.spec.services[0]) == "default"


def test_unknown_field_is_refused_with_its_path() -> None:
    """An unknown key inside a service is named with the document and its full path."""
    errors = _errors(MINIMAL + "      replica: 3\n")
    assert len(errors) == 1
    assert errors[0].startswith("document 0 (Mesh/shop): spec.services[0].replica: ")


def test_bad_replicas_names_the_field() -> None:
    """replicas: 0 is refused at spec.services[0].replicas."""
    errors = _errors(MINIMAL + "      replicas: 0\n")
    assert any("spec.services[0].replicas:" in line for line in errors)


def test_ingress_must_point_at_a_known_service() -> None:
    """The ingress default service must be one of the mesh's services."""
    errors = _errors(MINIMAL.replace("spec:\n", "spec:\n  ingress: {port: 9000, service: nope}\n"))
    assert any("spec.ingress.service:" in line and "'nope'" in line for line in errors)


def test_duplicate_service_names_are_refused() -> None:
    """Two services with one name are refused."""
    text = MINIMAL + "    - name: web\n      command: [x]\n"
    assert any("duplicate service name(s): web" in line for line in _errors(text))


def test_port_clash_between_ingress_and_api_is_refused() -> None:
    """The ingress cannot listen on the control plane's API port."""
    text = MINIMAL.replace("spec:\n", "spec:\n  ingress: {port: 15010, service: web}\n")
    assert any("ingress.port: port 15010" in line for line in _errors(text))


def test_empty_service_list_is_refused() -> None:
    """A mesh needs at least one service."""
    text = MINIMAL.split("  services:")[0] + "  services: []\n"
    assert _errors(text) == [
        "document 0 (Mesh/shop): spec.services: at least one service is required"]


def test_first_document_must_be_a_mesh() -> None:
    """A file that starts with another kind is refused."""
    errors = _errors("apiVersion: gossamer.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\n")
    assert errors == ["document 0 (Service/a): the first document must be `kind: Mesh`"]


def test_extra_documents_become_resources() -> None:
    """Documents after the Mesh are kept as resources, in order."""
    text = MINIMAL + (
        "---\napiVersion: gossamer.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n"
    )
    mesh = parse_mesh_text(text)
    assert mesh.resources == ({"apiVersion": "gossamer.dev/v1alpha1", "kind": "Service",
                               "metadata": {"name": "web"}},)


def test_extra_document_without_kind_is_refused() -> None:
    """A later document needs a kind."""
    errors = _errors(MINIMAL + "---\nmetadata: {name: x}\n")
    assert errors == ["document 1 (?/x): kind: field required"]


def test_invalid_yaml_is_reported() -> None:
    """Broken YAML is reported as such, not as a traceback."""
    assert "not valid YAML" in _errors("kind: [unclosed\n")[0]


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A missing file is a MeshFileError naming the path."""
    with pytest.raises(MeshFileError, match="cannot read"):
        load_mesh_file(tmp_path / "nope.yaml")


def test_expand_command_replaces_python_and_port() -> None:
    """{python} is this interpreter, {port} the app port."""
    assert expand_command(["{python}", "-m", "x", "--port={port}"], port=4242) == [
        sys.executable, "-m", "x", "--port=4242"]


def test_format_loc_mixes_names_and_indexes() -> None:
    """Locations read like field paths."""
    assert format_loc(("spec", "services", 1, "replicas")) == "spec.services[1].replicas"


def test_sidecar_workers_per_service_and_for_the_ingress() -> None:
    """Issue 12 item 8: `sidecar: {workers: N}` per service and `workers: N` on the ingress;
    both default to one worker."""
    text = MINIMAL.replace("spec:\n", "spec:\n  ingress: {port: 9000, service: web, workers: 2}\n")
    mesh = parse_mesh_text(text + "      sidecar: {workers: 3}\n")
    assert mesh.mesh.spec.services[0].sidecar.workers == 3
    assert mesh.mesh.spec.ingress is not None and mesh.mesh.spec.ingress.workers == 2
    plain = parse_mesh_text(MINIMAL.replace("spec:\n", "spec:\n  ingress: {service: web}\n"))
    assert plain.mesh.spec.services[0].sidecar.workers == 1
    assert plain.mesh.spec.ingress is not None and plain.mesh.spec.ingress.workers == 1


def test_sidecar_workers_out_of_range_name_the_field() -> None:
    """Zero workers, or more than four per CPU, are refused with the field's path."""
    assert any(line.startswith("document 0 (Mesh/shop): spec.services[0].sidecar.workers: ")
               and "at least 1" in line
               for line in _errors(MINIMAL + "      sidecar: {workers: 0}\n"))
    too_many = max_workers() + 1
    text = MINIMAL.replace("spec:\n", f"spec:\n  ingress: {{service: web, workers: {too_many}}}\n")
    errors = _errors(text)
    assert any(line.startswith("document 0 (Mesh/shop): spec.ingress.workers: ")
               and f"at most {max_workers()}" in line and "CPU" in line
               for line in errors), errors
    assert any("spec.services[0].sidecar.colour" in line
               for line in _errors(MINIMAL + "      sidecar: {colour: red}\n"))


def test_port_overrides_replace_the_mesh_files_ports() -> None:
    """Issue 12 item 10: `up --api-port/--stream-port/--ingress-port` win over the file and
    are remembered as given on the command line."""
    mesh = parse_mesh_text(MINIMAL.replace("spec:\n", "spec:\n  ingress: {service: web}\n"))
    moved = with_ports(mesh, api_port=25010, stream_port=25012, ingress_port=28080)
    assert moved.mesh.spec.control_plane.api_port == 25010
    assert moved.mesh.spec.control_plane.stream_port == 25012
    assert moved.mesh.spec.ingress is not None and moved.mesh.spec.ingress.port == 28080
    assert moved.mesh.spec.ingress.service == "web"
    assert moved.port_flags == {"controlPlane.apiPort": "--api-port",
                                "controlPlane.streamPort": "--stream-port",
                                "ingress.port": "--ingress-port"}
    assert with_ports(mesh) is mesh


def test_port_overrides_are_checked() -> None:
    """A clash, a port out of range, or an ingress port for a mesh without an ingress is
    refused, naming the flag."""
    mesh = parse_mesh_text(MINIMAL.replace("spec:\n", "spec:\n  ingress: {service: web}\n"))
    with pytest.raises(MeshFileError) as clash:
        with_ports(mesh, ingress_port=15012)
    assert clash.value.errors == (
        "--ingress-port: port 15012 is also used by controlPlane.streamPort",)
    with pytest.raises(MeshFileError) as both:
        with_ports(mesh, api_port=9000, stream_port=9000)
    assert both.value.errors == ("--stream-port: port 9000 is also used by --api-port",)
    with pytest.raises(MeshFileError) as wide:
        with_ports(mesh, api_port=0)
    assert wide.value.errors == ("--api-port: port 0 is not in 1..65535",)
    with pytest.raises(MeshFileError) as none:
        with_ports(parse_mesh_text(MINIMAL), ingress_port=9000)
    assert none.value.errors[0].startswith("--ingress-port: the mesh file has no ingress")


def test_a_group_names_the_service_it_serves() -> None:
    """Two groups of one service (a canary): processes are named by group, the ingress may
    name the service; group names stay unique."""
    text = """
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {name: shop}
spec:
  ingress: {port: 18080, service: web}
  services:
    - {name: web, command: [x], labels: {version: v1}}
    - {name: web-v2, service: web, command: [x], labels: {version: v2}}
"""
    mesh = parse_mesh_text(text)
    assert {s.name: s.service_name for s in mesh.mesh.spec.services} == {
        "web": "web", "web-v2": "web"
    }  # fmt: skip
    assert any("duplicate" in e for e in _errors(text.replace("name: web-v2", "name: web")))
