"""The mesh file: one ``kind: Mesh`` document that says what to run, then ordinary resources.

``load_mesh_file`` parses and validates it and returns a frozen ``MeshFile``; every problem is
reported as ``MeshFileError`` whose lines carry the document index and the field path
(``document 0 (Mesh/storefront): spec.services[1].replicas: ...``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gossamer.local.paths import DEFAULT_API_PORT, DEFAULT_STREAM_PORT

__all__ = [
    "API_VERSION",
    "ControlPlaneSpec",
    "IngressSpec",
    "MeshDocument",
    "MeshFile",
    "MeshFileError",
    "MeshServiceSpec",
    "MeshSpec",
    "MeshUpstream",
    "SidecarSpec",
    "expand_command",
    "format_loc",
    "load_mesh_file",
    "max_workers",
    "parse_mesh_text",
    "with_ports",
    "workers_problem",
]

API_VERSION = "gossamer.dev/v1alpha1"
_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(_NAME)
_SERVICE_REF = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_workers() -> int:
    """The most workers a sidecar may be given here (mesh file or ``run --workers``): four
    per CPU this process may run on. More only adds processes that wait for a CPU."""
    return 4 * _cpus()


def workers_problem(workers: int) -> str | None:
    """What is wrong with a sidecar's worker count, or None. (No ``": "`` in the text: the
    mesh file's errors read that as a field path.)"""
    if workers < 1:
        return f"must be at least 1, got {workers}"
    if workers > max_workers():
        cpus = _cpus()
        return (f"at most {max_workers()} (4 per CPU, {cpus} CPU{'s' if cpus != 1 else ''} "
                f"here), got {workers}")
    return None


