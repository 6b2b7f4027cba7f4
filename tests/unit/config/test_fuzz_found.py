"""Regressions found by the ``config`` fuzz target (``fuzz/fuzz_config.py``, docs/fuzzing.md):
every problem the loader reports must name a path that leads to the bad field."""

from __future__ import annotations

import pytest

from gossamer.config import ValidationFailed, validate_documents
from gossamer.config.loader import format_path, parse_documents

SERVICE = {
    "apiVersion": "gossamer.dev/v1alpha1",
    "kind": "Service",
    "metadata": {"name": "orders"},
    "spec": {"ports": [{"port": 8080}]},
}


def test_an_empty_key_is_named_in_the_path() -> None:
    """An empty mapping key vanished from the path: ``{"": {"a": ...}}`` was reported at
    ``a`` (a field that does not exist), and ``{"": 1}`` at the document itself."""
    assert format_path(("", "a", 0)) == '[""].a[0]'
    assert format_path(("metadata", "labels", "", "[key]")) == 'metadata.labels[""]'


def test_an_unknown_empty_key_is_reported_where_it_is() -> None:
    with pytest.raises(ValidationFailed) as failed:
        validate_documents([{**SERVICE, "spec": {**SERVICE["spec"], "": 1}}])
    assert [(p.path, p.message) for p in failed.value.problems] == [('spec[""]', "unknown field")]


def test_a_boolean_key_is_named_as_a_key_not_a_list_index() -> None:
    """YAML reads ``yes:`` as the key True; pydantic reports it as 1, and the path said
    ``set[1]`` (an index into a list that is not there) instead of ``set.true``."""
    route = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {
            "service": "payments",
            "rules": [{"filters": {"requestHeaders": {"set": {True: "b"}}}}],
        },
    }
    with pytest.raises(ValidationFailed) as failed:
        validate_documents([route])
    assert [p.path for p in failed.value.problems] == [
        "spec.rules[0].filters.requestHeaders.set.true"
    ]


def test_a_filter_config_key_must_be_text() -> None:
    """Found by the hour-long `config` run: YAML reads `on:` (and `yes:`, `true:`) as a
    boolean; inside a ProxyFilter's free-form config such a key was stored as the JSON text
    "true" and read back as another document than the one applied. Refused, with its path."""
    text = """
apiVersion: gossamer.dev/v1alpha1
kind: ProxyFilter
metadata: {name: tenants}
spec:
  service: frontend
  filter: tenants
  config: {retry: {on: [reset]}}
"""
    with pytest.raises(ValidationFailed) as failed:
        validate_documents(parse_documents(text))
    (problem,) = failed.value.problems
    assert problem.path == "spec.config"
    assert "key True at config.retry is not text" in problem.message
