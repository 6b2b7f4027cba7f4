"""Text → documents → validated resources, with every problem reported at once.

:func:`parse_documents` turns request bodies (multi-document YAML, or JSON object/list) into
plain dicts; :func:`validate_documents` turns those into typed resources or raises one
:class:`~gossamer.config.errors.ValidationFailed` listing each problem with its document index,
kind, name and exact field path (``spec.ports[0].port``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gossamer.config.base import API_VERSION, Resource, ResourceKey
from gossamer.config.errors import DocumentParseError, Problem, ValidationFailed
from gossamer.config.kinds import KINDS

__all__ = ["format_path", "parse_documents", "validate_documents"]


def parse_documents(text: str, content_type: str = "application/yaml") -> list[dict[str, Any]]:
    """Parse YAML (``---`` separated) or JSON (object or list of objects) into dicts.

    Raises :class:`DocumentParseError` when the text cannot be parsed, holds no document, or a
    document is not a mapping.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("json"):
        try:
            loaded: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentParseError(f"invalid JSON: {exc}") from exc
        items = loaded if isinstance(loaded, list) else [loaded]
    else:
        try:
            items = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except yaml.YAMLError as exc:
            raise DocumentParseError(f"invalid YAML: {exc}") from exc
    if not items:
        raise DocumentParseError("no documents found")
    documents: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DocumentParseError(
                f"document {index} is a {type(item).__name__}, expected a mapping"
            )
        documents.append(item)
    return documents


def format_path(loc: Sequence[int | str]) -> str:
    """``('spec', 'ports', 0, 'port')`` → ``spec.ports[0].port``.

    A mapping key that is itself invalid (pydantic adds ``[key]`` after it) is named by the
    path ending at the key: ``spec.rules[0].filters.requestHeaders.set.bad key``.
    """
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        return message
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and len(repr(value)) <= 80:
        message = f"{message} (got {value!r})"
    return message


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _validate_one(index: int, doc: Mapping[str, Any]) -> tuple[Resource | None, list[Problem]]:
    kind = _text(doc.get("kind"))
    metadata = doc.get("metadata")
    name = _text(metadata.get("name")) if isinstance(metadata, Mapping) else None
    problems: list[Problem] = []

    def problem(path: str, message: str) -> None:
        problems.append(Problem(index, kind, name, path, message))

    if "apiVersion" not in doc:
        problem("apiVersion", f"required field is missing (expected {API_VERSION!r})")
    elif doc["apiVersion"] != API_VERSION:
        problem(
            "apiVersion",
            f"unsupported apiVersion {doc['apiVersion']!r} (expected {API_VERSION!r})",
        )
    if "kind" not in doc:
        problem("kind", "required field is missing")
        return None, problems
    model = KINDS.get(kind) if kind is not None else None
    if model is None:
        known = ", ".join(sorted(KINDS))
        problem("kind", f"unknown kind {doc['kind']!r} (known kinds: {known})")
        return None, problems
    try:
        resource = model.model_validate(dict(doc))
    except ValidationError as exc:
        for error in exc.errors():
            path = format_path(error["loc"])
            if path == "apiVersion":
                continue  # already reported above, in our own words
            problem(path, _message(error))
        return None, problems
    for path, message in resource.semantic_problems():
        problem(path, message)
    return (resource if not problems else None), problems


def validate_documents(docs: Sequence[Mapping[str, Any]]) -> list[Resource]:
    """Validate every document; return resources in order or raise ``ValidationFailed``.

    Also refuses two documents naming the same (kind, namespace, name).
    """
    resources: list[Resource] = []
    problems: list[Problem] = []
    seen: dict[ResourceKey, int] = {}
    for index, doc in enumerate(docs):
        resource, found = _validate_one(index, doc)
        problems.extend(found)
        if resource is None:
            continue
        key = resource.key
        if key in seen:
            problems.append(
                Problem(
                    index,
                    key.kind,
                    key.name,
                    "metadata.name",
                    f"duplicate: document {seen[key]} already defines {key}",
                )
            )
            continue
        seen[key] = index
        resources.append(resource)
    if problems:
        raise ValidationFailed(problems)
    return resources