class MeshFileError(ValueError):
    """The mesh file cannot be used; ``errors`` holds one readable line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MeshMetadata(_Model):
    name: str = Field(pattern=_NAME)
    namespace: str = Field(default="default", pattern=_NAME)


class ControlPlaneSpec(_Model):
    api_port: int = Field(default=DEFAULT_API_PORT, alias="apiPort", ge=1, le=65535)
    stream_port: int = Field(default=DEFAULT_STREAM_PORT, alias="streamPort", ge=1, le=65535)


def _check_workers(value: int) -> int:
    problem = workers_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class IngressSpec(_Model):
    port: int = Field(default=8080, ge=1, le=65535)
    service: str = Field(pattern=_NAME)
    workers: int = 1  # the gateway's GOSSAMER_PROXY_WORKERS

    _workers = field_validator("workers")(_check_workers)


class SidecarSpec(_Model):
    """Settings of a service's sidecars (each replica's)."""

    workers: int = 1  # GOSSAMER_PROXY_WORKERS: processes serving the data path

    _workers = field_validator("workers")(_check_workers)


class MeshUpstream(_Model):
    """A TCP service the app reaches at ``127.0.0.1:port`` (replica ``i``: ``port + i``),
    where its sidecar listens and relays to the service through its TCP route."""

    service: str = Field(pattern=_SERVICE_REF)
    port: int = Field(ge=1, le=65535)


class MeshServiceSpec(_Model):
    """One group of replicas. ``name`` names its processes (``<name>-<i>``); ``service`` is
    the mesh service they serve, ``name`` unless given: two groups of one service with other
    labels (``version: v2``) run a canary beside the stable replicas."""

    name: str = Field(pattern=_NAME)
    service: str | None = Field(default=None, pattern=_NAME)
    command: tuple[str, ...] = Field(min_length=1)
    replicas: int = Field(default=1, ge=1, le=32)
    namespace: str | None = Field(default=None, pattern=_NAME)
    labels: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    upstreams: tuple[MeshUpstream, ...] = ()
    sidecar: SidecarSpec = Field(default_factory=SidecarSpec)

    @property
    def service_name(self) -> str:
        return self.service or self.name


class MeshSpec(_Model):
    control_plane: ControlPlaneSpec = Field(default_factory=ControlPlaneSpec, alias="controlPlane")
    ingress: IngressSpec | None = None
    services: tuple[MeshServiceSpec, ...]

    @model_validator(mode="after")
    def _check_consistency(self) -> MeshSpec:
        if not self.services:
            raise ValueError("services: at least one service is required")
        names = [service.name for service in self.services]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"services: duplicate service name(s): {', '.join(duplicates)}")
        served = sorted({service.service_name for service in self.services})
        if self.ingress is not None and self.ingress.service not in served:
            raise ValueError(
                f"ingress.service: {self.ingress.service!r} is not one of the services "
                f"({', '.join(served)})"
            )
        for i, service in enumerate(self.services):
            for j, upstream in enumerate(service.upstreams):
                if upstream.port + service.replicas - 1 > 65535:
                    raise ValueError(f"services[{i}].upstreams[{j}].port: port + replica "
                                     "index passes 65535")
        clash = _first_clash(self.fixed_ports())
        if clash is not None:
            raise ValueError(clash)
        return self

    def fixed_ports(self) -> dict[str, int]:
        """Every port the mesh file fixes, by field path (inside ``spec``)."""
        ports = {"controlPlane.apiPort": self.control_plane.api_port,
                 "controlPlane.streamPort": self.control_plane.stream_port}
        if self.ingress is not None:
            ports["ingress.port"] = self.ingress.port
        for i, service in enumerate(self.services):
            for j, upstream in enumerate(service.upstreams):
                for replica in range(service.replicas):
                    where = f"services[{i}].upstreams[{j}].port"
                    ports[where + (f" (replica {replica})" if replica else "")] = (
                        upstream.port + replica
                    )
        return ports


def _first_clash(ports: Mapping[str, int]) -> str | None:
    """``"<where>: port N is also used by <other>"`` for the first port used twice."""
    seen: dict[int, str] = {}
    for where, port in ports.items():
        if port in seen:
            return f"{where}: port {port} is also used by {seen[port]}"
        seen[port] = where
    return None


class MeshDocument(_Model):
    api_version: Literal["gossamer.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Mesh"]
    metadata: MeshMetadata
    spec: MeshSpec


@dataclass(frozen=True, slots=True)
class MeshFile:
    """A validated mesh file: the Mesh document and the resources to apply after start."""

    mesh: MeshDocument
    resources: tuple[Mapping[str, Any], ...]
    source: str
    # Ports given on the command line (``with_ports``): field path → flag, for messages.
    port_flags: Mapping[str, str] = field(default_factory=dict)

    def namespace_of(self, service: MeshServiceSpec) -> str:
        return service.namespace or self.mesh.metadata.namespace


def format_loc(loc: Sequence[int | str]) -> str:
    """``("spec", "services", 1, "replicas")`` → ``spec.services[1].replicas``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(index: int, doc: Any) -> str:
    kind = name = "?"
    if isinstance(doc, Mapping):
        kind = str(doc.get("kind", "?"))
        metadata = doc.get("metadata")
        if isinstance(metadata, Mapping):
            name = str(metadata.get("name", "?"))
    return f"document {index} ({kind}/{name})"


