"""Users' filters without sockets: loading, making, ordering, the request view, and what a
filter's exceptions do (the Call is a recording double)."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.config import ValidationFailed, validate_documents
from gossamer.filters import Headers, Reject
from gossamer.proxy.observe.metrics import Metrics
from gossamer.proxy.pipeline.call import HTTP1, Call
from gossamer.proxy.pipeline.slots import Stage, Stages
from gossamer.proxy.pipeline.user_filters import compile_filters, load_filter
from gossamer.proxy.snapshot.errors import SnapshotError

Pair = tuple[bytes, bytes]


class RecordingCall(Call):
    """A request whose answers and edits are recorded."""

    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(0)
        self.method, self.authority, self.path = b"GET", b"catalog", b"/items?x=1"
        self.headers = headers if headers is not None else [(b"Host", b"catalog")]
        self.failed: tuple[int, str, str, tuple[tuple[bytes, bytes], ...]] | None = None

    @property
    def protocol(self) -> str:
        return HTTP1

    def header_list(self) -> list[tuple[bytes, bytes]]:
        return self.headers

    def set_header_list(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers

    def set_path(self, path: bytes) -> None:
        self.path = path

    def fail(self, status: int, cause: str, detail: str = "",
             extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:  # fmt: skip
        self.failed = (status, cause, detail, extra)


def compile_one(ref: str, config: dict[str, Any] | None = None, failure: str = "reject",
                metrics: Metrics | None = None) -> Stages:  # fmt: skip
    stages = compile_filters(
        [{"name": "default/f", "filter": ref, "config": config or {}, "failure": failure}],
        "snapshot.inbound.filters", "inbound", metrics=metrics or Metrics("catalog", "default"),
        service="catalog", namespace="default",
    )  # fmt: skip
    assert stages is not None
    return stages


class TestLoading:
    def test_module_attribute_and_errors_name_the_entry(self) -> None:
        assert callable(load_filter("tests.apps.filters:Tagging"))
        with pytest.raises(SnapshotError, match=r"^at\.filter: cannot load 'nope:X'"):
            load_filter("nope:X", "at")
        with pytest.raises(SnapshotError, match="no entry point 'absent'"):
            load_filter("absent", "at")
        with pytest.raises(SnapshotError, match="not callable"):
            load_filter("tests.apps.filters:__doc__", "at")

    def test_a_filter_that_cannot_be_made_refuses_the_snapshot(self) -> None:
        with pytest.raises(SnapshotError) as caught:
            compile_one("tests.apps.filters:Unmakeable")
        assert str(caught.value).startswith("snapshot.inbound.filters[0].filter:")
        assert "needs config.secret" in str(caught.value)

    @pytest.mark.parametrize(
        ("entry", "field"),
        [({"filter": "x:Y", "config": []}, "config"), ({"filter": "", "name": "n"}, "filter"),
         ({"filter": "tests.apps.filters:Passthrough", "failure": "maybe"}, "failure")],
    )  # fmt: skip
    def test_bad_entries_name_their_field(self, entry: dict[str, Any], field: str) -> None:
        with pytest.raises(SnapshotError, match=rf"filters\[0\]\.{field}:"):
            compile_filters([{"name": "n", **entry}], "filters", "inbound",
                            metrics=Metrics("s", "d"), service="s", namespace="d")  # fmt: skip

    def test_an_optional_filter_that_cannot_load_is_left_out_and_counted(self) -> None:
        metrics = Metrics("catalog", "default")
        stages = compile_filters(
            [{"name": "default/gone", "filter": "no_such_module:F", "failure": "allow"},
             {"name": "default/here", "filter": "tests.apps.filters:Passthrough"}],
            "filters", "inbound", metrics=metrics, service="catalog", namespace="default",
        )  # fmt: skip
        assert stages is not None and [s.name for s in stages.all] == ["default/here"]
        assert metrics.filter_failures == {("default/gone", "load"): 1}

    def test_no_filters_means_no_stages(self) -> None:
        for raw in (None, []):
            assert compile_filters(raw, "w", "inbound", metrics=Metrics("s", "d"),
                                   service="s", namespace="d") is None  # fmt: skip

    def test_an_unchanged_filter_is_kept_across_snapshots_and_a_new_config_remakes_it(
        self,
    ) -> None:
        first = compile_one("tests.apps.filters:Tagging", {"tag": "a"}).all[0]
        again = compile_one("tests.apps.filters:Tagging", {"tag": "a"}).all[0]
        other = compile_one("tests.apps.filters:Tagging", {"tag": "b"}).all[0]
        assert first is again and other is not first


class TestRequests:
    def test_edits_reach_the_call_and_the_response_and_rejections_answer(self) -> None:
        stages = compile_one("tests.apps.filters:Tagging", {"tag": "t"})
        call = RecordingCall()
        assert stages.request(call)
        assert (b"x-filtered-by", b"t HTTP/1.1 inbound") in call.headers
        assert call.stages is stages  # it sees the response too
        assert stages.response(call, 200, [(b"a", b"1")]) == [
            (b"a", b"1"), (b"x-filtered-by", b"t /items?x=1")
        ]
        denied = RecordingCall([(b"X-Deny", b"1")])
        assert not stages.request(denied)
        assert denied.failed == (403, "filter-rejected", "default/f: denied by x-deny",
                                 ((b"x-denied-by", b"t"),))  # fmt: skip

    def test_an_exception_answers_filter_failed_without_its_text_and_is_counted(self) -> None:
        metrics = Metrics("catalog", "default")
        call = RecordingCall()
        assert not compile_one("tests.apps.filters:Exploding", metrics=metrics).request(call)
        assert call.failed is not None
        status, cause, detail, _ = call.failed
        assert (status, cause) == (500, "filter-failed")
        assert "default/f" in detail and "RuntimeError" in detail and "secret" not in detail
        assert metrics.filter_failures == {("default/f", "request"): 1}
        assert b'gossamer_filter_failures_total{filter="default/f",phase="request"} 1' in (
            metrics.render()
        )

    def test_failure_allow_passes_the_request_on(self) -> None:
        call = RecordingCall()
        stages = compile_one("tests.apps.filters:Exploding", failure="allow")
        assert stages.request(call) and call.failed is None

    def test_the_caller_identity_header_is_the_sidecars(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        class Forger:
            def __init__(self, context: object) -> None:
                pass

            def on_request(self, request: Any) -> None:
                request.headers.set("X-Gossamer-Peer-Identity", "spiffe://x/ns/a/sa/admin")

        import tests.apps.filters as module

        monkeypatch.setattr(module, "Forger", Forger, raising=False)
        call = RecordingCall([(b"x-gossamer-peer-identity", b"spiffe://real")])
        assert not compile_one("tests.apps.filters:Forger").request(call)
        assert call.headers == [(b"x-gossamer-peer-identity", b"spiffe://real")]
        assert call.failed is not None and call.failed[1] == "filter-failed"


class TestHeaders:
    def test_case_insensitive_ordered_multi_valued(self) -> None:
        pairs = [(b":path", b"/"), (b"Accept", b"a"), (b"accept", b"b")]
        headers = Headers(pairs)
        assert headers.get("ACCEPT") == "a" and headers.get_all("accept") == ["a", "b"]
        assert "accept" in headers and "nope" not in headers
        assert list(headers) == [("Accept", "a"), ("accept", "b")]  # pseudo-fields left out
        headers.set("accept", "c")
        assert pairs == [(b":path", b"/"), (b"accept", b"c")] and headers.changed

    @pytest.mark.parametrize(("name", "value"), [("a b", "v"), ("x", "1\r\nx-b: 2"), ("", "v")])
    def test_no_header_injection(self, name: str, value: str) -> None:
        with pytest.raises(ValueError):
            Headers([]).add(name, value)
        with pytest.raises(ValueError):
            Reject(403, "no", {name: value})

    def test_reject_needs_an_error_status(self) -> None:
        with pytest.raises(ValueError, match="4xx or 5xx"):
            Reject(200)


class TestSlots:
    def test_slots_run_in_order_and_responses_in_reverse(self) -> None:
        seen: list[str] = []

        def stage(name: str, slot: str) -> Stage:
            class Named(Stage):
                sees_responses = True

                def on_request(self, call: Call) -> bool:
                    seen.append(f"req {name}")
                    return True

                def on_response(self, call: Call, status: int, headers: list[Pair]) -> list[Pair]:
                    seen.append(f"resp {name}")
                    return headers

            s = Named()
            s.slot, s.name = slot, name
            return s

        stages = Stages([stage("user", "filter"), stage("authz", "authorize"),
                         stage("jwt", "authenticate")])  # fmt: skip
        call = RecordingCall()
        assert stages.request(call)
        stages.response(call, 200, [])
        assert seen == ["req jwt", "req authz", "req user", "resp user", "resp authz", "resp jwt"]


class TestResource:
    def doc(self, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "gossamer.dev/v1alpha1", "kind": "ProxyFilter",
                "metadata": {"name": "f"},
                "spec": {"service": "catalog", "filter": "pkg.mod:Cls", **spec}}  # fmt: skip

    @pytest.mark.parametrize(
        ("spec", "path"),
        [({"filter": "rm -rf /"}, "spec.filter"), ({"direction": "sideways"}, "spec.direction"),
         ({"config": {"x": "y" * 70000}}, "spec.config"), ({"failure": "maybe"}, "spec.failure"),
         ({"priority": 5000}, "spec.priority")],
    )  # fmt: skip
    def test_refusals_name_the_field(self, spec: dict[str, Any], path: str) -> None:
        with pytest.raises(ValidationFailed) as caught:
            validate_documents([self.doc(**spec)])
        assert [p.path for p in caught.value.problems] == [path]

    def test_entry_point_names_and_module_paths_are_accepted(self) -> None:
        for ref in ("tenants", "tenant_filter:TenantFilter", "a.b:C.D"):
            (resource,) = validate_documents([self.doc(filter=ref)])
            assert resource.to_document()["spec"]["filter"] == ref
