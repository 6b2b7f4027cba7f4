"""The mesh file: one ``kind: Mesh`` document that says what to run, then ordinary resources.

``load_mesh_file`` parses and validates it and returns a frozen ``MeshFile``; every problem is
reported as ``MeshFileError`` whose lines carry the document index and the field path
(``document 0 (Mesh/storefront): spec.services[1].replicas: ...``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    "expand_command",
    "format_loc",
    "load_mesh_file",
    "parse_mesh_text",
]

API_VERSION = "gossamer.dev/v1alpha1"
_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(_NAME)
_SERVICE_REF = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$"


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


class IngressSpec(_Model):
    port: int = Field(default=8080, ge=1, le=65535)
    service: str = Field(pattern=_NAME)


class MeshUpstream(_Model):
    """A TCP service the app reaches at ``127.0.0.1:port`` (replica ``i``: ``port + i``),
    where its sidecar listens and relays to the service through its TCP route."""

    service: str = Field(pattern=_SERVICE_REF)
    port: int = Field(ge=1, le=65535)


class MeshServiceSpec(_Model):
    name: str = Field(pattern=_NAME)
    command: tuple[str, ...] = Field(min_length=1)
    replicas: int = Field(default=1, ge=1, le=32)
    namespace: str | None = Field(default=None, pattern=_NAME)
    labels: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    upstreams: tuple[MeshUpstream, ...] = ()


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
        if self.ingress is not None and self.ingress.service not in names:
            raise ValueError(
                f"ingress.service: {self.ingress.service!r} is not one of the services "
                f"({', '.join(names)})"
            )
        ports = {"controlPlane.apiPort": self.control_plane.api_port,
                 "controlPlane.streamPort": self.control_plane.stream_port}
        if self.ingress is not None:
            ports["ingress.port"] = self.ingress.port
        for i, service in enumerate(self.services):
            for j, upstream in enumerate(service.upstreams):
                for replica in range(service.replicas):
                    where = f"services[{i}].upstreams[{j}].port"
                    if upstream.port + replica > 65535:
                        raise ValueError(f"{where}: port + replica index passes 65535")
                    ports[where + (f" (replica {replica})" if replica else "")] = (
                        upstream.port + replica
                    )
        seen: dict[int, str] = {}
        for where, port in ports.items():
            if port in seen:
                raise ValueError(f"{where}: port {port} is also used by {seen[port]}")
            seen[port] = where
        return self


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