def _validation_lines(where: str, exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        loc = format_loc([p for p in error["loc"] if isinstance(p, int | str)])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "value_error" and ": " in message:
            # model-level checks name their own field inside the spec
            inner, _, message = message.partition(": ")
            loc = f"{loc}.{inner}" if loc else inner
        lines.append(f"{where}: {loc}: {message}" if loc else f"{where}: {message}")
    return lines


def parse_mesh_text(text: str, source: str = "<mesh file>") -> MeshFile:
    """Parse and validate mesh file text; raise ``MeshFileError``."""
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise MeshFileError([f"{source}: not valid YAML: {exc}"]) from exc
    if not docs:
        raise MeshFileError([f"{source}: empty file; expected a `kind: Mesh` document first"])
    first = docs[0]
    if not isinstance(first, Mapping) or first.get("kind") != "Mesh":
        raise MeshFileError([f"{_describe(0, first)}: the first document must be `kind: Mesh`"])
    errors: list[str] = []
    mesh: MeshDocument | None = None
    try:
        mesh = MeshDocument.model_validate(first)
    except ValidationError as exc:
        errors.extend(_validation_lines(_describe(0, first), exc))
    resources: list[Mapping[str, Any]] = []
    for index, doc in enumerate(docs[1:], start=1):
        if not isinstance(doc, Mapping):
            errors.append(f"document {index}: expected a mapping, got {type(doc).__name__}")
        elif not isinstance(doc.get("kind"), str) or not doc.get("kind"):
            errors.append(f"{_describe(index, doc)}: kind: field required")
        elif doc.get("kind") == "Mesh":
            errors.append(f"{_describe(index, doc)}: only the first document may be a Mesh")
        elif not isinstance(doc.get("metadata"), Mapping):
            errors.append(f"{_describe(index, doc)}: metadata: field required")
        else:
            resources.append(dict(doc))
    if errors or mesh is None:
        raise MeshFileError(errors)
    return MeshFile(mesh=mesh, resources=tuple(resources), source=source)


def load_mesh_file(path: Path) -> MeshFile:
    """Read and validate the mesh file at ``path``; raise ``MeshFileError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MeshFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_mesh_text(text, source=str(path))


def expand_command(command: Sequence[str], *, port: int) -> list[str]:
    """Replace ``{python}`` by this interpreter and ``{port}`` by the app port."""
    return [
        part.replace("{python}", sys.executable).replace("{port}", str(port))
        for part in command
    ]


_PORT_FLAGS = {"controlPlane.apiPort": "--api-port", "controlPlane.streamPort": "--stream-port",
               "ingress.port": "--ingress-port"}


def with_ports(
    mesh: MeshFile,
    *,
    api_port: int | None = None,
    stream_port: int | None = None,
    ingress_port: int | None = None,
) -> MeshFile:
    """``mesh`` with the ports given on the command line (``gossamer up --api-port`` ...) in
    place of the file's; raise ``MeshFileError`` naming the flag when one cannot be used."""
    given = {where: port for where, port in zip(
        _PORT_FLAGS, (api_port, stream_port, ingress_port), strict=True) if port is not None}
    if not given:
        return mesh
    spec = mesh.mesh.spec
    errors = [f"{_PORT_FLAGS[where]}: port {port} is not in 1..65535"
              for where, port in given.items() if not 1 <= port <= 65535]
    if "ingress.port" in given and spec.ingress is None:
        errors.append(f"--ingress-port: the mesh file has no ingress ({mesh.source})")
    if errors:
        raise MeshFileError(errors)
    control = spec.control_plane.model_copy(update={
        "api_port": given.get("controlPlane.apiPort", spec.control_plane.api_port),
        "stream_port": given.get("controlPlane.streamPort", spec.control_plane.stream_port),
    })
    ingress = spec.ingress
    if ingress is not None and "ingress.port" in given:
        ingress = ingress.model_copy(update={"port": given["ingress.port"]})
    moved = spec.model_copy(update={"control_plane": control, "ingress": ingress})
    ports = moved.fixed_ports()
    # the file's own ports first, so that a clash is reported on the flag
    named = {where: port for where, port in ports.items() if where not in given}
    named.update({_PORT_FLAGS[where]: ports[where] for where in given})
    clash = _first_clash(named)
    if clash is not None:
        raise MeshFileError([clash])
    return MeshFile(
        mesh=mesh.mesh.model_copy(update={"spec": moved}), resources=mesh.resources,
        source=mesh.source, port_flags={**mesh.port_flags,
                                        **{where: _PORT_FLAGS[where] for where in given}},
    )
