"""The API's OpenAPI description (``control/openapi.yaml``) names every field of every resource
kind's ``spec`` model, at every depth, and nothing the models do not have: a field added to a
model without the description (so schema-driven clients would refuse a valid document, and
the schema tests would never send it) fails here, naming its path."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

import gossamer.control
from gossamer.config.kinds import KINDS

DOCUMENT = yaml.safe_load(Path(gossamer.control.__file__).with_name("openapi.yaml").read_text())
SCHEMAS: dict[str, Any] = DOCUMENT["components"]["schemas"]


def _resolve(schema: Any) -> Any:
    while isinstance(schema, dict) and "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _objects(schema: Any) -> list[dict[str, Any]]:
    """The object schemas (with ``properties``) a value of ``schema`` may be."""
    schema = _resolve(schema)
    if not isinstance(schema, dict):
        return []
    found = [schema] if "properties" in schema else []
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            found += _objects(option)
    if schema.get("type") == "array" and "items" in schema:
        found += _objects(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        found += _objects(schema["additionalProperties"])
    return found


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (inside Optional, list, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def _differences(model: type[BaseModel], schema: Any, path: str) -> list[str]:
    objects = _objects(schema)
    if not objects:
        return [f"{path}: the description has no object here"]
    properties: dict[str, Any] = {}
    for found in objects:
        properties.update(found["properties"])
    names = {field.alias or name: field for name, field in model.model_fields.items()}
    problems = [f"{path}.{name}: described, not in the model"
                for name in properties if name not in names]  # fmt: skip
    for name, field in names.items():
        if name not in properties:
            problems.append(f"{path}.{name}: in the model, not described")
            continue
        for inner in _models(field.annotation):
            problems += _differences(inner, properties[name], f"{path}.{name}")
    return problems


def test_every_kinds_spec_is_described_field_for_field() -> None:
    problems: list[str] = []
    for kind, resource in KINDS.items():
        document = _resolve(SCHEMAS.get(f"{kind}Document"))
        assert document is not None, f"openapi.yaml has no {kind}Document"
        spec = resource.model_fields["spec"].annotation
        problems += _differences(spec, document["properties"]["spec"], kind)
    assert problems == []


def test_the_check_finds_a_field_the_description_lacks() -> None:
    class Extra(BaseModel):
        ports: int = 0
        unheard_of: int = 0

    problems = _differences(Extra, SCHEMAS["ServiceSpec"], "Service")
    assert "Service.unheard_of: in the model, not described" in problems
