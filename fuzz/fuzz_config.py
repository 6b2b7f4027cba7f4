"""Fuzz target ``config``: the config loader, text to validated resources.

Owns ``gossamer.config``: ``parse_documents`` (YAML or JSON text → documents) and
``validate_documents`` (documents → typed resources, or one ``ValidationFailed``), the path
the control plane's ``apply`` takes for every document a user applies, with every kind's
model and semantic checks (durations, sizes, routes, policies, filters).

The first byte of an input chooses how the rest is read:

- 0: YAML text (``application/yaml``); 1: JSON text (``application/json``);
- 2 and up: structure-aware. The rest drives a ``FuzzedDataProvider`` that picks one of the
  valid example documents (``examples/**/*.yaml`` and the YAML seeds) and mutates it: a node
  replaced by an interesting or a fuzzed value, a key deleted, an unknown key added, a list
  item repeated, a subtree moved elsewhere or taken from another document, deep nesting.
  The mutated documents are validated directly, and also written as YAML or JSON and read
  back through ``parse_documents``.

A crash is:

- any exception from ``parse_documents`` other than ``DocumentParseError``, or from
  ``validate_documents`` other than ``ValidationFailed``;
- a ``ValidationFailed`` whose problems do not name the bad field: every problem's path must
  lead through the document to the field (the last step may be missing when the message says
  so, as for a required field), and its document index must be one of the documents;
- a resource that validates but whose canonical document (``to_document``, what the store
  keeps) does not validate again to the same resource, or is not JSON.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Mapping
from typing import Any

import yaml

from fuzz.engine import CORPUS, ROOT, FuzzFinding, fuzz, instrumented

with instrumented("gossamer.config"):
    from gossamer.config import (
        DocumentParseError,
        ValidationFailed,
        parse_documents,
        validate_documents,
    )

try:
    from atheris import FuzzedDataProvider
except ImportError:  # pragma: no cover - the dev and fuzz extras install atheris
    FuzzedDataProvider = None

__all__ = ["one_input"]

MEDIA = ("application/yaml", "application/json")


def _examples() -> list[dict[str, Any]]:
    """The valid documents structure-aware inputs start from."""
    texts = [path.read_text() for path in sorted((ROOT / "examples").rglob("*.yaml"))]
    for path in sorted((CORPUS / "config").glob("*.yaml")):
        texts.append(path.read_bytes()[1:].decode())
    docs: list[dict[str, Any]] = []
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc not in docs:
                docs.append(doc)
    return docs


EXAMPLES = _examples()
INTERESTING: list[Any] = [
    None, True, False, 0, -1, 1, 2, 65535, 65536, 2**31, 2**63, -(2**63), 10**30, 0.5, -0.0,
    math.inf, math.nan, "", " ", "a", "0", "-1", "1.5", "0s", "1s", "-1s", "100ms", "1h30m",
    "99999999999999999999d", "1e3s", "0.5s", "10Mi", "1Gi", "-1Ki", "x" * 300, "ÿ", "\x00",
    "a.b", "A", "default", "gossamer-system", "*", "/", "//", "/a/../b", "GET", "POST",
    "spiffe://gossamer.local/ns/default/sa/x", "5xx", "connect-failure", "PeakEWMA",
    "STRICT", "PERMISSIVE", "http", "tcp", "grpc", "gossamer.dev/v1alpha1", [], {}, [1],
    ["a"], {"a": 1}, {"": None}, {1: 2}, [[[]]], {"name": "x"},
]  # fmt: skip


# --------------------------------------------------------------------------- the oracle


_STEP = re.compile(r"\[(\d+)\]")


def _spellings(key: object) -> tuple[str, ...]:
    """How a problem path may name a mapping key: YAML 1.1 reads ``on:``, ``yes:`` and the
    like as booleans, which the models take back as the word the user wrote."""
    if key is True or key == "true":  # (JSON written from such a document says "true")
        return ("true", "on", "yes", "y", "True")
    if key is False:
        return ("false", "off", "no", "n", "False")
    return (str(key),)


def _resolves(doc: Any, path: str, missing_ok: bool) -> bool:
    """Whether ``path`` (as ``format_path`` writes it) leads through ``doc``. Mapping keys may
    hold dots and brackets, so every way of reading the path is tried."""
    if not path:
        return True  # the document as a whole (e.g. too many values in it)

    def walk(node: Any, rest: str, first: bool) -> bool:
        if not rest:
            return True
        if isinstance(node, list):
            match = _STEP.match(rest)
            if match is None:
                return False
            index = int(match.group(1))
            after = rest[match.end() :]
            if index < len(node):
                return walk(node[index], after, False)
            return missing_ok and not after
        if not isinstance(node, Mapping):
            return False
        if rest.startswith('[""]') and "" in node and walk(node[""], rest[4:], False):
            return True  # an empty key
        body = rest if first else rest[1:] if rest.startswith(".") else None
        keys = [(name, value) for key, value in node.items() for name in _spellings(key)]
        if body is None:  # "[n]" into a mapping: an integer key
            match = _STEP.match(rest)
            if match is None:
                return False
            keys = [(f"[{key}]", value) for key, value in node.items() if isinstance(key, int)]
            body = rest
        for key, value in keys:
            if body.startswith(key) and walk(value, body[len(key) :], False):
                return True
        # The last step may name a field the document lacks (a required field, say).
        return missing_ok and re.fullmatch(r"[^.\[]+", body) is not None

    return walk(doc, path, True)


_REPR = reprlib.Repr()
_REPR.maxlevel = 8
_REPR.maxstring = _REPR.maxother = 80


def _short(value: object) -> str:
    return _REPR.repr(value)


def _check_problems(docs: list[Any], failed: ValidationFailed) -> None:
    if not failed.problems:
        raise FuzzFinding("ValidationFailed without problems")
    for problem in failed.problems:
        if not 0 <= problem.document < len(docs):
            raise FuzzFinding(f"problem names document {problem.document} of {len(docs)}")
        if not problem.message:
            raise FuzzFinding(f"problem without a message: {problem}")
        if not _resolves(docs[problem.document], problem.path, missing_ok=True):
            raise FuzzFinding(
                f"problem path {problem.path!r} does not lead through document "
                f"{problem.document}: {problem}\n"
                f"  document: {_short(docs[problem.document])}"
            )


def _validate(docs: list[Any]) -> None:
    try:
        resources = validate_documents(docs)
    except ValidationFailed as failed:
        _check_problems(docs, failed)
        return
    for resource in resources:
        document = resource.to_document()
        json.dumps(document, allow_nan=False)
        try:
            again = validate_documents([document])
        except ValidationFailed as failed:
            raise FuzzFinding(
                f"the canonical document of a valid {resource.key} is refused: "
                f"{failed}\n  document: {_short(document)}"
            ) from None
        if again != [resource]:
            raise FuzzFinding(
                f"the canonical document of {resource.key} validates to another "
                f"resource:\n  {resource!r}\n  {again[0]!r}"
            )


def _load(text: str, media: str) -> None:
    try:
        docs = parse_documents(text, media)
    except DocumentParseError:
        return
    _validate(list(docs))


# --------------------------------------------------------------------------- mutations


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to the nodes (containers and leaves) under ``node``, down to ``_COPY_DEPTH``
    (a deep-nesting value is one target, not thousands; and no recursion in this harness)."""
    found: list[tuple[Any, ...]] = []
    stack = [(node, path)]
    while stack:
        current, where = stack.pop()
        found.append(where)
        if len(where) >= _COPY_DEPTH:
            continue
        if isinstance(current, dict):
            stack.extend((value, (*where, key)) for key, value in current.items())
        elif isinstance(current, list):
            stack.extend((value, (*where, index)) for index, value in enumerate(current))
    return found


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def _copy(node: Any, depth: int = 0) -> Any:
    """A copy to graft elsewhere; below ``_COPY_DEPTH`` the subtree is shared instead (the
    deep-nesting values of ``_value`` are deeper than Python's recursion limit: copying them
    recursively crashed this harness, not the code under test)."""
    if depth > _COPY_DEPTH:
        return node
    if isinstance(node, dict):
        return {key: _copy(value, depth + 1) for key, value in node.items()}
    if isinstance(node, list):
        return [_copy(value, depth + 1) for value in node]
    return node


