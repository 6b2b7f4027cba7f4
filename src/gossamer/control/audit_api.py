"""The audit log's part of the config API (docs/internals.md §3 and §15), behind the admin token.

- ``GET /v1/audit/records``: the records a query selects (``gossamer audit query``);
- ``GET /v1/audit/chains``: every chain with its owner and counts, and the mesh's roots, the
  current ones and those a root rotation retired (what checkpoints are verified against);
- ``GET /v1/audit/chains/{chain}``: one chain as stored, a page at a time
  (``gossamer audit verify``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.responses import JSONResponse, Response

from gossamer.control.audit_store import QUERY_LIMIT, AuditFilter

if TYPE_CHECKING:
    from starlette.requests import Request

    from gossamer.control.plane import ControlPlane

__all__ = ["audit_chain", "audit_chains", "audit_records"]

_TEXT_FILTERS = ("namespace", "service", "caller", "subject", "method", "decision")
_DECISIONS = ("allow", "deny")


class _BadQuery(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _refused(exc: _BadQuery) -> JSONResponse:
    return JSONResponse(
        {"error": "invalid", "message": str(exc),
         "errors": [{"path": f"query.{exc.field}", "message": str(exc)}]},
        status_code=422,
    )  # fmt: skip


def _time(request: Request, name: str) -> str | None:
    """An RFC 3339 time in UTC, as the records write it (``...Z``), for a text comparison."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise _BadQuery(name, f"{name}: expected an RFC 3339 time, got {raw!r}") from None
    if when.tzinfo is None:
        raise _BadQuery(name, f"{name}: the time needs a zone (Z or +hh:mm)")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _integer(request: Request, name: str, low: int, high: int, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise _BadQuery(name, f"{name}: expected an integer in {low}..{high}, got {raw!r}")
    return int(raw)


def _selection(request: Request) -> AuditFilter:
    texts = {name: request.query_params.get(name) or None for name in _TEXT_FILTERS}
    decision = request.query_params.get("decision")
    if decision is not None and decision not in _DECISIONS:
        raise _BadQuery("decision", f"decision: expected allow or deny, got {decision!r}")
    return AuditFilter(
        since=_time(request, "since"),
        until=_time(request, "until"),
        status=_integer(request, "status", 0, 999, None),
        limit=_integer(request, "limit", 1, QUERY_LIMIT, 1000) or 1000,
        **texts,
    )


async def audit_records(plane: ControlPlane, request: Request) -> Response:
    try:
        selection = _selection(request)
    except _BadQuery as exc:
        return _refused(exc)
    return JSONResponse({"items": plane.audit.query(selection)})


def _roots(plane: ControlPlane) -> list[str]:
    """The mesh's roots now, and every root a rotation retired (oldest checkpoints)."""
    pems = [plane.bundle.decode("ascii")]
    retired = plane.settings.data_dir / "ca" / "retired"
    if retired.is_dir():
        pems += [p.read_text(encoding="ascii") for p in sorted(retired.glob("*.crt"))]
    return pems


async def audit_chains(plane: ControlPlane, request: Request) -> Response:
    return JSONResponse({"items": plane.audit.chains(), "roots": _roots(plane)})


async def audit_chain(plane: ControlPlane, request: Request) -> Response:
    chain = request.path_params["chain"]
    try:
        after = _integer(request, "after", 0, 2**62, 0) or 0
        limit = _integer(request, "limit", 1, QUERY_LIMIT, QUERY_LIMIT) or QUERY_LIMIT
    except _BadQuery as exc:
        return _refused(exc)
    if chain not in {c["chain"] for c in plane.audit.chains()}:
        return JSONResponse({"error": "not-found", "message": f"no chain {chain}"},
                            status_code=404)  # fmt: skip
    return JSONResponse(plane.audit.entries(chain, after, limit))
