"""Text → documents → validated resources, with every problem reported at once.

:func:`parse_documents` turns request bodies (multi-document YAML, or JSON object/list) into
plain dicts; :func:`validate_documents` turns those into typed resources or raises one
:class:`~gossamer.config.errors.ValidationFailed` listing each problem with its document index,
kind, name and exact field path (``spec.ports[0].port``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gossamer.config.base import API_VERSION, Resource, ResourceKey
from gossamer.config.errors import DocumentParseError, Problem, ValidationFailed
from gossamer.config.kinds import KINDS

__all__ = [
    "MAX_DEPTH",
    "MAX_VALUES",
    "format_path",
    "json_value_problems",
    "parse_documents",
    "validate_documents",
]

# libyaml's parser when PyYAML has it (10x faster on a large apply), with the safe
# constructors either way: the same documents, the same errors.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 64  # nesting of mappings and lists in one document
MAX_VALUES = 1_000_000  # values in one document (YAML aliases count each time they are used)
# What a YAML parser raises, besides YAMLError, for text it cannot turn into values: an
# impossible date (2020-02-30), `!!int x`, an int of too many digits, nesting past the stack.
_UNPARSEABLE = (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError)


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
        except (ValueError, RecursionError) as exc:  # nesting, or an int of too many digits
            raise DocumentParseError(f"invalid JSON: {_reason(exc)}") from None
        items = loaded if isinstance(loaded, list) else [loaded]
    else:
        try:
            items = [doc for doc in yaml.load_all(text, Loader=_SAFE_LOADER) if doc is not None]
        except _UNPARSEABLE as exc:
            raise DocumentParseError(f"invalid YAML: {_reason(exc)}") from None
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


def _reason(exc: BaseException) -> str:
    """What a parser's exception says, in words a caller can act on (no Python internals)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, yaml.YAMLError | json.JSONDecodeError):
        return str(exc)
    if "int_max_str_digits" in str(exc):
        return "a number has too many digits"
    return f"a value cannot be read ({exc})"


def _printable(text: str) -> str:
    """``text`` with what UTF-8 cannot carry (lone surrogates) spelled as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar_problem(value: object) -> str | None:
    """Why a leaf value cannot be carried as JSON (None when it can)."""
    if isinstance(value, str):
        return None if _is_text(value) else "not valid Unicode text (a lone surrogate)"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if value is None or isinstance(value, int):
        return None
    return f"a YAML {type(value).__name__} is not a JSON value (quote it to make it a string)"


def json_value_problems(value: object) -> list[tuple[str, str]]:
    """``(path, message)`` for every place where a parsed document holds what JSON cannot
    carry: lone surrogates, non-finite numbers, YAML-only values (dates, binary, sets),
    mapping keys that are not strings, or nesting deeper than ``MAX_DEPTH``; and one problem
    at the root for more than ``MAX_VALUES`` values. Walks without recursion."""
    problems: list[tuple[str, str]] = []
    stack: list[tuple[object, tuple[int | str, ...]]] = [(value, ())]
    seen = 0
    while stack:
        item, loc = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return [*problems, ("", f"more than {MAX_VALUES} values")]
        if isinstance(item, dict | list) and len(loc) >= MAX_DEPTH:
            problems.append((format_path(loc), f"nested deeper than {MAX_DEPTH} levels"))
        elif isinstance(item, list):
            stack += [(child, (*loc, index)) for index, child in reversed(list(enumerate(item)))]
        elif isinstance(item, dict):
            children: list[tuple[object, tuple[int | str, ...]]] = []
            for key, child in item.items():
                if isinstance(key, str) and _is_text(key):
                    children.append((child, (*loc, key)))
                elif isinstance(key, bool):  # YAML reads `on:` as true: the models decide
                    children.append((child, (*loc, str(key).lower())))
                else:
                    where = format_path((*loc, _printable(str(key))))
                    problems.append((where, "a mapping key must be a string of valid text"))
            stack += reversed(children)
        elif (problem := _scalar_problem(item)) is not None:
            problems.append((format_path(loc), problem))
    return problems


def format_path(loc: Sequence[int | str]) -> str:
    """``('spec', 'ports', 0, 'port')`` → ``spec.ports[0].port``.

    A mapping key that is itself invalid (pydantic adds ``[key]`` after it) is named by the
    path ending at the key: ``spec.rules[0].filters.requestHeaders.set.bad key``. An empty
    key is written ``[""]`` (``metadata.labels[""]``), so that the path still leads to it.
    """
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "":
            out += '[""]'
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
    return value if isinstance(value, str) and _is_text(value) else None


def _as_written(doc: object, loc: Sequence[int | str]) -> list[int | str]:
    """``loc`` with mapping keys as the document writes them: pydantic reports a boolean key
    (YAML's ``yes:``, ``true:``) as the integer 1 or 0, which ``format_path`` would write as a
    list index (``set[1]``) where the document has ``set.true``."""
    out: list[int | str] = []
    node: object = doc
    for part in loc:
        if isinstance(node, Mapping) and isinstance(part, int) and not isinstance(part, bool):
            key = next((k for k in node if k == part and isinstance(k, bool)), None)
            if key is not None:
                out.append("true" if key else "false")
                node = node[key]
                continue
        out.append(part)
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return out


def _validate_one(index: int, doc: Mapping[str, Any]) -> tuple[Resource | None, list[Problem]]:
    kind = _text(doc.get("kind"))
    metadata = doc.get("metadata")
    name = _text(metadata.get("name")) if isinstance(metadata, Mapping) else None
    problems: list[Problem] = []

    def problem(path: str, message: str) -> None:
        problems.append(Problem(index, kind, name, path, message))

    for path, message in json_value_problems(doc):
        problem(path, message)
    if problems:
        return None, problems  # the models below need JSON values
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
            path = format_path(_as_written(doc, error["loc"]))
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