_COPY_DEPTH = 200


def _text_of(value: Any) -> str:
    """A container as text, without ``repr`` of a deep-nesting value (whose recursion, in the
    instrumented process, crashed this harness in the hour-long run)."""
    try:
        return json.dumps(_copy(value), default=str)[:200]
    except (RecursionError, ValueError):
        return type(value).__name__


def _value(fdp: Any) -> Any:
    choice = fdp.ConsumeIntInRange(0, 5)
    if choice == 0:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if choice == 1:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 10))
    if choice == 2:
        return fdp.ConsumeRegularFloat()
    if choice == 3:  # deep nesting
        value: Any = fdp.PickValueInList(INTERESTING)
        for _ in range(fdp.ConsumeIntInRange(0, 2000)):
            value = [value] if fdp.ConsumeBool() else {"a": value}
        return value
    return _copy(fdp.PickValueInList(INTERESTING))


def _mutate(fdp: Any, docs: list[Any]) -> None:
    doc_index = fdp.ConsumeIntInRange(0, len(docs) - 1)
    root = docs[doc_index]
    paths = _nodes(root)
    path = paths[fdp.ConsumeIntInRange(0, len(paths) - 1)]
    op = fdp.ConsumeIntInRange(0, 6)
    if not path:  # the document itself
        if op == 0:
            docs[doc_index] = _value(fdp)
        elif op == 1:
            docs.append(_copy(root))  # a duplicate
        elif isinstance(root, dict):
            root[fdp.ConsumeUnicodeNoSurrogates(12)] = _value(fdp)
        return
    parent = _get(root, path[:-1])
    step = path[-1]
    if op <= 1:
        parent[step] = _value(fdp)
    elif op == 2:
        del parent[step]
    elif op == 3 and isinstance(parent, dict):
        parent[fdp.ConsumeUnicodeNoSurrogates(12)] = _value(fdp)
    elif op == 3:
        parent.insert(step, _copy(parent[step]))
    elif op == 4:  # a subtree from elsewhere (any document)
        donor = docs[fdp.ConsumeIntInRange(0, len(docs) - 1)]
        donor_paths = _nodes(donor)
        picked = donor_paths[fdp.ConsumeIntInRange(0, len(donor_paths) - 1)]
        parent[step] = _copy(_get(donor, picked))
    elif op == 5:  # the same kind of value, changed
        old = parent[step]
        if isinstance(old, str):
            grown = fdp.ConsumeBool()
            parent[step] = old + fdp.ConsumeUnicodeNoSurrogates(4) if grown else old[:-1]
        elif isinstance(old, bool):
            parent[step] = not old
        elif isinstance(old, int | float):
            parent[step] = old + fdp.ConsumeIntInRange(-70000, 70000)
        else:  # a container (or None): wrapped in a list, or turned into text
            parent[step] = [old] if fdp.ConsumeBool() else _text_of(old)
    else:
        parent[step] = _copy(fdp.PickValueInList(INTERESTING))


def _structured(data: bytes) -> None:
    assert FuzzedDataProvider is not None
    fdp = FuzzedDataProvider(data)
    count = fdp.ConsumeIntInRange(1, 3)
    docs = [_copy(fdp.PickValueInList(EXAMPLES)) for _ in range(count)]
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        if not fdp.remaining_bytes():
            break
        _mutate(fdp, docs)
    if all(isinstance(doc, dict) for doc in docs):  # what parse_documents can return
        _validate(docs)
    media = MEDIA[fdp.ConsumeIntInRange(0, 1)]
    try:
        text = json.dumps(docs) if media == "application/json" else yaml.safe_dump_all(docs)
    except (ValueError, TypeError, RecursionError, yaml.YAMLError):
        return  # not writable as text (a non-string JSON key, nesting too deep to write)
    _load(text, media)


def one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    if mode >= 2:
        _structured(data[1:])
        return
    _load(data[1:].decode("utf-8", "replace"), MEDIA[mode])


if __name__ == "__main__":
    fuzz(one_input)
