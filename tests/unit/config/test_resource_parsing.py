"""Parsing request bodies into documents, and duration strings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gossamer.config import (
    DocumentParseError,
    duration_ms,
    format_duration,
    parse_documents,
    parse_duration,
)
from gossamer.config.traffic import parse_size


def test_yaml_multi_document() -> None:
    """YAML with --- separators gives one dict per document, skipping empty ones."""
    docs = parse_documents("a: 1\n---\n---\nb: 2\n", "application/yaml")
    assert docs == [{"a": 1}, {"b": 2}]


def test_json_object_and_list() -> None:
    """JSON may be one object or a list of objects."""
    assert parse_documents('{"a": 1}', "application/json") == [{"a": 1}]
    assert parse_documents('[{"a": 1}, {"b": 2}]', "application/json; charset=utf-8") == [
        {"a": 1},
        {"b": 2},
    ]


@pytest.mark.parametrize(
    ("text", "content_type", "fragment"),
    [
        ("a: [1", "application/yaml", "invalid YAML"),
        ("{nope", "application/json", "invalid JSON"),
        ("", "application/yaml", "no documents"),
        ("- 1\n- 2\n", "application/yaml", "expected a mapping"),
        ("[1]", "application/json", "expected a mapping"),
    ],
)
def test_unparseable_text_is_refused(text: str, content_type: str, fragment: str) -> None:
    """Unparseable or non-mapping bodies raise DocumentParseError saying why."""
    with pytest.raises(DocumentParseError, match=fragment):
        parse_documents(text, content_type)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400)],
)
def test_durations(text: str, seconds: int) -> None:
    """Durations combine d, h, m and s parts."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "millis"), [("250ms", 250), ("1s500ms", 1500), ("2m", 120_000), ("0s", 0)]
)
def test_millisecond_durations(text: str, millis: int) -> None:
    """Durations take an ms part after s; duration_ms gives whole milliseconds."""
    assert duration_ms(text) == millis


@pytest.mark.parametrize("text", ["", "10", "h", "1x", "1m1h", "-5s", "5ms1s", "1.5s", "ms"])
def test_bad_durations(text: str) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    """format_duration gives the shortest form parse_duration reads back."""
    value = timedelta(days=1, minutes=5, seconds=3)
    assert format_duration(value) == "1d5m3s"
    assert parse_duration(format_duration(value)) == value
    short = timedelta(seconds=1, milliseconds=250)
    assert format_duration(short) == "1s250ms"
    assert parse_duration(format_duration(short)) == short


@pytest.mark.parametrize(
    ("value", "size"),
    [(0, 0), (512, 512), ("512", 512), ("64KiB", 65536), ("64Ki", 65536), ("64KB", 64000),
     ("1MiB", 1_048_576), ("1 GB", 10**9)],
)  # fmt: skip
def test_sizes(value: int | str, size: int) -> None:
    """Sizes are byte counts or numbers with decimal or binary units."""
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["64kib", "1.5MB", "-1", -1, "KiB", True])
def test_bad_sizes(value: object) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError):
        parse_size(value)  # type: ignore[arg-type]

