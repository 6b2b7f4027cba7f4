"""Errors of the resource model: unparseable text, and invalid documents with exact paths."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DocumentParseError", "Problem", "ValidationFailed"]


class DocumentParseError(ValueError):
    """The text is not YAML/JSON of the expected shape (the API answers 400 bad-document)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one document: where (document index, field path) and why."""

    document: int
    kind: str | None
    name: str | None
    path: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "document": self.document,
            "kind": self.kind,
            "name": self.name,
            "path": self.path,
            "message": self.message,
        }

    def __str__(self) -> str:
        what = f"{self.kind or '?'}/{self.name or '?'}"
        return f"document {self.document} ({what}): {self.path or '<document>'}: {self.message}"


class ValidationFailed(ValueError):
    """One or more documents are invalid; ``problems`` lists all of them (API answers 422)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the documents:\n{lines}")
