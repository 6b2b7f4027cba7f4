"""Every example file in the repository is valid: the docs cannot drift from the schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from gossamer.config import parse_documents, validate_documents
from gossamer.local.meshfile import load_mesh_file

ROOT = Path(__file__).resolve().parents[2]
RESOURCE_FILES = sorted((ROOT / "examples").glob("*/*.yaml"))


@pytest.mark.parametrize(
    "path", [p for p in RESOURCE_FILES if p.name != "mesh.yaml"], ids=lambda p: p.name
)
def test_example_resources_validate(path: Path) -> None:
    """Each example resource file is accepted as a whole by the config validator."""
    docs = parse_documents(path.read_text(), "application/yaml")
    assert docs
    assert len(validate_documents(docs)) == len(docs)


def test_storefront_mesh_file_loads() -> None:
    """The demo's mesh file loads, with all four services (catalog in two groups)."""
    mesh = load_mesh_file(ROOT / "examples" / "storefront" / "mesh.yaml")
    names = {service.service_name for service in mesh.mesh.spec.services}
    assert names == {"frontend", "catalog", "orders", "payments"}
