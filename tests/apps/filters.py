"""Filters (``gossamer.filters``) the tests name in ``ProxyFilter`` resources: each does one
thing a test can see. Importable as ``tests.apps.filters:NAME`` wherever ``tests`` is."""

from __future__ import annotations

from gossamer.filters import FilterContext, Reject, Request, Response


class Passthrough:
    """Sees every request and changes nothing."""

    def __init__(self, context: FilterContext) -> None:
        self.context = context

    def on_request(self, request: Request) -> None:
        pass


class Exploding:
    """Raises on every request (or only on paths under ``config.path``)."""

    def __init__(self, context: FilterContext) -> None:
        self.path = str(context.config.get("path", "/"))

    def on_request(self, request: Request) -> None:
        if request.path.startswith(self.path):
            raise RuntimeError("secret detail that must not reach the caller")


class Tagging:
    """Adds ``x-filtered-by`` to requests and responses, rejects ``x-deny``, counts both."""

    def __init__(self, context: FilterContext) -> None:
        self.context = context
        self.tag = str(context.config.get("tag", "tagging"))

    def on_request(self, request: Request) -> None:
        if "x-deny" in request.headers:
            self.context.count("denied")
            raise Reject(403, "denied by x-deny", {"x-denied-by": self.tag})
        request.headers.add("x-filtered-by", f"{self.tag} {request.protocol} {request.direction}")
        request.state["seen"] = request.path
        self.context.count("tagged")

    def on_response(self, request: Request, response: Response) -> None:
        response.headers.set("x-filtered-by", f"{self.tag} {request.state.get('seen')}")


class Unmakeable:
    """Its constructor fails: a config naming it is refused."""

    def __init__(self, context: FilterContext) -> None:
        raise ValueError("needs config.secret")
